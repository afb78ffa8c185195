"""The admission pass: load the queue, quotas, usage and capacity in a constant number of
queries, decide in memory in fair-share order, then apply each admission in its own short
transaction that locks pool → org quota → org balance and re-checks with fresh numbers.

Every job left waiting gets a pending reason and an estimated start (one bulk conditional
UPDATE); borrowed work that stands between an entitled job and its GPUs is preempted.
"""

from __future__ import annotations

import gc
import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from django.conf import settings
from django.db import IntegrityError, connection, transaction
from django.utils import timezone

from marketplace.capacity.models import Booking, Pool
from marketplace.capacity.placement import PlacementDecision
from marketplace.capacity.services import CapacityUnavailable, placement_commit
from marketplace.errors import InsufficientFunds, InvalidTransition, NotFound
from marketplace.finetuning.models import FineTuningJob, JobStatus
from marketplace.quotas.decide import Admit, Decider, PendingJob, Wait, grace, min_run
from marketplace.quotas.models import Allocation, OrganizationQuota
from marketplace.quotas.quota_book import QuotaBook, default_max_job_hours
from marketplace.quotas.world import LiveAllocation, World, pending_jobs_load, world_load

logger = logging.getLogger("partage.quotas")


def max_per_pass() -> int:
    return int(settings.PARTAGE_ADMISSIONS_PER_PASS)


@dataclass
class PassReport:
    admitted: list[str] = field(default_factory=list)
    waiting: int = 0
    preempted: list[str] = field(default_factory=list)
    refused_on_recheck: int = 0
    reasons_updated: int = 0
    seconds: dict[str, float] = field(default_factory=dict)  # per phase, for logs and benchmarks


def admission_pass(*, limit: int | None = None) -> list[str]:
    """Admit what fits; explain every wait. Returns the ids of the admitted jobs."""
    return admission_pass_run(limit=limit).admitted


def admission_pass_run(*, limit: int | None = None, now: datetime | None = None) -> PassReport:
    with _cyclic_gc_paused():
        return _pass_run(limit=limit, now=now)


