"""The admission pass: load the queue, quotas, usage and capacity in a constant number of
queries, decide in memory in fair-share order, then write the admissions in batches (see
`admit`: one short locked transaction and a constant number of statements per batch). An
admission refused on re-check makes the pass decide again, so it takes nothing from the jobs
behind it.

Every job left waiting gets a pending reason and an estimated start (one bulk conditional
UPDATE); borrowed work that stands between an entitled job and its GPUs is preempted.
"""

from __future__ import annotations

import gc
import json
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

from marketplace.errors import InvalidTransition, NotFound
from marketplace.finetuning.models import FineTuningJob, JobStatus
from marketplace.quotas.decide import Admit, Decider, PendingJob, Wait, grace, min_run
from marketplace.quotas.models import Allocation
from marketplace.quotas.quota_book import QuotaBook, default_max_job_hours
from marketplace.quotas.services.admit import (
    Admitted,
    BatchContext,
    Gone,
    Refused,
    admit_batch,
    org_quota_rows_ensure,
)
from marketplace.quotas.services.thresholds import quota_thresholds_record
from marketplace.quotas.world import LiveAllocation, World, pending_jobs_load, world_load

logger = logging.getLogger("partage.quotas")


def max_per_pass() -> int:
    return int(settings.PARTAGE_ADMISSIONS_PER_PASS)


def batch_size() -> int:
    """Admissions applied together in one transaction (it locks all their pools)."""
    return max(int(settings.PARTAGE_ADMISSION_BATCH), 1)


@dataclass
class PassReport:
    admitted: list[str] = field(default_factory=list)
    waiting: int = 0
    preempted: list[str] = field(default_factory=list)
    refused_on_recheck: int = 0
    batches: int = 0  # admission transactions
    rounds: int = 0  # decision rounds (another follows an admission refused on re-check)
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
    # The org-quota row is the second lock of admission: create the missing ones at once
    # (usually none), not one by one inside the admissions.
    org_quota_rows_ensure({job.org_id for job in pending} - set(book.org_quotas))
    clock.lap("load")
    unfunded: dict[int, _Unfunded] = {}  # org → smallest refused cost, and why
    queue = pending
    for round_number in range(1, MAX_ROUNDS + 1):
        decided = _Round(world, book, report, clock, unfunded, limit - len(report.admitted))
        decided.run(queue)
        report.rounds = round_number
        if not decided.refused or round_number == MAX_ROUNDS:
            break
        # An admission refused on re-check (funds, a race) had its GPUs and budget counted
        # for the jobs decided after it: decide again on fresh numbers, so that it takes
        # nothing from them (the refused org's jobs that cost as much are not tried again).
        done = set(report.admitted) | decided.gone
        queue = [job for job in queue if job.id not in done]
        world = world_load(now=now, with_reliability=True)
        book = QuotaBook()
    clock.lap("decide", exclude="admit")
    with clock.timing("admit"):
        for victim, beneficiary in decided.victims:
            if _preempt(victim, beneficiary):
                report.preempted.append(victim.job_id)
    report.waiting = len(decided.waits)
    report.reasons_updated = _pending_reasons_write(queue, decided.waits)
    clock.lap("explain")
    admitted = set(report.admitted)
    quota_thresholds_record(org_ids={job.org_id for job in pending if job.id in admitted}, now=now)
    clock.lap("thresholds")
    if decided.retry or decided.refused:
        transaction.on_commit(admission_pass_request)
    logger.info(
        "admission pass: %d admitted, %d waiting, %d preempted",
        len(report.admitted),
        report.waiting,
        len(report.preempted),
        extra={"seconds": report.seconds},
    )
    return report


@dataclass
class _Unfunded:
    """An organization's balance refused a hold in this pass: that job's worst cost (before
    VAT), the price it was computed at, and the wait its jobs that cost as much are given."""

    cost: Decimal
    price: Decimal
    wait: Wait


# A pass decides again after an admission was refused on re-check, at most this many times.
MAX_ROUNDS = 3


