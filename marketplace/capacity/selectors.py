"""Reads for capacity: offers, pools, bookings, free capacity at an instant, fitting windows.

Free GPUs of a pool at instant t (what an on-demand job may take):

    capacity
    - GPUs under maintenance at t
    - for each confirmed booking active at t: max(booked GPUs, GPUs its jobs use)
    - GPUs of running work on the pool that no active booking covers

Running work is read from the quotas app's live allocations (see `_running`); a placed job
without one counts while admitted, starting, running, finalizing, pausing or cancelling.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from fractions import Fraction
from typing import Any

from django.db.models import Count, Q, QuerySet
from django.utils import timezone

from marketplace.accounts.models import Organization
from marketplace.capacity.models import (
    ApprovalStatus,
    Booking,
    GpuFlavor,
    MaintenanceWindow,
    Placement,
    Pool,
    ResidencyPolicy,
)
from marketplace.capacity.policies import Residency, residency_parse
from marketplace.capacity.running import live_allocations
from marketplace.capacity.timeline import Load, earliest_fit, load_at, peak
from marketplace.finetuning.models import FailureClass, FineTuningJob, JobStatus

# How far ahead bookings may be made, and earliest windows are searched.
SEARCH_HORIZON = timedelta(days=366)

# Job states that hold GPUs on their pool.
HOLDING_STATES = frozenset(
    {
        JobStatus.ADMITTED,
        JobStatus.STARTING,
        JobStatus.RUNNING,
        JobStatus.FINALIZING,
        JobStatus.PAUSING,
        JobStatus.CANCELLING,
    }
)


# ---------------------------------------------------------------- catalogue


def flavors() -> QuerySet[GpuFlavor]:
    return GpuFlavor.objects.all()


def flavor_by_slug(slug: str) -> GpuFlavor | None:
    return GpuFlavor.objects.filter(slug=slug).first()


def placeable_pools() -> QuerySet[Pool]:
    """Pools that may take bookings and jobs: active, with an approved provider and a cluster."""
    return Pool.objects.filter(
        status=Pool.Status.ACTIVE,
        provider__provider_profile__approval_status=ApprovalStatus.APPROVED,
        cluster__isnull=False,
    ).select_related("flavor", "provider", "cluster")


def pools_for_provider(org: Organization) -> QuerySet[Pool]:
    return Pool.objects.filter(provider=org).select_related("flavor", "provider", "cluster")


def pool_for_provider(org: Organization, public_id: str) -> Pool | None:
    return pools_for_provider(org).filter(public_id=public_id).first()


def bookings_for_org(org: Organization) -> QuerySet[Booking]:
    return Booking.objects.filter(organization=org).select_related("pool", "flavor")


def booking_for_org(org: Organization, public_id: str) -> Booking | None:
    return bookings_for_org(org).filter(public_id=public_id).first()


def residency_for_org(org: Organization) -> Residency:
    policy = ResidencyPolicy.objects.filter(organization=org).first()
    if policy is None:
        return Residency()
    return residency_parse({"eu_only": policy.eu_only, "countries": policy.countries})


def residency_for_job(job: FineTuningJob) -> Residency:
    """The org's policy is a floor; a job may narrow it further, never widen it."""
    return residency_for_org(job.organization).narrowed(residency_parse(job.residency))


# ---------------------------------------------------------------- loads and free capacity


def _maintenance_loads(
    pool_ids: Iterable[int], start: datetime, end: datetime
) -> dict[int, list[Load]]:
    loads: dict[int, list[Load]] = defaultdict(list)
    rows = MaintenanceWindow.objects.filter(
        pool_id__in=list(pool_ids), start__lt=end, end__gt=start
    ).values_list("pool_id", "start", "end", "gpu_count", "pool__gpu_count")
    for pool_id, begin, finish, gpus, capacity in rows:
        loads[pool_id].append(
            Load(begin, finish, capacity if gpus is None else min(gpus, capacity))
        )
    return loads


def _booking_rows(
    pool_ids: Iterable[int], start: datetime, end: datetime
) -> list[tuple[int, int, datetime, datetime, int, int]]:
    return list(
        Booking.objects.filter(
            pool_id__in=list(pool_ids),
            status=Booking.Status.CONFIRMED,
            start__lt=end,
            end__gt=start,
        ).values_list("pk", "pool_id", "start", "end", "gpu_count", "organization_id")
    )


def reserved_loads(
    pool_ids: Iterable[int], start: datetime, end: datetime
) -> dict[int, list[Load]]:
    """Per pool, bookings and maintenance overlapping [start, end): what invariant 3 bounds."""
    ids = list(pool_ids)
    loads = _maintenance_loads(ids, start, end)
    for _pk, pool_id, begin, finish, gpus, _org in _booking_rows(ids, start, end):
        loads[pool_id].append(Load(begin, finish, gpus))
    return loads


