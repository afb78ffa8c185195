"""An in-memory view of capacity and usage, loaded in a constant number of queries.

The admission pass loads the whole world once and decides in memory; each admission then loads
a small world (one pool, one organization) under its row locks and re-checks with the same code.
"""

from __future__ import annotations

import bisect
import json
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from fractions import Fraction
from typing import Any

from django.db.models import DecimalField, OuterRef, Q, QuerySet, Subquery, Sum, TextField
from django.db.models.functions import Cast, Coalesce

from marketplace.capacity.models import (
    Booking,
    GpuFlavor,
    MaintenanceWindow,
    Pool,
    ResidencyPolicy,
)
from marketplace.capacity.policies import Residency, residency_parse
from marketplace.capacity.selectors import (
    PRIOR_JOBS,
    PRIOR_SUCCESSES,
    placeable_pools,
    pools_reliability,
)
from marketplace.errors import InvalidInput
from marketplace.finetuning.models import FineTuningJob, JobAttempt, JobStatus
from marketplace.quotas.models import Allocation

ZERO = Decimal("0")

# An expected release of GPUs: (when, how many, what the moment is based on). The basis is
# "booking" (a booking's end: exact), "eta" (the running job's own progress report) or "limit"
# (the job's maximum duration: the latest it can end), so a waiting job is told what its
# estimated start rests on.
Release = tuple[datetime, int, str]


@dataclass
class PendingJob:
    """A queued job as the admission pass decides it (loaded by `pending_jobs_load`)."""

    id: str
    org_id: int
    flavor_slug: str
    gpus: int
    priority: int
    created_at: datetime
    residency: dict[str, Any]
    attempt_count: int = 0
    pending_reason: str = ""
    estimated_start: datetime | None = None


@dataclass
class LiveAllocation:
    id: int
    job_id: str
    org_id: int
    flavor_id: int | None
    pool_id: int | None
    booking_id: int | None
    gpus: int
    kind: str
    priority: int
    expected_end: datetime
    preempt_requested: bool
    training_started_at: datetime | None
    basis: str = "limit"  # what expected_end rests on: "eta" (progress report) or "limit"


@dataclass
class BookingState:
    id: int
    org_id: int
    pool_id: int
    gpus: int
    end: datetime
    used: int = 0

    @property
    def unused(self) -> int:
        return max(self.gpus - self.used, 0)


@dataclass
class PoolState:
    id: int
    public_id: str
    name: str
    flavor_id: int
    region: str
    country: str
    price: Decimal
    size: int  # gpu_count
    capacity: int  # gpu_count minus GPUs in maintenance now; 0 when the pool is not active
    used: int = 0
    bookings: dict[int, BookingState] = field(default_factory=dict)
    releases: list[Release] = field(default_factory=list)  # expected, sorted
    claimed: int = 0  # GPUs promised, in estimates, to jobs ahead in the queue
    # The provider's record on this pool (capacity's selectors.pools_reliability), loaded
    # for the pass; a world of one pool (an admission's re-check) keeps the prior.
    reliability: Fraction = Fraction(PRIOR_SUCCESSES, PRIOR_JOBS)
    live: list[LiveAllocation] = field(default_factory=list)
    # Caches for the pass (tens of thousands of decisions): reset by `World.add_live`.
    _freed_by: list[int] | None = None  # cumulative GPUs freed by each release
    _all_releases: list[Release] | None = None
    _booked_unused: int | None = None

    def all_releases(self) -> list[Release]:
        """The running work's releases and, at each booking's end, its GPUs nobody uses."""
        if self._all_releases is None:
            ends = [(b.end, b.unused, "booking") for b in self.bookings.values() if b.unused]
            self._all_releases = sorted(self.releases + ends) if ends else self.releases
        return self._all_releases

    def release_at(self, needed: int) -> Release | None:
        """The release by which `needed` GPUs will have been freed (None: they never will)."""
        releases = self.all_releases()
        if self._freed_by is None:
            total, self._freed_by = 0, []
            for _, gpus, _basis in releases:
                total += gpus
                self._freed_by.append(total)
        index = bisect.bisect_left(self._freed_by, needed)
        return releases[index] if index < len(releases) else None

    def booked_unused(self, except_booking: int | None = None) -> int:
        if self._booked_unused is None:
            self._booked_unused = sum(b.unused for b in self.bookings.values())
        own = self.bookings.get(except_booking) if except_booking is not None else None
        return self._booked_unused - (own.unused if own is not None else 0)

    def free(self, own_booking: int | None = None) -> int:
        return self.capacity - self.used - self.booked_unused(except_booking=own_booking)

    def changed(self) -> None:
        self._freed_by = None
        self._all_releases = None
        self._booked_unused = None


