"""Reads for billing, scoped by organization from the start."""

from __future__ import annotations

import itertools
import statistics
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

from django.db.models import Exists, Max, OuterRef, QuerySet, Sum

from marketplace.accounts.models import Organization
from marketplace.billing.models import (
    BillingAccount,
    Invoice,
    LedgerLine,
    Payout,
    PayoutBatch,
    ProviderStatement,
    Topup,
    UsageRecord,
)
from marketplace.billing.money import cents, fee_percent, org_vat_rate, usage_cost
from marketplace.billing.services.ledger import balance_available, balance_held
from marketplace.errors import InvalidInput, NotFound


def balance_for_org(org: Organization) -> dict[str, Decimal]:
    account = BillingAccount.objects.filter(organization=org).first()
    return {
        "available": balance_available(organization=org),
        "held": balance_held(organization=org),
        "credit_limit": account.credit_limit if account else Decimal("0.00"),
    }


def low_balance_threshold_of(org: Organization) -> Decimal | None:
    account = BillingAccount.objects.filter(organization=org).first()
    return account.low_balance_threshold if account else None


def usage_for_org(
    org: Organization,
    *,
    period: tuple[datetime, datetime] | None = None,
    job_id: str | None = None,
    pool_public_id: str | None = None,
) -> QuerySet[UsageRecord]:
    # Finalized invoices tile an org's usage by recorded_at: a record is invoiced when one of
    # them reaches past it.
    invoiced = Invoice.objects.filter(
        organization=org, status=Invoice.Status.FINALIZED, usage_until__gt=OuterRef("recorded_at")
    )
    records = (
        UsageRecord.objects.filter(organization=org)
        .select_related("pool", "attempt")
        .annotate(invoiced=Exists(invoiced))
    )
    if period is not None:
        records = records.filter(recorded_at__gte=period[0], recorded_at__lt=period[1])
    if job_id:
        records = records.filter(job_id=job_id)
    if pool_public_id:
        records = records.filter(pool__public_id=pool_public_id)
    return records.order_by("-recorded_at", "-id")


def invoices_for_org(org: Organization) -> QuerySet[Invoice]:
    """The org's invoices and credit notes (kind), newest first."""
    return (
        Invoice.objects.filter(organization=org)
        .select_related("credits")
        .order_by("-created_at", "-id")
    )


def invoice_for_org(org: Organization, public_id: str) -> Invoice:
    invoice = (
        invoices_for_org(org)
        .filter(public_id=public_id)
        .prefetch_related("lines__pool", "lines__booking")
        .first()
    )
    if invoice is None:
        raise NotFound(f"No invoice {public_id!r} in your organization.", param="invoice_id")
    return invoice


def statements_for_provider(org: Organization) -> QuerySet[ProviderStatement]:
    return (
        ProviderStatement.objects.filter(provider=org)
        .select_related("payout")
        .order_by("-created_at", "-id")
    )


def payouts_for_provider(org: Organization) -> QuerySet[Payout]:
    """The provider's payouts (one per paid statement), newest first."""
    return Payout.objects.filter(provider=org).select_related("batch", "statement").order_by("-id")


def payout_batches() -> QuerySet[PayoutBatch]:
    """Every payout batch, newest first: for staff only (the cockpit)."""
    return PayoutBatch.objects.order_by("-created_at", "-id")


def statement_for_provider(org: Organization, public_id: str) -> ProviderStatement:
    statement = statements_for_provider(org).filter(public_id=public_id).first()
    if statement is None:
        raise NotFound(f"No statement {public_id!r} for your organization.", param="statement_id")
    return statement


@dataclass(frozen=True)
class CostEstimate:
    pool_public_id: str
    gpu_flavor: str
    gpu_count: int
    duration_seconds: int
    price_per_gpu_hour: Decimal
    amount: Decimal
    vat: Decimal

    def as_dict(self) -> dict[str, Any]:
        return {
            "object": "billing.cost_estimate",
            "pool": self.pool_public_id,
            "gpu_flavor": self.gpu_flavor,
            "gpu_count": self.gpu_count,
            "estimated_duration_seconds": self.duration_seconds,
            "price_per_gpu_hour": str(self.price_per_gpu_hour),
            "currency": "EUR",
            "amount": str(self.amount),
            "vat": str(self.vat),
            "total": str(self.amount + self.vat),
        }