@contextmanager
def _cyclic_gc_paused() -> Iterator[None]:
    """The pass builds many small objects that all live until it ends; the cyclic collector
    would rescan them again and again (a third of the decide time at 100,000 jobs).
    Reference counting still frees what the pass drops."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def _pass_run(*, limit: int | None, now: datetime | None) -> PassReport:
    now = now or timezone.now()
    limit = limit or max_per_pass()
    report = PassReport()
    clock = _PhaseClock(report.seconds)
    pending = pending_jobs_load()
    if not pending:
        return report
    world = world_load(now=now, with_reliability=True)  # one query, for placement's order
    if not world.pools:
        return _admit_without_pools(pending, limit, report)
    book = QuotaBook()
    decider = Decider(world, book, min_run=min_run(), grace=grace())
    # The org-quota row is the second lock of admission: create the missing ones at once
    # (usually none), not one by one inside the admissions.
    _org_quota_rows_ensure({job.org_id for job in pending} - set(book.org_quotas))
    clock.lap("load")
    waits: dict[str, Wait] = {}
    victims: list[tuple[LiveAllocation, PendingJob]] = []
    unfunded: dict[int, tuple[Decimal, Wait]] = {}  # org → smallest refused cost, and why
    retry = False
    for job in decider.order(pending):
        outcome = decider.decide(job)
        if not isinstance(outcome, Admit):
            waits[job.id] = outcome
            victims.extend((victim, job) for victim in outcome.preempt)
            continue
        if len(report.admitted) >= limit:
            waits[job.id] = Wait("waiting: admitted in the next admission pass", now)
            retry = True
            continue
        refused = unfunded.get(job.org_id)
        if refused is not None and _worst_cost(outcome) >= refused[0]:
            waits[job.id] = refused[1]  # costs at least as much as what the balance refused
            continue
        # Admit now, in its own short transaction, so that a job refused on re-check (funds,
        # a race) takes nothing from the jobs behind it in this pass.
        with clock.timing("admit"):
            result = _admit_one(outcome, _PassContext(world, book))
        if isinstance(result, _Admitted):
            report.admitted.append(job.id)
            decider.apply(outcome)
        elif isinstance(result, _Refused):
            report.refused_on_recheck += 1
            waits[job.id] = result.wait
            if result.funds:
                unfunded[job.org_id] = (_worst_cost(outcome), result.wait)
            else:
                retry = True  # numbers moved under us: decide again soon
    clock.lap("decide", exclude="admit")
    with clock.timing("admit"):
        for victim, beneficiary in victims:
            if _preempt(victim, beneficiary):
                report.preempted.append(victim.job_id)
    report.waiting = len(waits)
    report.reasons_updated = _pending_reasons_write(pending, waits)
    clock.lap("explain")
    if retry:
        transaction.on_commit(_enqueue_admission)
    logger.info(
        "admission pass: %d admitted, %d waiting, %d preempted",
        len(report.admitted),
        report.waiting,
        len(report.preempted),
        extra={"seconds": report.seconds},
    )
    return report


class _PhaseClock:
    """Seconds per phase of a pass; `timing` blocks are counted apart from the enclosing lap."""

    def __init__(self, into: dict[str, float]) -> None:
        self.into, self.last = into, time.perf_counter()

    def lap(self, phase: str, *, exclude: str = "") -> None:
        now = time.perf_counter()
        self.into[phase] = now - self.last - (self.into.get(exclude, 0.0) if exclude else 0.0)
        self.last = now

    @contextmanager
    def timing(self, phase: str) -> Iterator[None]:
        started = time.perf_counter()
        try:
            yield
        finally:
            self.into[phase] = self.into.get(phase, 0.0) + time.perf_counter() - started


def _worst_cost(admit: Admit) -> Decimal:
    """What the job may cost at most (before VAT), to compare jobs of one organization."""
    return admit.reserve_hours * admit.pool.price


def _enqueue_admission() -> None:
    from workers import tasks

    tasks.admission_pass.delay()


def _org_quota_rows_ensure(org_ids: set[int]) -> None:
    """The org-quota row is the second lock of admission; it must exist to be locked."""
    if org_ids:
        OrganizationQuota.objects.bulk_create(
            [OrganizationQuota(organization_id=org_id) for org_id in org_ids],
            ignore_conflicts=True,
        )


class _NotNow(Exception):
    def __init__(self, wait: Wait) -> None:
        super().__init__(wait.reason)
        self.wait = wait


@dataclass
class _Admitted:
    pass


@dataclass
class _Refused:
    wait: Wait
    funds: bool = False  # the balance refused the hold: waits for a top-up, not a retry


@dataclass
class _Gone:  # cancelled, or admitted by a concurrent pass
    pass


@dataclass
class _PassContext:
    """What the pass already loaded and an admission may reuse: the GPU flavor catalogue
    and the plans (neither is serialized by the admission locks; see QuotaBook)."""

    world: World | None = None
    book: QuotaBook | None = None


def _admit_one(admit: Admit, context: _PassContext | None = None) -> _Admitted | _Refused | _Gone:
    """One short transaction: lock, re-check with fresh numbers, hold funds, allocate, admit."""
    context = context or _PassContext()
    try:
        return _admit_locked(admit, context)
    except OrganizationQuota.DoesNotExist:
        # The org-quota row is the second lock; an organization's first admission creates it.
        _org_quota_rows_ensure({admit.job.org_id})
        return _admit_locked(admit, context)


def _admit_locked(admit: Admit, context: _PassContext) -> _Admitted | _Refused | _Gone:
    """Every error below leaves this block and rolls the whole admission back, so the
    services called inside take no savepoints of their own (savepoint=False, pool_locked)."""
    job_id = admit.job.id
    try:
        with transaction.atomic():
            # 1. pool. NO KEY UPDATE: it serializes admissions and bookings on the pool without
            # blocking rows that only reference it (billing's FK key-share locks, taken while
            # it holds a balance lock).
            pool = Pool.objects.select_for_update(no_key=True).get(pk=admit.pool.id)
            org_quota = OrganizationQuota.objects.select_for_update(of=("self",)).get(
                organization_id=admit.job.org_id
            )  # 2. org quota
            fresh, job = _admit_recheck(admit, context, org_quota)
            placement = placement_commit(
                job=job, decision=_placement_decision(fresh, pool), pool_locked=True
            )
            from marketplace.billing.services import hold_place

            hold_place(  # 3. org balance (locked inside billing)
                job=job,
                pool=pool,
                max_duration_seconds=int(fresh.quota.max_job_hours * 3600),
                placement=placement,
                savepoint=False,
            )
            _allocation_create(fresh, job)
            from marketplace.finetuning.services import job_admit_apply

            job_admit_apply(job_id=job_id, pool_id=pool.pk, placement_reason=fresh.placement_reason)
    except _NotNow as e:
        return _Refused(e.wait)
    except CapacityUnavailable as e:
        return _Refused(Wait(f"waiting: {e.message}", None))  # the next pass, due now, tells
    except InsufficientFunds as e:
        return _Refused(Wait(_funds_reason(e), None), funds=True)
    except (InvalidTransition, NotFound):
        return _Gone()
    except IntegrityError:  # a concurrent pass admitted this job first (one live allocation)
        return _Gone()
    return _Admitted()


def _funds_reason(error: InsufficientFunds) -> str:
    details = error.details if isinstance(error.details, dict) else {}
    if "needed" not in details or "available" not in details:
        return f"waiting: not enough funds: {error.message}"
    return (
        f"waiting: not enough funds: this job needs €{details['needed']} on hold for its "
        f"longest run and your organization has €{details['available']} available; "
        "Top up the prepaid balance (or ask Partage staff), or resubmit with fewer GPUs "
        "or a shorter maximum duration"
    )


def _admit_recheck(
    admit: Admit, context: _PassContext | None = None, org_quota: OrganizationQuota | None = None
) -> tuple[Admit, FineTuningJob]:
    """Decide again for this pool and organization on numbers read under the locks
    (`org_quota`: the organization's row, as just locked).

    Returns the fresh decision and the job row (with its organization) it was made on."""
    now = timezone.now()
    context = context or _PassContext()
    row = (
        FineTuningJob.objects.select_related("organization")
        .filter(pk=admit.job.id, status=JobStatus.QUEUED)
        .first()
    )
    if row is None:
        raise InvalidTransition(f"Job {admit.job.id} is no longer queued.")
    job = PendingJob(
        id=admit.job.id,
        org_id=admit.job.org_id,
        flavor_slug=row.gpu_flavor,
        gpus=max(row.gpu_count, 1),
        priority=row.priority,
        created_at=admit.job.created_at,
        residency=row.residency or {},
        attempt_count=row.attempt_count,
    )
    world = world_load(
        now=now, pool_ids=[admit.pool.id], org_ids=[job.org_id], flavors_of=context.world
    )
    book = QuotaBook(
        org_ids=[job.org_id],
        plans_of=context.book,
        org_quota_rows=None if org_quota is None else [org_quota],
    )
    decider = Decider(world, book, min_run=min_run(), grace=grace())
    flavor = world.flavors[admit.flavor.id]
    outcome = decider.decide_on_flavor(job, flavor)
    if not isinstance(outcome, Admit):
        raise _NotNow(outcome)
    return outcome, row


def _placement_decision(admit: Admit, pool: Pool) -> PlacementDecision:
    booking = Booking.objects.get(pk=admit.booking_id) if admit.booking_id else None
    return PlacementDecision(
        pool=pool,
        booking=booking,
        gpu_count=admit.job.gpus,
        price_per_gpu_hour=pool.price_per_gpu_hour,
        reliability=None,
        reason=admit.placement_reason,
    )


def _allocation_create(admit: Admit, job: FineTuningJob) -> Allocation:
    now = timezone.now()
    allocation = Allocation.objects.create(
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
    return allocation


def _admit_without_pools(pending: list[PendingJob], limit: int, report: PassReport) -> PassReport:
    """Development mode (no pool configured, local executor): admit in priority then age order.

    Allocations are still written, so release and usage work the same way.
    """
    from marketplace.finetuning.services import job_admit

    hours = default_max_job_hours()
    for job in sorted(pending, key=lambda j: (-j.priority, j.created_at))[:limit]:
        try:
            with transaction.atomic():
                now = timezone.now()
                Allocation.objects.create(
                    job_id=job.id,
                    attempt_number=job.attempt_count + 1,
                    organization_id=job.org_id,
                    gpus=job.gpus,
                    kind=Allocation.Kind.GUARANTEED,
                    priority=job.priority,
                    reserved_gpu_hours=Decimal(job.gpus) * hours,
                    admitted_at=now,
                    expected_end=now + timedelta(hours=float(hours)),
                )
                job_admit(job_id=job.id, placement_reason="no pool configured: local executor")
        except (InvalidTransition, NotFound, IntegrityError):
            continue  # gone, or a concurrent pass admitted it first (one live allocation)
        report.admitted.append(job.id)
    return report


def _preempt(victim: LiveAllocation, beneficiary: PendingJob) -> bool:
    """Mark the allocation (once) and ask finetuning to stop the job with a checkpoint."""
    from marketplace.finetuning.services import job_preempt

    with transaction.atomic():
        marked = Allocation.objects.filter(
            pk=victim.id,
            released_at__isnull=True,
            preempt_requested_at__isnull=True,
            kind=Allocation.Kind.BORROWED,
        ).update(preempt_requested_at=timezone.now())
        if not marked:
            return False
        try:
            job_preempt(
                job_id=victim.job_id,
                reason="its GPUs were borrowed above its organization's guarantee and "
                "are needed by work entitled to them",
            )
        except InvalidTransition:
            # It is no longer running (finished, cancelled…): its GPUs come back anyway.
            Allocation.objects.filter(pk=victim.id).update(preempt_requested_at=None)
            return False
    logger.info(
        "preempted %s for %s", victim.job_id, beneficiary.id, extra={"job_id": victim.job_id}
    )
    return True


def _pending_reasons_write(pending: list[PendingJob], waits: dict[str, Wait]) -> int:
    """Write changed reasons/estimates with one conditional UPDATE (still queued only)."""
    changes: list[tuple[str, str, Any]] = []
    for job in pending:
        wait = waits.get(job.id)
        if wait is None:
            continue
        estimate = (
            wait.estimated_start.replace(second=0, microsecond=0) if wait.estimated_start else None
        )
        if wait.reason != job.pending_reason or estimate != job.estimated_start:
            changes.append((job.id, wait.reason, estimate))
    if not changes:
        return 0
    if connection.vendor == "postgresql":
        return _pending_reasons_write_pg(changes)
    updated = 0
    for job_id, reason, estimate in changes:
        updated += FineTuningJob.objects.filter(pk=job_id, status=JobStatus.QUEUED).update(
            pending_reason=reason, estimated_start=estimate
        )
    return updated


def _pending_reasons_write_pg(changes: list[tuple[str, str, Any]]) -> int:
    """One statement. Rows locked by someone else (an admission, another pass writing the
    same reasons) are skipped, not waited for: two passes updating thousands of rows in
    different orders would deadlock, and the next pass writes what was skipped."""
    table = FineTuningJob._meta.db_table
    ids, reasons, estimates = (list(column) for column in zip(*changes, strict=True))
    with connection.cursor() as cursor:
        cursor.execute(
            f"""
            WITH change AS (
                SELECT * FROM unnest(%s::text[], %s::text[], %s::timestamptz[])
                    AS change(id, reason, estimate)
            ), free AS (
                SELECT job.id FROM {table} AS job JOIN change ON change.id = job.id
                 WHERE job.status = %s
                   FOR NO KEY UPDATE OF job SKIP LOCKED
            )
            UPDATE {table} AS job
               SET pending_reason = change.reason, estimated_start = change.estimate
              FROM change JOIN free ON free.id = change.id
             WHERE job.id = change.id
            """,  # noqa: S608 - the table name is ours; values are parameters
            [ids, reasons, estimates, JobStatus.QUEUED],
        )
        return cursor.rowcount