@dataclass
class OrgFlavorUsage:
    guaranteed: int = 0
    borrowed: int = 0
    booked: int = 0
    jobs: int = 0
    budget_used: Decimal = ZERO  # GPU-hours this month: used, or reserved while running
    releases: list[Release] = field(default_factory=list)

    @property
    def quota_used(self) -> int:
        """GPUs that count against the maximum (booked work is paid for by its booking)."""
        return self.guaranteed + self.borrowed

    @property
    def total(self) -> int:
        return self.guaranteed + self.borrowed + self.booked


@dataclass
class Flavor:
    id: int
    slug: str
    label: str  # what people call it: "H100"


def flavor_label(model_name: str, slug: str) -> str:
    name = model_name.removeprefix("NVIDIA ").strip()
    return name or slug


def month_start(now: datetime) -> datetime:
    return now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)


def next_month_start(now: datetime) -> datetime:
    start = month_start(now)
    return (
        start.replace(year=start.year + 1, month=1)
        if start.month == 12
        else start.replace(month=start.month + 1)
    )


class World:
    def __init__(self, now: datetime) -> None:
        self.now = now
        self.flavors: dict[int, Flavor] = {}
        self.flavor_by_slug: dict[str, Flavor] = {}
        self.pools: dict[int, PoolState] = {}
        self.pools_by_flavor: dict[int, list[PoolState]] = defaultdict(list)
        self.usage: defaultdict[tuple[int, int | None], OrgFlavorUsage] = defaultdict(
            OrgFlavorUsage
        )
        self.live: list[LiveAllocation] = []
        self.org_bookings: defaultdict[int, list[BookingState]] = defaultdict(list)
        self.residency: dict[int, Residency] = {}
        self.version = 0  # bumped by every change, for callers' caches
        self._residencies: dict[tuple[int, str], Residency] = {}
        self._pools_for: dict[tuple[int, Residency], list[PoolState]] = {}

    def add_live(self, alloc: LiveAllocation) -> None:
        """Count one live allocation in pool, booking and organization usage."""
        self.version += 1
        self.live.append(alloc)
        usage = self.usage[(alloc.org_id, alloc.flavor_id)]
        usage.jobs += 1
        if alloc.kind == Allocation.Kind.GUARANTEED:
            usage.guaranteed += alloc.gpus
        elif alloc.kind == Allocation.Kind.BOOKED:
            usage.booked += alloc.gpus
        else:
            usage.borrowed += alloc.gpus
        bisect.insort(usage.releases, (alloc.expected_end, alloc.gpus, alloc.basis))
        pool = self.pools.get(alloc.pool_id) if alloc.pool_id else None
        if pool is not None:
            pool.used += alloc.gpus
            pool.live.append(alloc)
            release: Release = (alloc.expected_end, alloc.gpus, alloc.basis)
            booking = pool.bookings.get(alloc.booking_id) if alloc.booking_id else None
            if booking is not None and alloc.kind == Allocation.Kind.BOOKED:
                booking.used += alloc.gpus
                # Booked GPUs go back to their booking, not to others, until it ends.
                if booking.end > alloc.expected_end:
                    release = (booking.end, alloc.gpus, "booking")
            bisect.insort(pool.releases, release)
            pool.changed()

    def residency_of(self, org_id: int, job_residency: dict[str, object]) -> Residency:
        """The org's policy is a floor; the job may narrow it (capacity's rule)."""
        key = (org_id, json.dumps(job_residency, sort_keys=True) if job_residency else "")
        if key not in self._residencies:
            floor = self.residency.get(org_id, Residency())
            try:
                self._residencies[key] = floor.narrowed(residency_parse(job_residency))
            except InvalidInput:  # nothing matches
                self._residencies[key] = floor.narrowed(Residency(countries=frozenset({"--"})))
        return self._residencies[key]

    def pools_for(self, flavor_id: int, residency: Residency) -> list[PoolState]:
        """The flavor's pools where the residency allows work to run."""
        key = (flavor_id, residency)
        if key not in self._pools_for:
            self._pools_for[key] = [
                p for p in self.pools_by_flavor.get(flavor_id, []) if residency.allows(p.country)
            ]
        return self._pools_for[key]