class _Round:
    """One decision round over the queue, in fair-share order. Each admission is counted at
    once, so that the jobs behind it see its GPUs taken, and written with its batch."""

    def __init__(
        self,
        world: World,
        book: QuotaBook,
        report: PassReport,
        clock: _PhaseClock,
        unfunded: dict[int, _Unfunded],
        limit: int,
    ) -> None:
        self.world, self.book, self.report, self.clock = world, book, report, clock
        self.unfunded, self.limit = unfunded, limit
        self.decider = Decider(world, book, min_run=min_run(), grace=grace())
        self.waits: dict[str, Wait] = {}
        self.victims: list[tuple[LiveAllocation, PendingJob]] = []
        self.batch: list[Admit] = []
        self.admitted = 0
        self.refused = 0  # admissions refused on re-check: their GPUs were counted as taken
        self.gone: set[str] = set()  # cancelled, or admitted by a concurrent pass
        self.retry = False  # jobs that could be admitted now wait for the next pass

    def run(self, queue: list[PendingJob]) -> None:
        now = self.world.now
        for job in self.decider.order(queue):
            outcome = self.decider.decide(job)
            if not isinstance(outcome, Admit):
                # A wait for GPUs or quota would end in a refusal for funds: say that instead
                # (and stop no one's work for it).
                unfunded = self._unfunded_wait(job, outcome)
                self.waits[job.id] = unfunded or outcome
                if unfunded is None:
                    self.victims.extend((victim, job) for victim in outcome.preempt)
                continue
            if self.admitted + len(self.batch) >= self.limit:
                self.waits[job.id] = Wait("waiting: admitted in the next admission pass", now)
                self.retry = True
                continue
            refused = self.unfunded.get(job.org_id)
            if refused is not None and _worst_cost(outcome) >= refused.cost:
                self.waits[job.id] = refused.wait  # costs at least what the balance refused
                continue
            self.decider.apply(outcome)
            self.batch.append(outcome)
            if len(self.batch) >= batch_size():
                self.flush()
        self.flush()

    def _unfunded_wait(self, job: PendingJob, wait: Wait) -> Wait | None:
        """The funds refusal of the job's organization, if the job would cost at least as much
        (priced as the refused one was) and waits only for GPUs or quota to free up."""
        refused = self.unfunded.get(job.org_id)
        flavor = self.world.flavor_by_slug.get(job.flavor_slug)
        if refused is None or flavor is None or wait.estimated_start is None:
            return None
        reserve = job.gpus * self.book.quota(job.org_id, flavor.id).max_job_hours
        return refused.wait if reserve * refused.price >= refused.cost else None

    def flush(self) -> None:
        """Write the batch in one short transaction; a refused admission waits."""
        if not self.batch:
            return
        with self.clock.timing("admit"):
            results = admit_batch(self.batch, BatchContext(self.world, self.book))
        self.report.batches += 1
        for admit in self.batch:
            result = results[admit.job.id]
            if isinstance(result, Admitted):
                self.report.admitted.append(admit.job.id)
                self.admitted += 1
                continue
            self.refused += 1
            if isinstance(result, Gone):
                self.gone.add(admit.job.id)
            elif isinstance(result, Refused):
                self.report.refused_on_recheck += 1
                self.waits[admit.job.id] = result.wait
                if result.funds:
                    self.unfunded[admit.job.org_id] = _Unfunded(
                        _worst_cost(admit), admit.pool.price, result.wait
                    )
        self.batch.clear()


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


ADMISSION_PENDING_KEY = "admission-pass-pending"


def admission_pass_request() -> None:
    """Ask for an admission pass; with a shared (Redis) cache, at most one waits in the queue.

    One pass admits every queued job, so a burst of creates or releases needs one, not one
    each: without this, 20 creates a second queued 20 passes a second, and dispatch waited
    behind them. The task clears the flag before it reads the queue; the timeout covers a
    lost message. Call it on commit.
    """
    from django.core.cache import cache

    from workers.celery import task_send

    if settings.REDIS_URL and not cache.add(ADMISSION_PENDING_KEY, 1, timeout=30):
        return  # a pass is queued and has not started: it will see this change
    task_send("partage.admission_pass")


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
    different orders would deadlock, and the next pass writes what was skipped. The rows are
    updated by the address they were locked at (a locked row cannot move before this
    statement updates it), which saves looking each one up again by id."""
    table = FineTuningJob._meta.db_table
    # One JSON document rather than three arrays: the driver quotes array items one by one
    # in Python (a third of this write's time at 10,000 rows); json.dumps does it in C.
    document = json.dumps(
        [
            {"id": job_id, "reason": reason, "estimate": estimate and estimate.isoformat()}
            for job_id, reason, estimate in changes
        ],
        separators=(",", ":"),
    )
    with connection.cursor() as cursor:
        cursor.execute(
            f"""
            WITH change AS (
                SELECT * FROM json_to_recordset(%s::json)
                    AS change(id text, reason text, estimate timestamptz)
            ), free AS (
                SELECT job.ctid AS tid, change.reason, change.estimate
                  FROM {table} AS job JOIN change ON change.id = job.id
                 WHERE job.status = %s
                   FOR NO KEY UPDATE OF job SKIP LOCKED
            )
            UPDATE {table} AS job
               SET pending_reason = free.reason, estimated_start = free.estimate
              FROM free
             WHERE job.ctid = free.tid
            """,  # noqa: S608 - the table name is ours; values are parameters
            [document, JobStatus.QUEUED],
        )
        return cursor.rowcount
