"""Writes for placements: record where a job runs, re-checked under the pool lock."""

from __future__ import annotations

from django.db import transaction
from django.utils import timezone

from marketplace.capacity import selectors
from marketplace.capacity.models import Placement, Pool
from marketplace.capacity.placement import PlacementDecision
from marketplace.capacity.services.common import CapacityUnavailable
from marketplace.finetuning.models import FineTuningJob


def placement_commit(
    *, job: FineTuningJob, decision: PlacementDecision, pool_locked: bool = False
) -> Placement:
    """Record a placement after re-checking, under the pool lock, that it still fits.

    Call it first in the admission transaction (the pool lock comes before quota and balance
    locks), then `job_admit(placement_reason=decision.reason)` in the same transaction.
    Raises CapacityUnavailable if a concurrent admission took the GPUs meanwhile.

    `pool_locked=True` says the caller already holds the pool lock in this transaction,
    `decision.pool` was read under it, and any error here rolls the caller's whole
    transaction back (the admission pass): the pool is then not locked and read again, and
    no savepoint is taken. The capacity check itself is the same.
    """
    with transaction.atomic(savepoint=not pool_locked):
        if pool_locked:
            pool = decision.pool
        else:
            # NO KEY UPDATE: still serializes admissions and bookings on the pool, but does not
            # block billing rows that merely reference the pool (FK key-share) while they hold a
            # balance lock, which would deadlock against pool → balance.
            pool = Pool.objects.select_for_update(no_key=True).get(pk=decision.pool.pk)
        Placement.objects.filter(job=job).delete()  # a requeued job is placed afresh
        usage = selectors.pools_usage([pool], timezone.now())[pool.pk]
        if decision.booking is not None:
            room = usage.unused_in_booking(decision.booking.pk)
        else:
            room = usage.free
        if pool.status != Pool.Status.ACTIVE or room < job.gpu_count:
            raise CapacityUnavailable(
                f"Pool {pool.public_id} no longer has {job.gpu_count} free GPUs "
                f"(free now: {room}); the job stays queued.",
                param="gpu_count",
            )
        return Placement.objects.create(
            job=job,
            pool=pool,
            booking=decision.booking,
            gpu_count=job.gpu_count,
            price_per_gpu_hour=decision.price_per_gpu_hour,
            reason=decision.reason,
        )