def world_load(
    *,
    now: datetime,
    pool_ids: Iterable[int] | None = None,
    org_ids: Iterable[int] | None = None,
    with_reliability: bool = False,
    flavors_of: World | None = None,
) -> World:
    """Everything admission needs; restricted to some pools and organizations when given.

    Queries: flavors, pools, maintenance, bookings, live allocations, budget, residency (7),
    and with `with_reliability` (the pass, which places jobs) the pools' records (8).
    `flavors_of`: take the GPU flavor catalogue from that world (the pass's) instead of
    reading it again (6).
    """
    world = World(now)
    if flavors_of is not None:
        world.flavors.update(flavors_of.flavors)
        world.flavor_by_slug.update(flavors_of.flavor_by_slug)
    else:
        for flavor in GpuFlavor.objects.all():
            entry = Flavor(flavor.pk, flavor.slug, flavor_label(flavor.model_name, flavor.slug))
            world.flavors[flavor.pk] = entry
            world.flavor_by_slug[flavor.slug] = entry
    pools = placeable_pools()
    maintenance = MaintenanceWindow.objects.filter(start__lte=now, end__gt=now)
    bookings = Booking.objects.filter(status=Booking.Status.CONFIRMED, start__lte=now, end__gt=now)
    started = JobAttempt.objects.filter(
        job_id=OuterRef("job_id"), number=OuterRef("attempt_number")
    )
    live = Allocation.objects.filter(released_at__isnull=True).annotate(
        training_started_at=Subquery(started.values("training_started_at")[:1])
    )
    budget = Allocation.objects.filter(admitted_at__gte=month_start(now))
    residency = ResidencyPolicy.objects.all()
    if pool_ids is not None:
        pool_list = list(pool_ids)
        pools = pools.filter(pk__in=pool_list)
        maintenance = maintenance.filter(pool_id__in=pool_list)
        bookings = bookings.filter(pool_id__in=pool_list)
    if org_ids is not None:
        org_list = list(org_ids)
        budget = budget.filter(organization_id__in=org_list)
        residency = residency.filter(organization_id__in=org_list)
    if pool_ids is not None or org_ids is not None:
        scope = Q()
        if pool_ids is not None:
            scope |= Q(pool_id__in=pool_list)
        if org_ids is not None:
            scope |= Q(organization_id__in=org_list)
        live = live.filter(scope)
    _load_pools(world, pools, maintenance, bookings)
    if with_reliability and len(world.pools) > 1:  # a single pool has nothing to compare
        for pool_id, score in pools_reliability(world.pools).items():
            world.pools[pool_id].reliability = score
    for row in live.values(
        "id",
        "job_id",
        "organization_id",
        "flavor_id",
        "pool_id",
        "booking_id",
        "gpus",
        "kind",
        "priority",
        "expected_end",
        "preempt_requested_at",
        "training_started_at",
        "job__progress",
    ):
        expected_end, basis = _expected_end(row["expected_end"], row["job__progress"], now)
        world.add_live(
            LiveAllocation(
                id=row["id"],
                job_id=row["job_id"],
                org_id=row["organization_id"],
                flavor_id=row["flavor_id"],
                pool_id=row["pool_id"],
                booking_id=row["booking_id"],
                gpus=row["gpus"],
                kind=row["kind"],
                priority=row["priority"],
                expected_end=expected_end,
                preempt_requested=row["preempt_requested_at"] is not None,
                training_started_at=row["training_started_at"],
                basis=basis,
            )
        )
    spent = Coalesce("used_gpu_hours", "reserved_gpu_hours", output_field=DecimalField())
    for spent_row in budget.values("organization_id", "flavor_id").annotate(hours=Sum(spent)):
        key = (spent_row["organization_id"], spent_row["flavor_id"])
        world.usage[key].budget_used = spent_row["hours"] or ZERO
    for policy in residency:
        world.residency[policy.organization_id] = residency_parse(
            {"eu_only": policy.eu_only, "countries": policy.countries or []}
        )
    return world