def booked_gpus(pool: Pool, at: datetime) -> int:
    """GPUs of confirmed bookings on the pool at instant `at`."""
    rows = _booking_rows([pool.pk], at, at + timedelta(microseconds=1))
    return sum(row[4] for row in rows)


def _running(pool_ids: Iterable[int], at: datetime) -> list[tuple[int, int | None, int]]:
    """(pool_id, booking_id, gpus) for the work holding GPUs on these pools at `at`.

    The quotas app's live allocations are the record (released exactly once, when every pod of
    the attempt has ended). A job placed here without a live allocation counts from its
    placement while it is in a holding state. For a future instant, an allocation counts if
    it is expected to run until then; a bare placement counts only now.
    """
    ids = list(pool_ids)
    now = timezone.now()
    live = live_allocations(ids)
    rows = [
        (a.job_id, a.pool_id, a.booking_id, a.gpus)
        for a in live
        if at <= now or (a.expected_end is not None and a.expected_end > at)
    ]
    allocated = {a.job_id for a in live}
    if at <= now + timedelta(minutes=1):
        rows += [
            row
            for row in Placement.objects.filter(
                pool_id__in=ids, job__status__in=HOLDING_STATES
            ).values_list("job_id", "pool_id", "booking_id", "gpu_count")
            if row[0] not in allocated
        ]
    return [(pool_id, booking_id, gpus) for _job, pool_id, booking_id, gpus in rows]


@dataclass(frozen=True)
class PoolUsage:
    """A pool at one instant."""

    capacity: int
    maintenance: int
    booked: dict[int, int]  # active booking id -> booked GPUs
    booking_org: dict[int, int]  # active booking id -> organization id
    used_in_booking: dict[int, int]  # active booking id -> GPUs its jobs use
    on_demand: int  # GPUs of running jobs that no active booking covers

    @property
    def free(self) -> int:
        reserved = sum(
            max(gpus, self.used_in_booking.get(pk, 0)) for pk, gpus in self.booked.items()
        )
        return max(self.capacity - self.maintenance - reserved - self.on_demand, 0)

    def unused_in_booking(self, booking_id: int) -> int:
        return max(self.booked.get(booking_id, 0) - self.used_in_booking.get(booking_id, 0), 0)


def pools_usage(pools: Iterable[Pool], at: datetime) -> dict[int, PoolUsage]:
    """Usage of many pools at `at` in three queries, whatever the number of pools."""
    by_id = {pool.pk: pool for pool in pools}
    instant_end = at + timedelta(microseconds=1)
    maintenance = _maintenance_loads(by_id, at, instant_end)
    booked: dict[int, dict[int, int]] = defaultdict(dict)
    booking_org: dict[int, int] = {}
    for pk, pool_id, _begin, _finish, gpus, org_id in _booking_rows(by_id, at, instant_end):
        booked[pool_id][pk] = gpus
        booking_org[pk] = org_id
    used: dict[int, dict[int, int]] = defaultdict(lambda: defaultdict(int))
    on_demand: dict[int, int] = defaultdict(int)
    for pool_id, booking_id, gpus in _running(by_id, at):
        if booking_id is not None and booking_id in booked[pool_id]:
            used[pool_id][booking_id] += gpus
        else:
            on_demand[pool_id] += gpus
    return {
        pool_id: PoolUsage(
            capacity=pool.gpu_count,
            maintenance=min(load_at(maintenance[pool_id], at), pool.gpu_count),
            booked=dict(booked[pool_id]),
            booking_org={pk: booking_org[pk] for pk in booked[pool_id]},
            used_in_booking=dict(used[pool_id]),
            on_demand=on_demand[pool_id],
        )
        for pool_id, pool in by_id.items()
    }


def pools_free_gpus(pools: Iterable[Pool], at: datetime | None = None) -> dict[int, int]:
    at = at or timezone.now()
    return {pool_id: usage.free for pool_id, usage in pools_usage(pools, at).items()}


def pool_free_gpus(pool: Pool, at: datetime | None = None) -> int:
    """GPUs an on-demand job could take on `pool` at `at` (default now)."""
    return pools_free_gpus([pool], at)[pool.pk]


def pool_peak_reserved(pool: Pool, start: datetime, end: datetime) -> int:
    """The most GPUs that bookings and maintenance take at any instant of [start, end)."""
    return peak(reserved_loads([pool.pk], start, end)[pool.pk], start, end)


def earliest_booking_window(
    pool: Pool, *, gpus: int, duration: timedelta, not_before: datetime
) -> datetime | None:
    """Earliest start ≥ not_before where `gpus` GPUs can be booked for `duration`, or None."""
    loads = reserved_loads([pool.pk], not_before, not_before + SEARCH_HORIZON + duration)
    return earliest_fit(
        loads[pool.pk], capacity=pool.gpu_count, gpus=gpus, duration=duration, not_before=not_before
    )


MAX_ESTIMATE_STEPS = 200


