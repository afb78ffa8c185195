"""Admission batches: one short transaction locks the batch's pools, then its organizations'
quota rows, then their balance rows (each set in id order), re-checks every admission on
fresh numbers and writes them all through capacity, billing and finetuning, in a constant
number of statements whatever the batch's size (REFERENCE §5.6).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

from django.db import IntegrityError, transaction
from django.utils import timezone

from marketplace.capacity.models import Booking, Pool
from marketplace.capacity.placement import PlacementDecision
from marketplace.capacity.services import CapacityUnavailable, placements_commit
from marketplace.errors import InsufficientFunds, InvalidTransition, NotFound
from marketplace.finetuning.models import FineTuningJob, JobStatus
from marketplace.quotas.decide import Admit, Decider, PendingJob, Wait, grace, min_run
from marketplace.quotas.models import Allocation, OrganizationQuota
from marketplace.quotas.quota_book import QuotaBook
from marketplace.quotas.world import World, world_load


def org_quota_rows_ensure(org_ids: set[int]) -> None:
    """The org-quota row is the second lock of admission; it must exist to be locked."""
    if org_ids:
        OrganizationQuota.objects.bulk_create(
            [OrganizationQuota(organization_id=org_id) for org_id in org_ids],
            ignore_conflicts=True,
        )


@dataclass
class Admitted:
    pass


@dataclass
class Refused:
    wait: Wait
    funds: bool = False  # the balance refused the hold: waits for a top-up, not a retry


@dataclass
class Gone:  # cancelled, or admitted by a concurrent pass
    pass


Result = Admitted | Refused | Gone


@dataclass
class BatchContext:
    """What the pass already loaded and an admission may reuse: the GPU flavor catalogue
    and the plans (neither is serialized by the admission locks; see QuotaBook)."""

    world: World | None = None
    book: QuotaBook | None = None


def admit_batch(admits: list[Admit], context: BatchContext) -> dict[str, Result]:
    """Admit a batch in one short transaction; if one of them raced (its GPUs or the job
    taken meanwhile), admit each alone instead, to tell which."""
    try:
        return _admit_locked(admits, context)
    except OrganizationQuota.DoesNotExist:
        # The org-quota row is the second lock; the pass creates the missing ones first, so
        # this is an organization whose row was deleted meanwhile.
        org_quota_rows_ensure({admit.job.org_id for admit in admits})
        return admit_batch(admits, context)
    except (CapacityUnavailable, InvalidTransition, NotFound, IntegrityError) as error:
        if len(admits) > 1:
            results: dict[str, Result] = {}
            for admit in admits:
                results.update(admit_batch([admit], context))
            return results
        job_id = admits[0].job.id
        if isinstance(error, CapacityUnavailable):  # a new pass is asked for at once
            return {job_id: Refused(Wait(f"waiting: {error.message}", timezone.now()))}
        # Cancelled, or admitted first by a concurrent pass (one live allocation per job).
        return {job_id: Gone()}


def _admit_locked(admits: list[Admit], context: BatchContext) -> dict[str, Result]:
    """Lock pools → org quotas → org balances (each set in id order), re-check every admission
    with fresh numbers, hold funds, place, allocate and admit, in a constant number of
    statements whatever the batch's size.

    A job that no longer fits, or that its organization's balance cannot cover, is left
    out and the others go on; any other error leaves this block and rolls the whole batch
    back, so the services called inside take no savepoints of their own."""
    from marketplace.billing.services import HoldRequest, holds_place
    from marketplace.finetuning.services import jobs_admit_apply

    results: dict[str, Result] = {}
    org_ids = sorted({admit.job.org_id for admit in admits})
    with transaction.atomic():
        # 1. pools. NO KEY UPDATE: it serializes admissions and bookings on a pool without
        # blocking rows that only reference it (billing's FK key-share locks, taken while
        # it holds a balance lock).
        pools = {
            pool.pk: pool
            for pool in Pool.objects.select_for_update(no_key=True)
            .filter(pk__in={admit.pool.id for admit in admits})
            .order_by("pk")
        }
        org_quotas = list(  # 2. org quotas
            OrganizationQuota.objects.select_for_update(of=("self",))
            .filter(organization_id__in=org_ids)
            .order_by("organization_id")
        )
        if len(org_quotas) != len(org_ids):
            raise OrganizationQuota.DoesNotExist
        fresh, rows = _admit_recheck(admits, context, org_quotas, pools, results)
        bookings = Booking.objects.in_bulk(
            {admit.booking_id for admit in fresh if admit.booking_id is not None}
        )
        holds = holds_place(  # 3. org balances (locked inside billing)
            [
                HoldRequest(
                    job=rows[admit.job.id],
                    pool=pools[admit.pool.id],
                    max_duration_seconds=int(admit.quota.max_job_hours * 3600),
                    booking=bookings.get(admit.booking_id) if admit.booking_id else None,
                )
                for admit in fresh
            ]
        )
        funded: list[Admit] = []
        for admit in fresh:
            hold = holds[admit.job.id]
            if isinstance(hold, InsufficientFunds):
                results[admit.job.id] = Refused(Wait(_funds_reason(hold), None), funds=True)
            else:
                funded.append(admit)
        placements_commit(
            [(rows[admit.job.id], _placement_decision(admit, pools, bookings)) for admit in funded]
        )
        Allocation.objects.bulk_create(_allocation(admit, rows[admit.job.id]) for admit in funded)
        if funded:
            jobs_admit_apply({admit.job.id: admit.placement_reason for admit in funded})
    results.update({admit.job.id: Admitted() for admit in funded})
    return results


def _funds_reason(error: InsufficientFunds) -> str:
    details = error.details if isinstance(error.details, dict) else {}
    if "needed" not in details or "available" not in details:
        return f"waiting: not enough funds: {error.message}"
    return (
        f"waiting: not enough funds: this job needs €{details['needed']} on hold for its "
        f"longest run and your organization has €{details['available']} available; "
        "Top up the prepaid balance (portal: Usage → Add credit), or resubmit with fewer GPUs "
        "or a shorter maximum duration"
    )


def _admit_recheck(
    admits: list[Admit],
    context: BatchContext,
    org_quotas: list[OrganizationQuota],
    pools: dict[int, Pool],
    results: dict[str, Result],
) -> tuple[list[Admit], dict[str, FineTuningJob]]:
    """Decide again, in the pass's order and each on the pool the pass chose, on numbers
    read under the locks (`org_quotas`: the organizations' rows, as just locked). Jobs no
    longer queued or no longer fitting go to `results`.

    Returns the fresh decisions, and the job rows (with their organization) they were made on."""
    rows = {
        row.pk: row
        for row in FineTuningJob.objects.select_related("organization").filter(
            pk__in=[admit.job.id for admit in admits], status=JobStatus.QUEUED
        )
    }
    world = world_load(
        now=timezone.now(),
        pool_ids=list(pools),
        org_ids=[row.organization_id for row in org_quotas],
        flavors_of=context.world,
    )
    book = QuotaBook(
        org_ids=[row.organization_id for row in org_quotas],
        plans_of=context.book,
        org_quota_rows=org_quotas,
    )
    decider = Decider(world, book, min_run=min_run(), grace=grace())
    fresh: list[Admit] = []
    for admit in admits:
        row = rows.get(admit.job.id)
        if row is None:
            results[admit.job.id] = Gone()  # cancelled, or admitted by a concurrent pass
            continue
        job = PendingJob(
            id=row.pk,
            org_id=row.organization_id,
            flavor_slug=row.gpu_flavor,
            gpus=max(row.gpu_count, 1),
            priority=row.priority,
            created_at=admit.job.created_at,
            residency=row.residency or {},
            attempt_count=row.attempt_count,
        )
        outcome = decider.decide_on_flavor(
            job, world.flavors[admit.flavor.id], pool_id=admit.pool.id
        )
        if isinstance(outcome, Admit):
            decider.apply(outcome)  # the next job of the batch sees it
            fresh.append(outcome)
        else:
            results[admit.job.id] = Refused(outcome)
    return fresh, rows


def _placement_decision(
    admit: Admit, pools: dict[int, Pool], bookings: dict[int, Booking]
) -> PlacementDecision:
    pool = pools[admit.pool.id]
    return PlacementDecision(
        pool=pool,
        booking=bookings[admit.booking_id] if admit.booking_id else None,
        gpu_count=admit.job.gpus,
        price_per_gpu_hour=pool.price_per_gpu_hour,
        reliability=None,
        reason=admit.placement_reason,
    )


def _allocation(admit: Admit, job: FineTuningJob) -> Allocation:
    now = timezone.now()
    return Allocation(
        job_id=job.pk,
        attempt_number=job.attempt_count + 1,
        organization_id=job.organization_id,
        flavor_id=admit.flavor.id,
        pool_id=admit.pool.id,
        booking_id=admit.booking_id,
        gpus=admit.job.gpus,
        kind=admit.kind,
        priority=job.priority,
        reserved_gpu_hours=admit.reserve_hours,
        max_gpus_at_admission=admit.quota.max_gpus,
        guaranteed_gpus_at_admission=admit.quota.guaranteed_gpus,
        admitted_at=now,
        expected_end=now + timedelta(hours=float(admit.quota.max_job_hours)),
    )
