"""Writes for placements: record where a job runs, re-checked under the pool lock."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import replace

from django.db import transaction
from django.utils import timezone

from marketplace.capacity import selectors
from marketplace.capacity.models import Placement, Pool
from marketplace.capacity.placement import PlacementDecision
from marketplace.capacity.services.common import CapacityUnavailable
from marketplace.finetuning.models import FineTuningJob


def placement_commit(*, job: FineTuningJob, decision: PlacementDecision) -> Placement:
    """Record a placement after re-checking, under the pool lock, that it still fits.

    Call it first in the admission transaction (the pool lock comes before quota and balance
    locks), then `job_admit(placement_reason=decision.reason)` in the same transaction.
    Raises CapacityUnavailable if a concurrent admission took the GPUs meanwhile.
    (The admission pass, which locks its pools itself, calls `placements_commit`.)
    """
    with transaction.atomic():
        # NO KEY UPDATE: still serializes admissions and bookings on the pool, but does not
        # block billing rows that merely reference the pool (FK key-share) while they hold a
        # balance lock, which would deadlock against pool → balance.
        pool = Pool.objects.select_for_update(no_key=True).get(pk=decision.pool.pk)
        return placements_commit([(job, replace(decision, pool=pool))])[0]


def placements_commit(
    items: Sequence[tuple[FineTuningJob, PlacementDecision]],
) -> list[Placement]:
    """Record many placements at once (the admission pass's batch), in a constant number of
    statements whatever their number.

    The caller holds, in this transaction, the lock of every pool in `items` (taken in pool
    id order, before any quota or balance lock), each `decision.pool` was read under it, and
    the caller rolls its whole transaction back on any error: no savepoint is taken here.
    Each placement is re-checked in list order, the jobs before it counting against the
    pool's free GPUs (or its booking's unused ones). Raises CapacityUnavailable for the
    first one that no longer fits.
    """
    if not items:
        return []
    jobs = [job.pk for job, _ in items]
    Placement.objects.filter(job_id__in=jobs).delete()  # a requeued job is placed afresh
    pools = {decision.pool.pk: decision.pool for _, decision in items}
    usage = selectors.pools_usage(pools.values(), timezone.now())
    taken: dict[tuple[int, int | None], int] = defaultdict(int)  # (pool, booking) → GPUs
    for job, decision in items:
        pool, booking = decision.pool, decision.booking
        now = usage[pool.pk]
        if booking is not None:
            room = now.unused_in_booking(booking.pk) - taken[(pool.pk, booking.pk)]
        else:
            # Booked GPUs a booking's jobs take come out of its reservation, not the free ones.
            room = now.free - taken[(pool.pk, None)]
        if pool.status != Pool.Status.ACTIVE or room < job.gpu_count:
            raise CapacityUnavailable(
                f"Pool {pool.public_id} no longer has {job.gpu_count} free GPUs "
                f"(free now: {max(room, 0)}); the job stays queued.",
                param="gpu_count",
            )
        taken[(pool.pk, booking.pk if booking is not None else None)] += job.gpu_count
    return Placement.objects.bulk_create(
        Placement(
            job=job,
            pool=decision.pool,
            booking=decision.booking,
            gpu_count=job.gpu_count,
            price_per_gpu_hour=decision.price_per_gpu_hour,
            reason=decision.reason,
        )
        for job, decision in items
    )
