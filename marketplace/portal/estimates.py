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
    cost: Decimal | None = None
    cost_detail: str = ""
    estimated_start: datetime | None = None
    start_now: bool = False
    start_detail: str = ""
    notes: list[str] = field(default_factory=list)


def _max_job_hours(org: Organization, flavor_slug: str) -> Decimal:
    from marketplace.capacity.selectors import flavor_by_slug
    from marketplace.quotas.quota_book import QuotaBook, default_max_job_hours

    flavor = flavor_by_slug(flavor_slug) if flavor_slug else None
    if flavor is None:
        return default_max_job_hours()
    return QuotaBook(org_ids=[org.pk]).quota(org.pk, flavor.pk).max_job_hours


def launch_estimate(*, org: Organization, form: Any) -> LaunchEstimate:
    from marketplace.capacity.placement import job_estimate
    from marketplace.capacity.policies import residency_parse
    from marketplace.capacity.selectors import placeable_pools

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
    estimate = job_estimate(
        organization=org,
        gpu_flavor=flavor,
        gpu_count=gpus,
        residency=residency_parse(None),
        gpu_hours_per_gpu=hours,
    )
    result = LaunchEstimate(notes=[estimate.reason] if estimate.reason else [])
    if estimate.pool is None or estimate.price_per_gpu_hour is None:
        result.cost_detail = "No pool can run this job now; change the GPU or the GPU count."
        return result
    hourly = estimate.price_per_gpu_hour * gpus
    upper = estimate.estimated_cost
    if cap is not None and upper is not None:
        upper = min(upper, cap)
    result.cost = upper
    result.cost_detail = (
        f"At most, for the {hours} h run limit: {gpus} GPU(s) at €{estimate.price_per_gpu_hour:.2f} per "
        f"GPU-hour on {estimate.pool.public_id} (€{hourly:.2f}/h, before fees and VAT). You pay "
        "only for the GPU-seconds used."
    )
    start = estimate.estimated_start
    now = timezone.now()
    result.start_now = start is not None and (start - now).total_seconds() < 60
    result.estimated_start = start
    result.start_detail = (
        f"On {estimate.pool.name} ({estimate.pool.country}/{estimate.pool.region})."
    )
    return result


def job_cost(*, job: FineTuningJob) -> Decimal | None:
    from marketplace.billing.services import job_cost_so_far

    # Display only: billing keeps the unrounded figure; invoices round per line.
    return job_cost_so_far(job=job).quantize(Decimal("0.01"))
