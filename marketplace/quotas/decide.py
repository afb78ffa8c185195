"""Pure admission decisions over a `World`: does a job fit, where, as what kind, and if not, why
(in words a user understands) and from when it may start. No database access here.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from fractions import Fraction
from typing import Any, TypeVar, cast

from django.conf import settings

from marketplace.capacity.placement import most_reliable
from marketplace.capacity.policies import Residency
from marketplace.quotas.models import Allocation
from marketplace.quotas.quota_book import EffectiveQuota, QuotaBook
from marketplace.quotas.world import (
    Flavor,
    LiveAllocation,
    OrgFlavorUsage,
    PendingJob,
    PoolState,
    Release,
    World,
    next_month_start,
)

T = TypeVar("T")

K = Allocation.Kind


def min_run() -> timedelta:
    return timedelta(seconds=settings.PARTAGE_PREEMPT_MIN_RUN_SECONDS)


def grace() -> timedelta:
    return timedelta(seconds=settings.PARTAGE_PREEMPT_GRACE_SECONDS)


PLACEMENT_HOW: dict[str, str] = {
    str(K.GUARANTEED): "within your organization's guaranteed GPUs",
    str(K.BOOKED): "on your booking",
    str(K.BORROWED): "on idle capacity borrowed above your guarantee (may be preempted)",
}


@dataclass
class Admit:
    job: PendingJob
    pool: PoolState
    flavor: Flavor
    kind: str
    booking_id: int | None
    quota: EffectiveQuota
    reserve_hours: Decimal

    @property
    def placement_reason(self) -> str:
        how = PLACEMENT_HOW[self.kind]
        return (
            f"{self.job.gpus} x {self.flavor.label} on pool {self.pool.public_id} "
            f"({self.pool.region}, {self.pool.country}) {how}"
        )


@dataclass(frozen=True)
class _PoolsSummary:
    largest: int
    most_free: int
    most_stoppable: int


@dataclass
class Wait:
    reason: str
    estimated_start: datetime | None
    preempt: list[LiveAllocation] = field(default_factory=list)
    # Set when nothing but a change to the job itself (another flavor, fewer GPUs, a wider
    # residency) or to its organization's quota can let it run: (parameter, what to do).
    # A submission is refused with it; a job already queued keeps waiting, with no estimate.
    unfit: tuple[str, str] | None = None


def _unfit(param: str, problem: str, *, queued: str, submitted: str) -> Wait:
    """A wait that only a change to the job or to its quota can end: one `problem`, followed
    by what a queued job's owner can do, or what a submission should ask for instead."""
    return Wait(
        f"waiting: {problem}; {queued}",
        None,
        unfit=(param, f"{problem[0].upper()}{problem[1:]}; {submitted}."),
    )