def _expected_end(limit: datetime, progress: object, now: datetime) -> tuple[datetime, str]:
    """When a running job should end: its own progress report's ETA when it gave one that is
    sooner than its maximum duration, else that maximum (the latest it can run)."""
    if not isinstance(progress, dict):
        return limit, "limit"
    eta_s, reported_at = progress.get("eta_s"), progress.get("reported_at")
    if not isinstance(eta_s, int | float) or not isinstance(reported_at, str):
        return limit, "limit"
    try:
        reported = datetime.fromisoformat(reported_at)
    except ValueError:
        return limit, "limit"
    end = max(reported + timedelta(seconds=float(eta_s)), now)
    return (end, "eta") if end < limit else (limit, "limit")


def _load_pools(
    world: World,
    pools: QuerySet[Pool],
    maintenance: QuerySet[MaintenanceWindow],
    bookings: QuerySet[Booking],
) -> None:
    down: defaultdict[int, int] = defaultdict(int)
    whole: set[int] = set()
    sizes: dict[int, int] = {}
    for pool in pools:
        sizes[pool.pk] = pool.gpu_count
        world.pools[pool.pk] = PoolState(
            id=pool.pk,
            public_id=pool.public_id,
            name=pool.name,
            flavor_id=pool.flavor_id,
            region=pool.region,
            country=pool.country,
            price=pool.price_per_gpu_hour,
            size=pool.gpu_count,
            capacity=pool.gpu_count,
        )
        world.pools_by_flavor[pool.flavor_id].append(world.pools[pool.pk])
    for window in maintenance:
        if window.gpu_count is None:
            whole.add(window.pool_id)
        else:
            down[window.pool_id] += window.gpu_count
    for pool_id, state in world.pools.items():
        state.capacity = 0 if pool_id in whole else max(state.capacity - down[pool_id], 0)
    for booking in bookings:
        pool_state = world.pools.get(booking.pool_id)
        entry = BookingState(
            id=booking.pk,
            org_id=booking.organization_id,
            pool_id=booking.pool_id,
            gpus=booking.gpu_count,
            end=booking.end,
        )
        if pool_state is not None:
            pool_state.bookings[booking.pk] = entry
        world.org_bookings[booking.organization_id].append(entry)


def pending_jobs_load() -> list[PendingJob]:
    """The queue, in one query."""
    rows = (
        FineTuningJob.objects.filter(status=JobStatus.QUEUED)
        # As text: most jobs have no residency of their own ("{}"), and decoding each one
        # was a fifth of the load at 10,000 jobs.
        .annotate(residency_text=Cast("residency", TextField()))
        .values_list(
            "id",
            "organization_id",
            "gpu_flavor",
            "gpu_count",
            "priority",
            "created_at",
            "residency_text",
            "attempt_count",
            "pending_reason",
            "estimated_start",
        )
    )
    return [
        PendingJob(
            id=r[0],
            org_id=r[1],
            flavor_slug=r[2],
            gpus=max(r[3], 1),
            priority=r[4],
            created_at=r[5],
            residency=json.loads(r[6]) if r[6] and r[6] not in _NO_RESIDENCY else {},
            attempt_count=r[7],
            pending_reason=r[8],
            estimated_start=r[9],
        )
        for r in rows
    ]


_NO_RESIDENCY = frozenset({"{}", "null"})
