"""REFERENCE §5 invariants, computed straight from the tables (not through the admission code)."""

from __future__ import annotations

from collections import defaultdict
from decimal import Decimal

from django.db.models import Q
from django.utils import timezone

from marketplace.capacity.models import Booking, MaintenanceWindow, Pool
from marketplace.finetuning.models import FineTuningJob, JobAttempt
from marketplace.quotas.models import Allocation
from marketplace.quotas.quota_book import QuotaBook
from marketplace.quotas.world import month_start

HOLDING = {"admitted", "starting", "running", "finalizing", "pausing", "cancelling", "requeueing"}


def assert_invariants(*, quotas_unchanged: bool = True) -> dict[str, int]:
    now = timezone.now()
    live = list(Allocation.objects.filter(released_at__isnull=True).order_by("id"))
    _assert_org_quotas(live, quotas_unchanged=quotas_unchanged)
    _assert_pools(live, now)
    _assert_bookings(live)
    _assert_release_matches_attempts()
    if quotas_unchanged:
        _assert_budgets(now)
    return {"live_allocations": len(live), "live_gpus": sum(a.gpus for a in live)}


def _assert_org_quotas(live: list[Allocation], *, quotas_unchanged: bool) -> None:
    book = QuotaBook()
    groups: defaultdict[tuple[int, int | None], list[Allocation]] = defaultdict(list)
    for alloc in live:
        groups[(alloc.organization_id, alloc.flavor_id)].append(alloc)
    for (org_id, flavor_id), allocs in groups.items():
        in_max = guaranteed = 0
        for alloc in allocs:  # in admission order: each was checked against what ran before it
            if alloc.kind != Allocation.Kind.BOOKED:
                in_max += alloc.gpus
                if alloc.max_gpus_at_admission is not None:
                    assert in_max <= alloc.max_gpus_at_admission, (org_id, flavor_id, in_max, alloc)
            if alloc.kind == Allocation.Kind.GUARANTEED:
                guaranteed += alloc.gpus
                assert guaranteed <= alloc.guaranteed_gpus_at_admission, (org_id, guaranteed, alloc)
        if quotas_unchanged and flavor_id is not None:
            quota = book.quota(org_id, flavor_id)
            if quota.max_gpus is not None:
                assert in_max <= quota.max_gpus, (org_id, flavor_id, in_max, quota)
            assert guaranteed <= quota.guaranteed_gpus, (org_id, flavor_id, guaranteed, quota)
            if quota.max_concurrent_jobs is not None:
                assert len(allocs) <= quota.max_concurrent_jobs, (org_id, len(allocs), quota)


def _assert_pools(live: list[Allocation], now) -> None:  # type: ignore[no-untyped-def]
    used: defaultdict[int, int] = defaultdict(int)
    for alloc in live:
        if alloc.pool_id is not None:
            used[alloc.pool_id] += alloc.gpus
    booked_used: defaultdict[int, int] = defaultdict(int)
    for alloc in live:
        if alloc.booking_id is not None and alloc.kind == Allocation.Kind.BOOKED:
            booked_used[alloc.booking_id] += alloc.gpus
    for pool in Pool.objects.all():
        down = 0
        for window in MaintenanceWindow.objects.filter(pool=pool, start__lte=now, end__gt=now):
            down += window.gpu_count if window.gpu_count is not None else pool.gpu_count
        unused_booked = sum(
            max(b.gpu_count - booked_used[b.pk], 0)
            for b in Booking.objects.filter(
                pool=pool, status="confirmed", start__lte=now, end__gt=now
            )
        )
        assert used[pool.pk] + unused_booked <= max(pool.gpu_count - down, 0), (
            pool.public_id,
            used[pool.pk],
            unused_booked,
            pool.gpu_count,
        )


def _assert_bookings(live: list[Allocation]) -> None:
    per_booking: defaultdict[int, int] = defaultdict(int)
    for alloc in live:
        if alloc.kind == Allocation.Kind.BOOKED:
            assert alloc.booking_id is not None
            per_booking[alloc.booking_id] += alloc.gpus
    for booking in Booking.objects.filter(pk__in=list(per_booking)):
        assert per_booking[booking.pk] <= booking.gpu_count, (booking.public_id, per_booking)


def _assert_release_matches_attempts() -> None:
    """Held exactly while needed: a live allocation belongs to a job that holds GPUs and whose
    attempt (if any) has not ended; an ended attempt's allocation is released."""
    jobs = dict(FineTuningJob.objects.values_list("id", "status"))
    attempts = {
        (job_id, number): ended
        for job_id, number, ended in JobAttempt.objects.values_list("job_id", "number", "ended_at")
    }
    for alloc in Allocation.objects.all():
        ended = attempts.get((alloc.job_id, alloc.attempt_number), "none")
        if alloc.released_at is None:
            assert jobs[alloc.job_id] in HOLDING, (alloc, jobs[alloc.job_id])
            assert ended in (None, "none"), (alloc, "attempt ended but quota still held")
        elif ended not in (None, "none"):
            assert alloc.released_at >= ended, alloc
        else:
            assert ended == "none", (alloc, "released while its attempt still runs")
    holding = [job_id for job_id, status in jobs.items() if status in HOLDING]
    held = set(Allocation.objects.filter(released_at__isnull=True).values_list("job_id", flat=True))
    for job_id in holding:
        assert job_id in held, (job_id, jobs[job_id], "holds GPUs without an allocation")


def _assert_budgets(now) -> None:  # type: ignore[no-untyped-def]
    book = QuotaBook()
    spent: defaultdict[tuple[int, int | None], Decimal] = defaultdict(Decimal)
    for alloc in Allocation.objects.filter(Q(admitted_at__gte=month_start(now))):
        spent[(alloc.organization_id, alloc.flavor_id)] += (
            alloc.used_gpu_hours if alloc.used_gpu_hours is not None else alloc.reserved_gpu_hours
        )
    for (org_id, flavor_id), hours in spent.items():
        if flavor_id is None:
            continue
        budget = book.quota(org_id, flavor_id).monthly_gpu_hours
        if budget is not None:
            assert hours <= budget, (org_id, flavor_id, hours, budget)


# What a reason asks for when no start can be estimated until someone acts.
ACTIONS = ("resubmit", "ask staff", "choose another flavor", "Top up")


def assert_every_queued_job_explained() -> None:
    """REFERENCE §5.7, after a pass: a reason in words, and an estimated start unless the
    reason says what must be done first."""
    for job_id, reason, estimate in FineTuningJob.objects.filter(status="queued").values_list(
        "id", "pending_reason", "estimated_start"
    ):
        assert reason.startswith("waiting: "), (job_id, reason)
        assert estimate is not None or any(a in reason for a in ACTIONS), (job_id, reason)
