"""Placement: choose the pool a job runs on. Pure selection; `services.placement_commit` writes.

The exact ordering:
1. Hard constraints, never relaxed: the pool is active with an approved provider; its flavor is
   the job's (any flavor when the job names none); it has at least the job's GPU count; its
   country satisfies the org's residency policy narrowed by the job's own residency request.
2. If the job's org has a booking active now on a remaining pool with enough unused GPUs, the
   job runs inside that booking: cheapest such pool, then oldest pool, then oldest booking.
3. Otherwise on demand, among remaining pools with enough free GPUs now: keep the most reliable
   ones — reliability within 5 points (1/20) of the best of them — and pick the cheapest;
   ties go to the more reliable pool, then to the oldest pool.
Reliability is `(successes + 9) / (successes + provider failures + 10)` over jobs placed on the
pool (see selectors.pools_reliability), computed exactly with fractions.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from fractions import Fraction
from typing import TypeVar

from django.utils import timezone

from marketplace.accounts.models import Organization
from marketplace.capacity import selectors
from marketplace.capacity.models import Booking, Pool
from marketplace.capacity.policies import Residency, money
from marketplace.errors import Conflict
from marketplace.finetuning.models import FineTuningJob

RELIABILITY_TOLERANCE = Fraction(1, 20)
T = TypeVar("T")


class NoPlacement(Conflict):
    """No pool can take the job now. `details` says why per pool, and when one might."""

    code = "no_capacity"

    def __init__(
        self, message: str, *, code: str | None = None, details: dict | None = None
    ) -> None:
        super().__init__(message, code=code, param="gpu_count", details=details)
        self.estimated_start: datetime | None = None
        if details and details.get("estimated_start"):
            self.estimated_start = datetime.fromtimestamp(details["estimated_start"], tz=UTC)


def most_reliable(candidates: Sequence[T], *, reliability: Callable[[T], Fraction]) -> list[T]:
    """The candidates within RELIABILITY_TOLERANCE of the most reliable one."""
    if not candidates:
        return []
    best = max(reliability(c) for c in candidates)
    return [c for c in candidates if reliability(c) >= best - RELIABILITY_TOLERANCE]


def cheapest_first(
    candidates: Sequence[T],
    *,
    price: Callable[[T], Decimal],
    reliability: Callable[[T], Fraction],
    ident: Callable[[T], int],
) -> list[T]:
    """Price ascending, then reliability descending, then oldest (smallest id) first.

    With `most_reliable`, this is the on-demand ordering; the admission pass can apply the same
    two functions to its in-memory pool states (reliability from selectors.pools_reliability).
    """
    return sorted(candidates, key=lambda c: (price(c), -reliability(c), ident(c)))


@dataclass(frozen=True)
class PlacementDecision:
    pool: Pool
    booking: Booking | None
    gpu_count: int
    price_per_gpu_hour: Decimal
    reliability: Fraction | None
    reason: str


@dataclass(frozen=True)
class PlacementNeed:
    organization: Organization
    flavor: str
    gpu_count: int
    residency: Residency


def _hard_reason(pool: Pool, need: PlacementNeed) -> str | None:
    """Why the pool can never take this job, or None."""
    if need.flavor and pool.flavor.slug != need.flavor:
        return f"flavor: offers {pool.flavor.slug}, job needs {need.flavor}"
    if pool.gpu_count < need.gpu_count:
        return f"size: has {pool.gpu_count} GPUs, job needs {need.gpu_count}"
    if not need.residency.allows(pool.country):
        return need.residency.why_not(pool.country)
    return None


def _where(pool: Pool) -> str:
    return f"{pool.public_id} ({pool.flavor.slug}, {pool.country}/{pool.region})"


def choose(need: PlacementNeed, *, at: datetime | None = None) -> PlacementDecision:
    at = at or timezone.now()
    pools = list(selectors.placeable_pools().order_by("pk"))
    if not pools:
        raise NoPlacement(
            "No GPU pool is active on Partage yet.", code="no_pools", details={"rejected": {}}
        )
    rejected: dict[str, str] = {}
    eligible = []
    for pool in pools:
        why = _hard_reason(pool, need)
        if why:
            rejected[pool.public_id] = why
        else:
            eligible.append(pool)
    usage = selectors.pools_usage(eligible, at)
    constraints = (
        f"flavor {need.flavor or 'any'}, {need.gpu_count} GPU(s), residency "
        f"{need.residency.describe()}"
    )
    booked = [
        (pool.price_per_gpu_hour, pool.pk, booking_id, pool)
        for pool in eligible
        for booking_id, org_id in usage[pool.pk].booking_org.items()
        if org_id == need.organization.pk
        and usage[pool.pk].unused_in_booking(booking_id) >= need.gpu_count
    ]
    if booked:
        _price, _pk, booking_id, pool = min(booked, key=lambda row: row[:3])
        booking = Booking.objects.get(pk=booking_id)
        return PlacementDecision(
            pool=pool,
            booking=booking,
            gpu_count=need.gpu_count,
            price_per_gpu_hour=booking.price_per_gpu_hour,
            reliability=None,
            reason=(
                f"Runs inside your booking {booking.public_id} on {pool.name} "
                f"({pool.public_id}: {pool.provider.name}, {pool.region}, {pool.country}): "
                f"{usage[pool.pk].unused_in_booking(booking_id)} of its {booking.gpu_count} "
                "booked GPUs were free."
            ),
        )
    fitting = []
    for pool in eligible:
        free = usage[pool.pk].free
        if free >= need.gpu_count:
            fitting.append(pool)
        else:
            rejected[pool.public_id] = (
                f"capacity: {free} GPU(s) free now, job needs {need.gpu_count}"
            )
    if not fitting:
        raise _nothing_fits(need, eligible, rejected, constraints, at)
    scores = selectors.pools_reliability([p.pk for p in fitting])
    top = most_reliable(fitting, reliability=lambda p: scores[p.pk])
    chosen = cheapest_first(
        top,
        price=lambda p: p.price_per_gpu_hour,
        reliability=lambda p: scores[p.pk],
        ident=lambda p: p.pk,
    )[0]
    return PlacementDecision(
        pool=chosen,
        booking=None,
        gpu_count=need.gpu_count,
        price_per_gpu_hour=chosen.price_per_gpu_hour,
        reliability=scores[chosen.pk],
        reason=_on_demand_reason(need, chosen, top, fitting, scores),
    )


def _percent(value: Fraction) -> str:
    return f"{float(value) * 100:.0f}%"


def _on_demand_reason(
    need: PlacementNeed,
    chosen: Pool,
    top: Sequence[Pool],
    fitting: Sequence[Pool],
    scores: dict[int, Fraction],
) -> str:
    """Why this pool, in words a customer reads on the job page (percentages, not scores)."""
    reason = (
        f"Runs on {chosen.name} ({chosen.public_id}: {chosen.provider.name}, {chosen.region}, "
        f"{chosen.country}) at "
        f"€{chosen.price_per_gpu_hour:.2f} per GPU-hour: the cheapest of the {len(top)} pool(s) "
        f"with {need.gpu_count} {chosen.flavor.model_name} GPU(s) free now whose track record "
        f"is among the best ({_percent(scores[chosen.pk])} of jobs there ended without a fault "
        "of the provider)."
    )
    passed_over = [
        p for p in fitting if p not in top and p.price_per_gpu_hour < chosen.price_per_gpu_hour
    ]
    if passed_over:
        reason += (
            f" {len(passed_over)} cheaper pool(s) were passed over: their providers failed more "
            "jobs."
        )
    return reason + f" Where your data may go: {need.residency.describe()}."


def _nothing_fits(
    need: PlacementNeed,
    eligible: list[Pool],
    rejected: dict[str, str],
    constraints: str,
    at: datetime,
) -> NoPlacement:
    starts = [
        (start, pool)
        for pool in eligible
        if (start := selectors.estimated_start(pool, gpus=need.gpu_count, at=at)) is not None
    ]
    soonest = (
        min(starts, key=lambda row: (row[0], row[1].price_per_gpu_hour))[0] if starts else None
    )
    if not eligible:
        message = f"No pool meets the job's hard constraints ({constraints})."
    else:
        message = (
            f"No GPUs free now on the {len(eligible)} pool(s) that meet the job's constraints "
            f"({constraints})."
        )
    return NoPlacement(
        message,
        details={
            "rejected": rejected,
            "estimated_start": int(soonest.timestamp()) if soonest else None,
        },
    )


def need_for_job(job: FineTuningJob) -> PlacementNeed:
    return PlacementNeed(
        organization=job.organization,
        flavor=job.gpu_flavor,
        gpu_count=job.gpu_count,
        residency=selectors.residency_for_job(job),
    )


def placement_choose(*, job: FineTuningJob, at: datetime | None = None) -> PlacementDecision:
    """The pool for `job` now, or NoPlacement (code no_pools when no pool exists at all, so the
    embedded default may fall back to local processes; code no_capacity otherwise)."""
    return choose(need_for_job(job), at=at)


@dataclass(frozen=True)
class JobEstimate:
    pool: Pool | None
    price_per_gpu_hour: Decimal | None
    estimated_start: datetime | None
    estimated_cost: Decimal | None
    reason: str


def job_estimate(
    *,
    organization: Organization,
    gpu_flavor: str,
    gpu_count: int,
    residency: Residency,
    gpu_hours_per_gpu: Decimal,
    at: datetime | None = None,
) -> JobEstimate:
    """Before submitting: where a job would run, when it could start, and what it would cost
    (provider price x GPUs x hours; billing adds its fees on top)."""
    at = at or timezone.now()
    need = PlacementNeed(
        organization=organization,
        flavor=gpu_flavor,
        gpu_count=gpu_count,
        residency=selectors.residency_for_org(organization).narrowed(residency),
    )
    try:
        decision = choose(need, at=at)
    except NoPlacement as e:
        start = e.estimated_start
        pools = [p for p in selectors.placeable_pools() if _hard_reason(p, need) is None]
        timed = [(selectors.estimated_start(p, gpus=gpu_count, at=at), p) for p in pools]
        ranked = sorted(
            ((s, p) for s, p in timed if s is not None),
            key=lambda r: (r[0], r[1].price_per_gpu_hour),
        )
        if not ranked:
            return JobEstimate(None, None, None, None, e.message)
        start, pool = ranked[0]
        return JobEstimate(
            pool,
            pool.price_per_gpu_hour,
            start,
            money(pool.price_per_gpu_hour * gpu_count * gpu_hours_per_gpu),
            f"{e.message} Estimated to start when {pool.public_id} frees up.",
        )
    return JobEstimate(
        decision.pool,
        decision.price_per_gpu_hour,
        at,
        money(decision.price_per_gpu_hour * gpu_count * gpu_hours_per_gpu),
        decision.reason,
    )