def humanize(delta: timedelta) -> str:
    """About how long, in steps that grow with the wait ("7 min", "40 min", "3 h", "2 days").

    Coarse steps keep a waiting job's text steady from one pass to the next, so the pass
    rewrites few reasons (the exact moment is in estimated_start).
    """
    minutes = max(int(delta.total_seconds() // 60), 1)
    if minutes < 10:
        return f"{minutes} min"
    if minutes < 90:
        return f"{5 * round(minutes / 5)} min"
    hours = round(minutes / 60)
    if hours < 48:
        return f"{hours} h"
    return f"{round(hours / 24)} days"


def _earliest(releases: list[Release], needed: int, now: datetime) -> tuple[datetime | None, str]:
    """When, per expected releases, `needed` more GPUs will have been freed, and the basis."""
    if needed <= 0:
        return now, "free"
    freed = 0
    for moment, gpus, basis in releases:
        freed += gpus
        if freed >= needed:
            return max(moment, now), basis
    return None, ""


def _where(pools: list[PoolState], residency: Residency) -> str:
    if residency.eu_only:
        return "in EU pools"
    if residency.countries:
        return f"in pools in {', '.join(sorted(residency.countries))}"
    regions = sorted({p.region for p in pools})
    return f"in {regions[0]}" if len(regions) == 1 else "in any pool"


class Decider:
    """Decides for one job at a time, updating the world as if each admission happened."""

    def __init__(
        self, world: World, book: QuotaBook, *, min_run: timedelta, grace: timedelta
    ) -> None:
        self.world = world
        self.book = book
        self.min_run = min_run
        self.grace = grace
        self._bounds: dict[int, tuple[int, int]] = {}
        self._heaps: dict[
            tuple[int, int], tuple[list[PoolState], list[tuple[datetime, int, int, PoolState, str]]]
        ] = {}
        self._heaps_version = -1
        # Answers per list of pools (and job size), until the world changes: see _per_pools.
        self._memo: dict[tuple[str, int, int], tuple[int, list[PoolState], Any]] = {}

    # ------------------------------------------------------------- fair-share order

    def share(self, org_id: int, flavor_id: int | None, gpus: int = 0) -> Decimal:
        """Usage relative to guarantee and weight, counting half the `gpus` the job would add:
        below the guarantee is negative, first.

        This is the apportionment problem, GPUs for seats: dividing by weight after adding
        nothing (Adams' method) favours small weights, adding the whole job (D'Hondt's, WFQ's
        "finish tag") favours large ones, and adding half (Sainte-Laguë's) is unbiased.
        Simulated 8 h at weights 2:1 (tests/quotas/test_fairness_pg.py), the weight-2
        organization got 0.63-0.65 of the GPU-time with nothing added and 0.68-0.70 with
        the whole job, against 2/3."""
        usage = self.world.usage[(org_id, flavor_id)]
        guaranteed = self.book.quota(org_id, flavor_id).guaranteed_gpus if flavor_id else 0
        return (Decimal(usage.quota_used - guaranteed) + Decimal(gpus) / 2) / self.book.weight(
            org_id
        )

    def order(self, jobs: list[PendingJob]) -> Iterator[PendingJob]:
        """Priority first, then the organization's share (recomputed after each pick), then age.

        The caller decides on each job before the next is drawn, so shares are current.
        """
        queues: dict[tuple[int, str], list[PendingJob]] = {}
        for job in sorted(jobs, key=lambda j: (-j.priority, j.created_at, j.id)):
            queues.setdefault((job.org_id, job.flavor_slug), []).append(job)
        heap: list[tuple[int, Decimal, datetime, str, tuple[int, str], int]] = []

        def push(key: tuple[int, str], index: int) -> None:
            queue = queues[key]
            if index < len(queue):
                head = queue[index]
                flavor = self.world.flavor_by_slug.get(head.flavor_slug)
                share = self.share(head.org_id, flavor.id if flavor else None, head.gpus)
                heapq.heappush(heap, (-head.priority, share, head.created_at, head.id, key, index))

        for key in queues:
            push(key, 0)
        while heap:
            *_, key, index = heapq.heappop(heap)
            yield queues[key][index]
            push(key, index + 1)

    # ------------------------------------------------------------- one job

    def decide(self, job: PendingJob) -> Admit | Wait:
        if not self.world.pools:
            return Wait("waiting: no GPU pool is open yet; staff are adding capacity", None)
        if job.flavor_slug:
            flavor = self.world.flavor_by_slug.get(job.flavor_slug)
            if flavor is None:
                offered = ", ".join(
                    sorted(self.world.flavors[fid].slug for fid in self.world.pools_by_flavor)
                )
                return _unfit(
                    "gpu_flavor",
                    f"no GPU flavor {job.flavor_slug!r} is offered",
                    queued="cancel and resubmit with a flavor from the pool list",
                    submitted=f"choose one of: {offered}",
                )
            flavors = [flavor]
        else:
            flavors = [self.world.flavors[fid] for fid in self.world.pools_by_flavor]
        waits: list[Wait] = []
        for flavor in flavors:
            outcome = self.decide_on_flavor(job, flavor)
            if isinstance(outcome, Admit):
                return outcome
            waits.append(outcome)
        known = [w for w in waits if w.estimated_start is not None]
        if known:
            return min(known, key=lambda w: w.estimated_start or self.world.now)
        unfit = [w.unfit for w in waits if w.unfit is not None]
        if len(flavors) > 1 and len(unfit) == len(waits):
            return Wait(
                waits[0].reason,
                None,
                unfit=(
                    unfit[0][0],
                    "No GPU flavor can run this job: " + " ".join(u[1] for u in unfit),
                ),
            )
        return waits[0]

    def decide_on_flavor(
        self, job: PendingJob, flavor: Flavor, *, pool_id: int | None = None
    ) -> Admit | Wait:
        """Admit on one of the flavor's pools, or say why the job waits. `pool_id`: consider
        that pool only (an admission re-checking the pass's choice under its locks)."""
        world, now = self.world, self.world.now
        label = flavor.label
        every = world.pools_by_flavor.get(flavor.id, [])
        residency = world.residency_of(job.org_id, job.residency)
        pools = world.pools_for(flavor.id, residency)
        if pool_id is not None:
            pools = [pool for pool in pools if pool.id == pool_id]
        if not pools and every:
            return _unfit(
                "residency",
                f"no {label} pool matches the data residency ({residency.describe()})",
                queued="it starts when one opens, or cancel and resubmit with a wider residency",
                submitted="widen the residency or choose another flavor",
            )
        if not pools:
            return _unfit(
                "gpu_flavor",
                f"no {label} pool exists yet",
                queued="it starts when a provider opens one, or cancel and resubmit with another "
                "flavor",
                submitted="choose another flavor",
            )
        summary = self._summary(pools)
        if job.gpus > summary.largest:
            return _unfit(
                "gpu_count",
                f"no {label} pool {_where(pools, residency)} has {job.gpus} GPUs "
                f"(the largest has {summary.largest})",
                queued="resubmit with fewer GPUs",
                submitted=f"ask for {summary.largest} or fewer",
            )
        quota = self.book.quota(job.org_id, flavor.id)
        usage = world.usage[(job.org_id, flavor.id)]
        reserve = Decimal(job.gpus) * quota.max_job_hours
        blocked = self._quota_blocks(job, label, quota, usage, reserve)
        if blocked is not None:
            return blocked
        booked = self._booked(job, flavor, pools, quota, reserve)
        if booked is not None:
            return booked
        if quota.max_gpus is not None and usage.quota_used + job.gpus > quota.max_gpus:
            if job.gpus > quota.max_gpus:
                return _unfit(
                    "gpu_count",
                    f"this job needs {job.gpus} {label} GPUs, more than your organization's "
                    f"maximum of {quota.max_gpus}",
                    queued="ask staff to raise it",
                    submitted=(
                        f"ask for {quota.max_gpus} or fewer"
                        if quota.max_gpus
                        else "choose another flavor"
                    )
                    + ", or ask staff to raise it",
                )
            when, basis = _earliest(
                usage.releases, usage.quota_used + job.gpus - quota.max_gpus, now
            )
            return Wait(
                f"waiting: your organization is using {usage.quota_used} of its maximum "
                f"{quota.max_gpus} {label} GPUs{_eta(when, now, basis)}",
                when,
            )
        kind = K.GUARANTEED if usage.guaranteed + job.gpus <= quota.guaranteed_gpus else K.BORROWED
        if job.gpus <= summary.most_free:
            pool = self._pick(pools, job.gpus)
            return Admit(job, pool, flavor, kind, None, quota, reserve)
        if kind == K.GUARANTEED and job.gpus <= summary.most_stoppable:
            preempting = self._preempt_plan(job, pools, None)
            if preempting is not None:
                return preempting
        return self._capacity_wait(job, label, pools, residency, quota, usage)

    def _pick(self, pools: list[PoolState], gpus: int) -> PoolState:
        """The on-demand pool, in capacity's placement order: among the pools with `gpus`
        free now, keep the most reliable (within capacity's tolerance of the best of them),
        then the cheapest; ties go to the more reliable, then the best fit (fewest GPUs left
        idle), then the oldest pool. Cached until the world changes: once the pass's limit is
        reached, every job that fits asks the same."""

        def pick() -> PoolState:
            fitting = [p for p in pools if p.free() >= gpus]
            top = most_reliable(fitting, reliability=_reliability)
            return min(top, key=lambda p: (p.price, -p.reliability, p.free() - gpus, p.id))

        return self._per_pools("pick", pools, gpus, pick)

    def _per_pools(
        self, name: str, pools: list[PoolState], gpus: int, compute: Callable[[], T]
    ) -> T:
        """`compute()`'s answer for this list of pools (and job size), kept until the world
        changes: the pass asks the same of tens of thousands of waiting jobs. A list is
        known by its identity; the entry keeps it alive, so the identity is not reused."""
        key = (name, id(pools), gpus)
        cached = self._memo.get(key)
        if cached is not None and cached[0] == self.world.version and cached[1] is pools:
            return cast(T, cached[2])
        value = compute()
        self._memo[key] = (self.world.version, pools, value)
        return value

    def _quota_blocks(
        self,
        job: PendingJob,
        label: str,
        quota: EffectiveQuota,
        usage: OrgFlavorUsage,
        reserve: Decimal,
    ) -> Wait | None:
        now = self.world.now
        if quota.max_concurrent_jobs is not None and usage.jobs >= quota.max_concurrent_jobs:
            if quota.max_concurrent_jobs == 0:
                return _unfit(
                    "gpu_flavor",
                    f"your organization's plan does not include {label} GPUs",
                    queued="ask staff for access or choose another flavor",
                    submitted="choose another flavor, or ask staff for access",
                )
            when, basis = _earliest(usage.releases, 1, now)
            return Wait(
                f"waiting: your organization runs {usage.jobs} of its {quota.max_concurrent_jobs} "
                f"allowed concurrent {label} jobs{_eta(when, now, basis)}",
                when,
            )
        if (
            quota.monthly_gpu_hours is not None
            and usage.budget_used + reserve > quota.monthly_gpu_hours
        ):
            reset = next_month_start(now)
            return Wait(
                f"waiting: this job may use up to {reserve:.0f} {label} GPU-hours and your "
                f"organization has {max(quota.monthly_gpu_hours - usage.budget_used, Decimal(0)):.0f} "
                f"of its {quota.monthly_gpu_hours:.0f} monthly GPU-hours left; "
                f"the budget resets on {reset:%d %B}",
                reset,
            )
        return None

    def _booked(
        self,
        job: PendingJob,
        flavor: Flavor,
        pools: list[PoolState],
        quota: EffectiveQuota,
        reserve: Decimal,
    ) -> Admit | Wait | None:
        for booking in self.world.org_bookings.get(job.org_id, []):
            pool = self.world.pools.get(booking.pool_id)
            if pool is None or pool not in pools or booking.unused < job.gpus:
                continue
            if pool.free(own_booking=booking.id) >= job.gpus:
                return Admit(job, pool, flavor, K.BOOKED, booking.id, quota, reserve)
            return self._preempt_plan(job, [pool], booking.id) or Wait(
                f"waiting: your booking on pool {pool.public_id} is starting; "
                "work borrowing it is being stopped",
                self.world.now + self.grace,
            )
        return None

    def _preempt_plan(
        self, job: PendingJob, pools: list[PoolState], booking_id: int | None
    ) -> Wait | None:
        """Find borrowed work to stop so that an entitled job fits; None when there is none."""
        now = self.world.now
        for pool in sorted(pools, key=lambda p: -p.free(own_booking=booking_id)):
            freeing, preemptible = self._stoppable(pool)
            missing = job.gpus - pool.free(own_booking=booking_id) - freeing
            if missing > preemptible:
                continue  # even stopping every preemptible job there would not be enough
            if missing <= 0:
                return Wait(
                    f"waiting: borrowed work on pool {pool.public_id} is being stopped "
                    "to free the GPUs you are entitled to",
                    now + self.grace,
                )
            victims = sorted(
                (a for a in pool.live if self._preemptible(a, job)),
                key=lambda a: (a.priority, -(a.training_started_at or now).timestamp()),
            )
            chosen: list[LiveAllocation] = []
            for victim in victims:
                if missing <= 0:
                    break
                chosen.append(victim)
                missing -= victim.gpus
            if missing <= 0:
                for victim in chosen:
                    victim.preempt_requested = True
                self._bounds.pop(pool.id, None)
                self._memo.clear()  # the summaries counted these GPUs as stoppable
                return Wait(
                    f"waiting: stopping {len(chosen)} borrowed job(s) on pool {pool.public_id} "
                    "to free the GPUs you are entitled to",
                    now + self.grace,
                    preempt=chosen,
                )
        return None

    def _summary(self, pools: list[PoolState]) -> _PoolsSummary:
        """Largest pool, most free GPUs, and most GPUs that stopping work could free, over a
        list of pools; cached until the world changes. Most waiting jobs fit nowhere, and
        this answers that without visiting every pool for each of them."""
        return self._per_pools(
            "summary",
            pools,
            0,
            lambda: _PoolsSummary(
                largest=max(p.size for p in pools),
                most_free=max(p.free() for p in pools),
                most_stoppable=max(p.free() + sum(self._stoppable(p)) for p in pools),
            ),
        )

    def _stoppable(self, pool: PoolState) -> tuple[int, int]:
        """GPUs of the pool's work already being stopped, and of borrowed work that some job
        could preempt (an upper bound); cached, since most waiting jobs ask the same."""
        if pool.id not in self._bounds:
            oldest_start = self.world.now - self.min_run
            self._bounds[pool.id] = (
                sum(a.gpus for a in pool.live if a.preempt_requested),
                sum(
                    a.gpus
                    for a in pool.live
                    if a.kind == K.BORROWED
                    and not a.preempt_requested
                    and a.training_started_at is not None
                    and a.training_started_at <= oldest_start
                ),
            )
        return self._bounds[pool.id]

    def _preemptible(self, alloc: LiveAllocation, job: PendingJob) -> bool:
        if alloc.kind != K.BORROWED or alloc.preempt_requested:
            return False
        if alloc.training_started_at is None:
            return False
        if alloc.training_started_at > self.world.now - self.min_run:
            return False
        return alloc.org_id != job.org_id or alloc.priority < job.priority

    def _capacity_wait(
        self,
        job: PendingJob,
        label: str,
        pools: list[PoolState],
        residency: Residency,
        quota: EffectiveQuota,
        usage: OrgFlavorUsage,
    ) -> Wait:
        now = self.world.now
        best = self._soonest(pools, job.gpus)
        ahead = False
        if best is not None:
            when, pool, basis = best
            ahead = pool.claimed > 0  # GPUs already promised to jobs ahead in the queue
            pool.claimed += job.gpus
        else:  # beyond every expected release: after one more maximum duration, at most
            when = self._last_release(pools) + timedelta(hours=float(quota.max_job_hours))
            basis, ahead = "limit", any(p.claimed for p in pools)
        eta, where = _eta(when, now, basis, behind_queue=ahead), _where(pools, residency)
        if quota.guaranteed_gpus and usage.guaranteed >= quota.guaranteed_gpus:
            return Wait(
                f"waiting: your organization is using {usage.guaranteed} of its "
                f"{quota.guaranteed_gpus} guaranteed {label} GPUs and no idle {label} is free "
                f"to borrow {where}{eta}",
                when,
            )
        return Wait(f"waiting: no free {label} {where}{eta}", when)

    def _last_release(self, pools: list[PoolState]) -> datetime:
        """When the last expected release on these pools happens (now if none); cached until
        the world changes, since every job that no pool can promise GPUs to asks it."""

        def last() -> datetime:
            ends = [p.all_releases()[-1][0] for p in pools if p.all_releases()]
            return max(ends) if ends else self.world.now

        return self._per_pools("last release", pools, 0, last)

    def _soonest(self, pools: list[PoolState], gpus: int) -> tuple[datetime, PoolState, str] | None:
        """The pool where `gpus` GPUs are expected free first, after the GPUs already promised
        (in estimates) to jobs ahead in the queue; ties go to the earlier pool in the list.

        A lazy heap per list of pools and job size: a promise only makes that pool's time
        later, so a stale entry is recomputed when it reaches the top. Any other change to
        the world (an admission in this pass) rebuilds the heaps.
        """
        if self._heaps_version != self.world.version:
            self._heaps.clear()
            self._heaps_version = self.world.version
        key = (id(pools), gpus)
        if key not in self._heaps:
            entries = []
            for index, pool in enumerate(pools):
                expected = self._expected_free(pool, gpus)
                if expected is not None:
                    entries.append((expected[0], index, pool.claimed, pool, expected[1]))
            heapq.heapify(entries)
            self._heaps[key] = (pools, entries)
        heap = self._heaps[key][1]
        while heap:
            when, index, claimed, pool, basis = heap[0]
            if claimed == pool.claimed:
                return when, pool, basis
            fresh = self._expected_free(pool, gpus)
            if fresh is None:
                heapq.heappop(heap)
            else:
                heapq.heapreplace(heap, (fresh[0], index, pool.claimed, pool, fresh[1]))
        return None

    def _expected_free(self, pool: PoolState, gpus: int) -> tuple[datetime, str] | None:
        """When `gpus` GPUs should be free on the pool, and what that rests on."""
        now = self.world.now
        needed = gpus - pool.free() + pool.claimed
        if needed <= 0:
            return now, "free"
        release = pool.release_at(needed)
        return (max(release[0], now), release[2]) if release is not None else None

    # ------------------------------------------------------------- bookkeeping

    def apply(self, admit: Admit, alloc_id: int = 0) -> None:
        """Count an admission in the world, so later decisions in this pass see it."""
        now = self.world.now
        self.world.usage[(admit.job.org_id, admit.flavor.id)].budget_used += admit.reserve_hours
        self.world.add_live(
            LiveAllocation(
                id=alloc_id,
                job_id=admit.job.id,
                org_id=admit.job.org_id,
                flavor_id=admit.flavor.id,
                pool_id=admit.pool.id,
                booking_id=admit.booking_id,
                gpus=admit.job.gpus,
                kind=admit.kind,
                priority=admit.job.priority,
                expected_end=now + timedelta(hours=float(admit.quota.max_job_hours)),
                preempt_requested=False,
                training_started_at=None,
            )
        )


def _reliability(pool: PoolState) -> Fraction:
    return pool.reliability


# What an estimated start rests on, in the words a waiting customer reads.
_BASIS_WORDS = {
    "booking": "when a booking holding those GPUs ends",
    "eta": "from the running jobs' own progress",
    "limit": "the running jobs' maximum duration; they may well end sooner",
}
# How far a progress-based estimate may move: trainers' ETAs drift with the data's lengths.
ETA_LOW, ETA_HIGH = 0.8, 1.5


def _eta(when: datetime | None, now: datetime, basis: str = "", behind_queue: bool = False) -> str:
    """The estimate as a range, with what it is based on."""
    if when is None:
        return ""
    if when <= now + timedelta(minutes=1):
        return "; should start within a minute"
    wait = when - now
    if basis == "eta":
        low, high = humanize(wait * ETA_LOW), humanize(wait * ETA_HIGH)
        span = f"about {low}" if low == high else f"about {low} to {high}"
    elif basis == "limit":
        span = f"at most about {humanize(wait)}"
    else:
        span = f"about {humanize(wait)}"
    words = _BASIS_WORDS.get(basis)
    if behind_queue:
        words = (words + ", " if words else "") + "after the jobs ahead of yours in the queue"
    return f"; next free in {span}" + (f" ({words})" if words else "")
