"""What the launch review and the job page show about price and start, read from the domains.

Nothing here decides a rule a domain owns: the pool, its price and the estimated start come
from capacity's `job_estimate`, the job's longest allowed run from the quota book (the same
bound the admission pass holds money for), the cost so far from billing.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any

from django.utils import timezone

from marketplace.accounts.models import Organization
from marketplace.finetuning.models import FineTuningJob


def flavor_choices() -> list[tuple[str, str]]:
    from marketplace.capacity.selectors import flavors

    return [(f.slug, f"{f.model_name} · {f.memory_gb} GB") for f in flavors()]


@dataclass
class LaunchEstimate:
    cost: Decimal | None = None  # at most: what is held, the run limit's (or the cap's) cost
    cost_detail: str = ""
    expected: Decimal | None = None  # what this job should cost, from measured throughput
    expected_seconds: float | None = None  # its expected GPU-seconds per GPU
    expected_detail: str = ""
    estimated_start: datetime | None = None
    start_now: bool = False
    start_detail: str = ""
    notes: list[str] = field(default_factory=list)
    coverage: Any = None  # billing's Coverage of `cost` by the balance, when there is a cost


def _max_job_hours(org: Organization, flavor_slug: str) -> Decimal:
    from marketplace.capacity.selectors import flavor_by_slug
    from marketplace.quotas.quota_book import QuotaBook, default_max_job_hours

    flavor = flavor_by_slug(flavor_slug) if flavor_slug else None
    if flavor is None:
        return default_max_job_hours()
    return QuotaBook(org_ids=[org.pk]).quota(org.pk, flavor.pk).max_job_hours


def launch_estimate(*, org: Organization, form: Any) -> LaunchEstimate:
    """Where and when (capacity's job_estimate) and at most how much (billing's cost_estimate,
    for the run limit the admission pass holds money for, capped by the spending cap)."""
    from marketplace.billing.selectors import balance_coverage, cost_estimate
    from marketplace.capacity.placement import job_estimate
    from marketplace.capacity.policies import residency_parse
    from marketplace.capacity.selectors import placeable_pools
    from marketplace.errors import PartageError

    data = form.cleaned_data
    flavor, gpus, cap = data.get("gpu_flavor") or "", data["gpu_count"], data.get("max_cost")
    if not placeable_pools().exists():
        return LaunchEstimate(
            cost=Decimal("0.00"),
            cost_detail="No GPU pools are configured: the job trains on this server's local executor.",
            start_now=True,
            start_detail="The local executor starts jobs as soon as they are admitted.",
        )
    hours = _max_job_hours(org, flavor)
    placement = job_estimate(
        organization=org,
        gpu_flavor=flavor,
        gpu_count=gpus,
        residency=residency_parse(None),
        gpu_hours_per_gpu=hours,
    )
    result = LaunchEstimate(notes=[placement.reason] if placement.reason else [])
    try:
        cost = cost_estimate(
            org, gpu_flavor=flavor, gpu_count=gpus, duration_seconds=int(hours * 3600)
        )
    except PartageError as e:
        result.cost_detail = e.message
        return result
    total = cost.amount + cost.vat
    capped = cap is not None and cap < cost.amount
    result.cost = cap if capped else total
    result.cost_detail = (
        f"{gpus} GPU(s) for the whole {hours} h run limit at €{cost.price_per_gpu_hour:.2f} "
        f"per GPU-hour on {cost.pool_public_id}, VAT included: what is held until the job ends"
        + (" — your spending cap stops it before" if capped else "")
        + ". You pay only for the GPU-seconds used."
    )
    result.coverage = balance_coverage(org, amount=result.cost)
    _expected(result, org=org, data=data, cap=result.cost if capped else None)
    start = placement.estimated_start
    result.start_now = start is not None and (start - timezone.now()).total_seconds() < 60
    result.estimated_start = start
    if placement.pool is not None:
        where = f"{placement.pool.name} ({placement.pool.country}/{placement.pool.region})"
        result.start_detail = f"On {where}."
    return result


def _expected(
    result: LaunchEstimate, *, org: Organization, data: dict[str, Any], cap: Decimal | None
) -> None:
    """The expected cost: this job's tokens (its file's size x epochs, at the tokens per byte
    measured for its base model) at the throughput measured for that model on the flavor."""
    from marketplace.billing.selectors import expected_cost
    from marketplace.finetuning.selectors import files_for_org

    training = files_for_org(org).filter(pk=data.get("training_file")).first()
    if training is None or not data.get("model"):
        return
    expected = expected_cost(
        org,
        base_model=data["model"],
        gpu_flavor=data.get("gpu_flavor") or "",
        gpu_count=data["gpu_count"],
        training_bytes=training.bytes,
        epochs=data["n_epochs"],
    )
    if expected is None:
        result.expected_detail = (
            f"No {data['model']} job has finished on this GPU yet, so there is no measured "
            "speed to estimate from: the first one's charge sets it. You pay only for the "
            "GPU-seconds used, never more than the maximum below."
        )
        return
    basis = expected.basis
    result.expected = min(expected.amount, cap) if cap is not None else expected.amount
    result.expected_seconds = round(expected.seconds, 1)
    minutes = max(round(expected.seconds / 60), 1)
    result.expected_detail = (
        f"About {minutes} min on {data['gpu_count']} GPU(s): ~{expected.tokens:,} tokens "
        f"({data['n_epochs']} epoch(s) of {training.bytes:,} bytes), at the speed "
        f"{basis.jobs} finished {data['model']} job(s) had on this GPU"
        + (
            f" ({round(basis.overhead_seconds)} s to load and evaluate, then "
            f"{1 / basis.seconds_per_token:,.0f} tokens/s)"
            if basis.overhead_seconds > 0
            else f" ({1 / basis.seconds_per_token:,.0f} tokens/s, loading included)"
        )
        + ". VAT included."
    )


def job_cost(*, job: FineTuningJob) -> Decimal | None:
    from marketplace.billing.services import job_cost_so_far

    # Display only: billing keeps the unrounded figure; invoices round per line.
    return job_cost_so_far(job=job).quantize(Decimal("0.01"))