def cost_estimate(
    org: Organization, *, gpu_flavor: str, gpu_count: int, duration_seconds: int
) -> CostEstimate:
    """GPUs x estimated duration x the price of the cheapest pool that could run the job."""
    from marketplace.capacity import selectors as capacity

    if isinstance(gpu_count, bool) or not isinstance(gpu_count, int) or not 1 <= gpu_count <= 64:
        raise InvalidInput("gpu_count must be an integer from 1 to 64.", param="gpu_count")
    if (
        isinstance(duration_seconds, bool)
        or not isinstance(duration_seconds, int)
        or not 1 <= duration_seconds <= 90 * 24 * 3600
    ):
        raise InvalidInput(
            "estimated_duration_seconds must be an integer from 1 to 7776000 (90 days).",
            param="estimated_duration_seconds",
        )
    pools = capacity.placeable_pools().filter(gpu_count__gte=gpu_count)
    if gpu_flavor:
        pools = pools.filter(flavor__slug=gpu_flavor)
    residency = capacity.residency_for_org(org)
    feasible = [
        pool
        for pool in pools.order_by("price_per_gpu_hour", "id")
        if residency.allows(pool.country)
    ]
    if not feasible:
        wanted = f"{gpu_count} x {gpu_flavor or 'any flavor'}"
        raise NotFound(
            f"No active pool can run {wanted} within your residency policy "
            f"({residency.describe()}); GET /v1/offers lists what is available.",
            param="gpu_flavor",
        )
    pool = feasible[0]
    amount = cents(usage_cost(Decimal(gpu_count * duration_seconds), pool.price_per_gpu_hour))
    rate = org_vat_rate(org)
    return CostEstimate(
        pool_public_id=pool.public_id,
        gpu_flavor=pool.flavor.slug,
        gpu_count=gpu_count,
        duration_seconds=duration_seconds,
        price_per_gpu_hour=pool.price_per_gpu_hour,
        amount=amount,
        vat=cents(amount * rate),
    )


@dataclass(frozen=True)
class Throughput:
    """How fast finished jobs of one base model ran on one GPU flavor, read from what they were
    billed (their usage records) and what they trained (their trained tokens)."""

    jobs: int
    tokens_per_byte: float  # tokens trained per byte of training file, per epoch
    overhead_seconds: float  # paid once per job: loading the model, the final evaluation
    seconds_per_token: float  # per GPU

    def seconds(self, tokens: float) -> float:
        return self.overhead_seconds + self.seconds_per_token * tokens


THROUGHPUT_JOBS = 20


def throughput_measured(*, base_model: str, gpu_flavor: str) -> Throughput | None:
    """From the latest THROUGHPUT_JOBS succeeded jobs of `base_model` on pools of `gpu_flavor`:
    billed seconds per GPU = overhead + seconds per token x tokens, fitted (robustly, _fit) when
    their sizes differ enough to tell the two apart, else proportional to the tokens. None
    before the first such job."""
    from marketplace.finetuning.models import FineTuningJob, JobStatus

    billed = (
        UsageRecord.objects.filter(
            job__model=base_model,
            job__status=JobStatus.SUCCEEDED,
            job__trained_tokens__gt=0,
            pool__flavor__slug=gpu_flavor,
        )
        .values("job_id")
        .annotate(seconds=Sum("gpu_seconds"), gpus=Max("gpu_count"), last=Max("ended_at"))
        .order_by("-last")[:THROUGHPUT_JOBS]
    )
    seconds_of = {row["job_id"]: float(row["seconds"]) / max(row["gpus"], 1) for row in billed}
    jobs = FineTuningJob.objects.filter(pk__in=list(seconds_of)).values(
        "id", "trained_tokens", "hyperparameters", "training_file__bytes"
    )
    points: list[tuple[float, float]] = []
    per_byte: list[float] = []
    for job in jobs:
        tokens, seconds = float(job["trained_tokens"] or 0), seconds_of[job["id"]]
        if seconds <= 0 or tokens <= 0:
            continue
        points.append((tokens, seconds))
        epochs = (job["hyperparameters"] or {}).get("n_epochs")
        size = job["training_file__bytes"] or 0
        if isinstance(epochs, int) and epochs > 0 and size > 0:
            per_byte.append(tokens / (size * epochs))
    if not points or not per_byte:
        return None
    overhead, per_token = _fit(points)
    return Throughput(
        jobs=len(points),
        tokens_per_byte=statistics.median(per_byte),
        overhead_seconds=overhead,
        seconds_per_token=per_token,
    )