def estimated_start(pool: Pool, *, gpus: int, at: datetime | None = None) -> datetime | None:
    """When an on-demand job of `gpus` GPUs could start on `pool`: now if it fits, else the first
    moment a booking or maintenance ends, or a running job's estimated finish, leaves room."""
    at = at or timezone.now()
    if gpus > pool.gpu_count:
        return None
    moments = {at}
    moments |= set(
        Booking.objects.filter(pool=pool, status=Booking.Status.CONFIRMED, end__gt=at).values_list(
            "end", flat=True
        )
    )
    moments |= set(
        MaintenanceWindow.objects.filter(pool=pool, end__gt=at).values_list("end", flat=True)
    )
    finishing = list(
        Placement.objects.filter(pool=pool, job__status__in=HOLDING_STATES).values_list(
            "job__estimated_finish", "gpu_count"
        )
    )
    moments |= {finish for finish, _gpus in finishing if finish is not None and finish > at}
    for moment in sorted(moments)[:MAX_ESTIMATE_STEPS]:
        usage = pools_usage([pool], moment)[pool.pk]
        # Jobs whose estimate says they are done by `moment` free their GPUs.
        done = sum(g for finish, g in finishing if finish is not None and finish <= moment)
        if usage.free + min(done, usage.on_demand) >= gpus:
            return moment
    return None


# ---------------------------------------------------------------- reliability

# A new pool starts as if it had 9 successes in 10 jobs; history then takes over.
PRIOR_SUCCESSES = 9
PRIOR_JOBS = 10


def pools_reliability(pool_ids: Iterable[int]) -> dict[int, Fraction]:
    """Per pool: (successes + 9) / (successes + provider failures + 10), over jobs placed there.

    Only outcomes the provider answers for count: a job that succeeded, or one that failed
    with failure_class provider_error. User and platform errors say nothing of the provider.
    """
    ids = list(pool_ids)
    rows = (
        Placement.objects.filter(pool_id__in=ids)
        .values("pool_id")
        .annotate(
            successes=Count("pk", filter=Q(job__status=JobStatus.SUCCEEDED)),
            failures=Count(
                "pk",
                filter=Q(
                    job__status=JobStatus.FAILED, job__failure_class=FailureClass.PROVIDER_ERROR
                ),
            ),
        )
    )
    counts = {row["pool_id"]: (row["successes"], row["failures"]) for row in rows}
    result: dict[int, Fraction] = {}
    for pool_id in ids:
        successes, failures = counts.get(pool_id, (0, 0))
        result[pool_id] = Fraction(successes + PRIOR_SUCCESSES, successes + failures + PRIOR_JOBS)
    return result


# ---------------------------------------------------------------- offers


@dataclass(frozen=True)
class OfferFilters:
    gpu_model: str | None = None
    flavor: str | None = None
    min_memory_gb: int | None = None
    country: str | None = None
    region: str | None = None
    max_price: Decimal | None = None
    at: datetime | None = None
    gpus: int | None = None


def offers(filters: OfferFilters) -> tuple[QuerySet[Pool], dict[int, int]]:
    """Active pools matching the filters, with their free GPUs at `filters.at` (default now).

    With `gpus`, only pools with at least that many free GPUs at that instant are kept.
    """
    pools = placeable_pools()
    if filters.gpu_model:
        pools = pools.filter(flavor__model_name__icontains=filters.gpu_model)
    if filters.flavor:
        pools = pools.filter(flavor__slug=filters.flavor)
    if filters.min_memory_gb is not None:
        pools = pools.filter(flavor__memory_gb__gte=filters.min_memory_gb)
    if filters.country:
        pools = pools.filter(country=filters.country.upper())
    if filters.region:
        pools = pools.filter(region=filters.region)
    if filters.max_price is not None:
        pools = pools.filter(price_per_gpu_hour__lte=filters.max_price)
    free = pools_free_gpus(list(pools), filters.at)
    if filters.gpus is not None:
        pools = pools.filter(pk__in=[pk for pk, n in free.items() if n >= filters.gpus])
    return pools, free


# ---------------------------------------------------------------- executor hook


def launch_settings_for_job(job: FineTuningJob) -> dict[str, Any]:
    """What the executor needs about the job's pool: the cluster connection reference, namespace,
    nodeSelector, tolerations and GPU resource name. Empty when the job has no placement
    (the embedded default runs jobs as local processes)."""
    placement = (
        Placement.objects.select_related("pool__cluster", "pool__flavor").filter(job=job).first()
    )
    if placement is None:
        return {}
    pool = placement.pool
    cluster = pool.cluster
    return {
        "pool_id": pool.public_id,
        "cluster": cluster.name if cluster else None,
        "cluster_kind": cluster.kind if cluster else None,
        "credentials_ref": cluster.credentials_ref if cluster else None,
        "namespace": cluster.namespace if cluster else None,
        "node_selector": dict(pool.node_selector or {}),
        "tolerations": list(pool.tolerations or []),
        "gpu_resource_name": pool.flavor.gpu_resource_name,
        "gpu_count": placement.gpu_count,
    }