def _fit(points: list[tuple[float, float]]) -> tuple[float, float]:
    """(overhead, seconds per token). When the sizes spread, a Theil-Sen line: the median of the
    slopes between every two jobs, and the median intercept. One job that ran on a busy machine
    (or loaded a cold model cache) moves it little, where least squares would follow it. Else,
    or when that line is not a cost (a negative slope or overhead): in proportion to tokens."""
    xs = [x for x, _ in points]
    if len(points) >= 2 and max(xs) > 1.2 * min(xs):
        slopes = [
            (y2 - y1) / (x2 - x1)
            for (x1, y1), (x2, y2) in itertools.combinations(points, 2)
            if x2 != x1
        ]
        slope = statistics.median(slopes)
        intercept = statistics.median(y - slope * x for x, y in points)
        if slope > 0 and intercept >= 0:
            return intercept, slope
    return 0.0, statistics.median(y / x for x, y in points)


@dataclass(frozen=True)
class ExpectedCost:
    amount: Decimal  # VAT included
    seconds: float  # expected GPU-seconds per GPU
    tokens: int
    basis: Throughput
    pool_public_id: str
    price_per_gpu_hour: Decimal


def expected_cost(
    org: Organization,
    *,
    base_model: str,
    gpu_flavor: str,
    gpu_count: int,
    training_bytes: int,
    epochs: int,
) -> ExpectedCost | None:
    """What this job should cost, on the pool the worst case is priced on (cost_estimate),
    from the measured throughput of its base model on that pool's flavor. None when nothing
    has been measured there yet."""
    worst = cost_estimate(org, gpu_flavor=gpu_flavor, gpu_count=gpu_count, duration_seconds=3600)
    basis = throughput_measured(base_model=base_model, gpu_flavor=worst.gpu_flavor)
    if basis is None:
        return None
    tokens = training_bytes * epochs * basis.tokens_per_byte
    seconds = basis.seconds(tokens)
    net = cents(usage_cost(Decimal(str(round(seconds * gpu_count, 3))), worst.price_per_gpu_hour))
    return ExpectedCost(
        amount=net + cents(net * org_vat_rate(org)),
        seconds=seconds,
        tokens=round(tokens),
        basis=basis,
        pool_public_id=worst.pool_public_id,
        price_per_gpu_hour=worst.price_per_gpu_hour,
    )


def platform_fee_percent() -> Decimal:
    return fee_percent()


def topups_for_org(org: Organization) -> QuerySet[Topup]:
    return Topup.objects.filter(organization=org).order_by("-created_at", "-id")


def topup_for_org(org: Organization, public_id: str) -> Topup:
    topup = topups_for_org(org).filter(public_id=public_id).first()
    if topup is None:
        raise NotFound(f"No top-up {public_id!r} in your organization.", param="topup_id")
    return topup


def topups_awaiting_transfer() -> QuerySet[Topup]:
    """Staff: bank-transfer top-ups not yet credited, oldest first."""
    return (
        Topup.objects.filter(method=Topup.Method.BANK_TRANSFER, status=Topup.Status.PENDING)
        .select_related("organization")
        .order_by("created_at", "id")
    )


@dataclass(frozen=True)
class Coverage:
    """Whether the org's balance covers an amount before it confirms: what the quote shows."""

    needed: Decimal
    available: Decimal
    shortfall: Decimal

    @property
    def covered(self) -> bool:
        return self.shortfall == 0

    def as_dict(self) -> dict[str, Any]:
        return {
            "covered": self.covered,
            "needed": f"{self.needed:.2f}",
            "available": f"{self.available:.2f}",
            "shortfall": f"{self.shortfall:.2f}",
            "currency": "EUR",
        }


def balance_coverage(org: Organization, *, amount: Decimal) -> Coverage:
    """What the org can spend now (available balance + credit line) against `amount`, VAT
    included, and the shortfall in euros (0 when covered)."""
    balance = balance_for_org(org)
    available = balance["available"] + balance["credit_limit"]
    shortfall = max(Decimal(amount) - available, Decimal("0.00"))
    return Coverage(needed=Decimal(amount), available=available, shortfall=shortfall)


def ledger_lines_for_org(org: Organization) -> QuerySet[LedgerLine]:
    """Every ledger line booked to the organization's own accounts, oldest first."""
    return (
        LedgerLine.objects.filter(organization=org)
        .select_related("entry")
        .order_by("entry__created_at", "entry_id", "id")
    )
