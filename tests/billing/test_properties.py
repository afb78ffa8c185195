"""Property test: random life cycles of jobs, through the real job services and billing hooks.

Hypothesis generates sequences of top-ups, admissions, starts, training progress (with the
max_cost budget stop), clock advances, preemptions, failures, lost attempts and their retries,
pauses, resumes, cancellations, successes, duplicate deliveries and invoice runs, and GPU
bookings: booked (paid when confirmed, refused without funds), used by jobs placed on them (the
GPU-seconds inside the booking not charged again), and cancelled (refunded as quoted). After every
sequence (all jobs brought to an end and everything invoiced) REFERENCE §6 must hold, each job's
invoice lines must add up to exactly what the ledger charged it, duplicate deliveries must have
written nothing, and no finalized invoice may have changed.
"""

from __future__ import annotations

import contextlib
import os
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
import time_machine
from django.db import transaction
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from marketplace.accounts.services import organization_create
from marketplace.billing import services as billing
from marketplace.billing.models import (
    BookingCharge,
    Charge,
    Invoice,
    InvoiceLine,
    JobPricing,
    JournalEntry,
    LedgerLine,
    UsageRecord,
)
from marketplace.capacity import services as capacity
from marketplace.capacity.models import Booking
from marketplace.capacity.services.common import CapacityUnavailable
from marketplace.errors import InsufficientFunds, InvalidTransition
from marketplace.finetuning import services as jobs
from marketplace.finetuning.models import FineTuningJob, JobAttempt
from marketplace.finetuning.models import JobStatus as S
from tests.billing.conftest import (
    admit,
    admit_on_booking,
    assert_invariants,
    fail,
    preempt,
    succeed,
    training_file,
)
from tests.capacity import factories
from workers.executors.base import EXIT_PREEMPTED, EXIT_USER_ERROR, Phase

pytestmark = pytest.mark.django_db

START = datetime(2026, 10, 28, 8, 0, tzinfo=UTC)
JOBS = 3
MAX_COST = Decimal("0.30")

job_index = st.integers(0, JOBS - 1)
operation = st.one_of(
    st.tuples(st.just("topup"), st.integers(0, 1), st.sampled_from(["5.00", "20.00", "120.00"])),
    st.tuples(st.just("admit"), job_index, st.integers(0, 1), st.sampled_from([600, 1800, 7200])),
    st.tuples(st.just("start"), job_index, st.booleans()),
    st.tuples(st.just("run"), job_index, st.integers(0, 1), st.integers(1, 1800)),
    st.tuples(st.just("progress"), job_index, st.integers(1, 900)),
    st.tuples(st.just("retry"), job_index, st.integers(0, 1), st.integers(1, 5)),
    st.tuples(st.just("advance"), st.integers(1, 4000)),
    st.tuples(st.just("preempt"), job_index),
    st.tuples(st.just("fail"), job_index, st.sampled_from([1, EXIT_USER_ERROR])),
    st.tuples(st.just("succeed"), job_index),
    st.tuples(st.just("pause"), job_index),
    st.tuples(st.just("resume"), job_index),
    st.tuples(st.just("cancel"), job_index),
    st.tuples(st.just("replay"), job_index),
    st.tuples(
        st.just("invoice"),
    ),
    st.tuples(
        st.just("book"),
        st.integers(0, 1),  # org
        st.integers(0, 1),  # pool
        st.sampled_from([0, 1, 30, 72]),  # hours until it starts (no, half, full refund)
        st.sampled_from([1, 3]),  # hours long
    ),
    st.tuples(st.just("admit_booked"), job_index),
    st.tuples(st.just("cancel_booking"), st.integers(0, 3)),
)


class World:
    def __init__(self, clock: Any) -> None:
        self.clock = clock
        eu = organization_create(name="Startup FR", slug="startup-fr", country="FR")
        rc = organization_create(
            name="Startup DE", slug="startup-de", country="DE", vat_id="DE123456789"
        )
        self.orgs = [eu, rc]
        provider = factories.provider("prov-x")
        other = factories.provider("prov-y", country="DE")
        self.pools = [
            factories.pool(provider, price="2.4990", gpus=16),
            factories.pool(other, price="0.7300", gpus=16),
        ]
        files = [training_file(org) for org in self.orgs]
        self.jobs = [
            jobs.job_create(
                organization=self.orgs[i % 2],
                model="partage/tiny-llama",
                training_file=files[i % 2],
                gpu_count=1 + i,
                # Job 0 has a budget: the trainer is told to finish when it is reached.
                max_cost=MAX_COST if i == 0 else None,
            )
            for i in range(JOBS)
        ]
        self.finalized: dict[int, tuple[Any, ...]] = {}
        self.topups = 0
        for org in self.orgs:
            self.topup(org=self.orgs.index(org), amount="120.00")
        # A booking each, ahead: cancel_booking then refunds all (72 h) or half (30 h) of it.
        self.book(org=0, pool=0, delay_hours=72, hours=3)
        self.book(org=1, pool=1, delay_hours=30, hours=1)
        self.invoiced_until = datetime(2026, 10, 1, tzinfo=UTC)

    def job(self, index: int) -> FineTuningJob:
        return FineTuningJob.objects.get(pk=self.jobs[index].pk)

    def running_attempt(self, job: FineTuningJob) -> JobAttempt | None:
        return JobAttempt.objects.filter(job=job, ended_at__isnull=True).order_by("-number").first()

    def training(self, index: int) -> tuple[FineTuningJob, JobAttempt | None]:
        """The job and its training attempt, admitting and starting it first if it waits.

        So that an event aimed at a running job (progress, preemption, failure, success) usually
        meets one, instead of needing hypothesis to find the steps that lead there.
        """
        if self.job(index).status == S.QUEUED:
            self.admit(index, index % 2, 1800)
        if self.job(index).status in {S.ADMITTED, S.STARTING}:
            self.start(index, True)
            self.advance(60)
        job = self.job(index)
        return job, self.running_attempt(job)

    # ------------------------------------------------------------------ operations

    def topup(self, org: int, amount: str) -> None:
        self.topups += 1
        billing.topup_record(
            organization=self.orgs[org], amount=Decimal(amount), reference=f"r{self.topups}"
        )

    def admit(self, index: int, pool: int, max_duration: int) -> None:
        job = self.job(index)
        if job.status == S.QUEUED:
            with contextlib.suppress(InsufficientFunds):
                admit(job, self.pools[pool], max_duration=max_duration)

    def book(self, org: int, pool: int, delay_hours: int, hours: int) -> None:
        begin = datetime.now(UTC) + timedelta(hours=delay_hours)
        with contextlib.suppress(InsufficientFunds, CapacityUnavailable):
            capacity.booking_create(
                organization=self.orgs[org],
                flavor=self.pools[pool].flavor.slug,
                gpu_count=JOBS,  # room for any one job
                start=begin,
                end=begin + timedelta(hours=hours),
                pool_id=self.pools[pool].public_id,
            )

    def admit_booked(self, index: int) -> None:
        """The admission pass placing a queued job on its org's booking running now (booked first
        if there is none)."""
        job = self.job(index)
        if job.status != S.QUEUED:
            return
        now = datetime.now(UTC)
        running_now = Booking.objects.filter(
            organization_id=job.organization_id,
            status=Booking.Status.CONFIRMED,
            start__lte=now,
            end__gt=now,
        )
        if not running_now.exists():  # book one starting now (1 h), then admit on it
            self.book(self.orgs.index(job.organization), index % 2, 0, 1)
        booking = running_now.first()
        if booking is not None:
            with contextlib.suppress(InsufficientFunds, CapacityUnavailable):
                admit_on_booking(job, booking, max_duration=1800)

    def cancel_booking(self, index: int) -> None:
        now = datetime.now(UTC)
        bookings = list(
            Booking.objects.filter(status=Booking.Status.CONFIRMED, start__gt=now).order_by("pk")
        )
        if bookings:
            booking = bookings[index % len(bookings)]
            capacity.booking_cancel(organization=booking.organization, booking_id=booking.public_id)

    def start(self, index: int, train: bool) -> None:
        job = self.job(index)
        if job.status == S.ADMITTED:
            attempt = jobs.attempt_for_dispatch(job_id=job.id)
            assert attempt is not None
            if train:
                jobs.attempt_training_started(attempt=attempt)
        elif job.status == S.STARTING and train:
            attempt = self.running_attempt(job)
            assert attempt is not None
            jobs.attempt_training_started(attempt=attempt)

    def run(self, index: int, pool: int, seconds: int) -> None:
        """Admit, start and train for a while, in one step."""
        self.admit(index, pool, 1800)
        self.start(index, True)
        self.advance(seconds)

    def advance(self, seconds: int) -> None:
        """Time passes; the executor's deadline (the admitted maximum duration) caps attempts."""
        now = datetime.now(UTC)
        limit = seconds
        for attempt in JobAttempt.objects.filter(
            ended_at__isnull=True, training_started_at__isnull=False
        ):
            allowed = JobPricing.objects.get(job_id=attempt.job_id).max_duration_seconds
            used = (now - attempt.training_started_at).total_seconds()
            limit = min(limit, int(allowed - used))
        if limit > 0:
            self.clock.shift(timedelta(seconds=limit, milliseconds=137))

    def progress(self, index: int, seconds: int) -> None:
        """The trainer reports a step; the answer may tell it to finish now (max_cost reached)."""
        job, attempt = self.training(index)
        if attempt is None or job.status != S.RUNNING:
            return
        self.advance(seconds)
        flags = jobs.trainer_events_record(
            job_id=job.id,
            attempt_number=attempt.number,
            events=[{"event": "progress", "step": seconds, "train_loss": 1.0}],
        )
        cost = billing.job_cost_so_far(job=job)
        assert flags["finish_now"] == (job.max_cost is not None and cost >= job.max_cost)
        if flags["finish_now"]:
            # The trainer finishes its step, delivers the adapter and exits 0.
            succeed(job, attempt)
            job = self.job(index)
            assert job.status == S.SUCCEEDED and job.result_file_id is not None
            event("budget stop")

    def retry(self, index: int, pool: int, times: int) -> None:
        """The attempt is lost (node gone); the platform requeues it and runs it again.

        After too many lost attempts the job fails as a provider error (waived).
        """
        for _ in range(times):
            job, attempt = self.training(index)
            if attempt is None or job.status not in {S.STARTING, S.RUNNING}:
                return
            self.advance(120)
            jobs.attempt_ended(attempt_id=attempt.pk, phase=Phase.MISSING, reason="node lost")
            if self.job(index).status == S.QUEUED:
                self.admit(index, pool, 1800)
                self.start(index, True)

    def preempt(self, index: int) -> None:
        job, attempt = self.training(index)
        if attempt is not None and job.status in {S.STARTING, S.RUNNING}:
            preempt(attempt)

    def fail(self, index: int, exit_code: int) -> None:
        job, attempt = self.training(index)
        if attempt is not None and job.status in {S.STARTING, S.RUNNING}:
            fail(attempt, exit_code=exit_code)

    def succeed(self, index: int) -> None:
        job, attempt = self.training(index)
        if attempt is not None and job.status == S.RUNNING:
            succeed(job, attempt)

    def pause(self, index: int) -> None:
        job = self.job(index)
        if job.status in {S.QUEUED, S.ADMITTED, S.STARTING, S.RUNNING}:
            jobs.job_pause(organization=job.organization, job_id=job.id)
            attempt = self.running_attempt(job)
            if attempt is not None:
                # The trainer writes its checkpoint and exits.
                jobs.attempt_ended(
                    attempt_id=attempt.pk, phase=Phase.FAILED, exit_code=EXIT_PREEMPTED
                )

    def resume(self, index: int) -> None:
        job = self.job(index)
        if job.status == S.PAUSED:
            jobs.job_resume(organization=job.organization, job_id=job.id)

    def cancel(self, index: int) -> None:
        job = self.job(index)
        if job.status in {S.QUEUED, S.PAUSED, S.STARTING, S.RUNNING}:
            jobs.job_cancel(organization=job.organization, job_id=job.id)
            attempt = self.running_attempt(job)
            if attempt is not None:
                jobs.attempt_ended(attempt_id=attempt.pk, phase=Phase.FAILED, exit_code=143)

    def replay(self, index: int) -> None:
        """Duplicate deliveries: the executor's end report, metering, settlement, a top-up.

        None of them may write anything.
        """
        before = ledger_counts()
        job = self.job(index)
        last = (
            JobAttempt.objects.filter(job=job, ended_at__isnull=False).order_by("-number").first()
        )
        if last is not None:
            jobs.attempt_ended(attempt_id=last.pk, phase=Phase.FAILED, exit_code=1)
            billing.attempt_meter(attempt=last)
        if job.status in {S.SUCCEEDED, S.FAILED, S.CANCELLED, S.PAUSED}:
            billing.job_settle(job=job)
        for booking in Booking.objects.all():  # booking charges and refunds, delivered again
            billing.booking_charge(booking=booking)
            if booking.status == Booking.Status.CANCELLED:
                billing.booking_refund(booking=booking, refund_amount=booking.refund_amount)
        if self.topups:
            billing.topup_record(organization=self.orgs[0], amount=Decimal("5.00"), reference="r1")
        assert ledger_counts() == before

    def invoice(self) -> None:
        """Month end: when nothing runs, jump to the next month and invoice the last one."""
        if JobAttempt.objects.filter(ended_at__isnull=True).exists():
            return
        now = datetime.now(UTC)
        start = datetime(now.year, now.month, 1, tzinfo=UTC)
        end = datetime(now.year + (now.month == 12), now.month % 12 + 1, 1, tzinfo=UTC)
        self.clock.move_to(end + timedelta(seconds=5))
        billing.invoices_finalize(period_start=start, period_end=end)
        for invoice in Invoice.objects.filter(status=Invoice.Status.FINALIZED):
            self.finalized.setdefault(invoice.pk, invoice_snapshot(invoice))

    def assert_finalized_invoices_unchanged(self) -> None:
        for pk, snapshot in self.finalized.items():
            assert invoice_snapshot(Invoice.objects.get(pk=pk)) == snapshot

    # ------------------------------------------------------------------ the end

    def wind_down(self) -> None:
        """Bring every job to an end the way the platform would, then invoice everything."""
        for index in range(JOBS):
            job = self.job(index)
            attempt = self.running_attempt(job)
            if job.status == S.RUNNING and attempt is not None:
                succeed(job, attempt)
            elif attempt is not None:
                fail(attempt, exit_code=1)
            job = self.job(index)
            if job.status in {S.QUEUED, S.PAUSED}:
                jobs.job_cancel(organization=job.organization, job_id=job.id)
            elif job.status == S.ADMITTED:
                jobs.job_pause(organization=job.organization, job_id=job.id)
        for _ in range(3):
            self.invoice()


def ledger_counts() -> tuple[int, ...]:
    models = (JournalEntry, LedgerLine, UsageRecord, Charge, BookingCharge)
    return tuple(model.objects.count() for model in models)


def invoice_snapshot(invoice: Invoice) -> tuple[Any, ...]:
    lines = tuple(invoice.lines.values_list("job_id", "billable_gpu_seconds", "amount", "vat"))
    return (invoice.number, invoice.subtotal, invoice.vat, invoice.total, lines)


def check_invoices_match_ledger() -> None:
    for booking in Booking.objects.all():
        charged = BookingCharge.objects.filter(booking=booking)
        lines = InvoiceLine.objects.filter(booking=booking, invoice__status="finalized")
        for field, line_field in (("net", "amount"), ("vat", "vat"), ("fee", "fee")):
            assert sum((getattr(c, field) for c in charged), Decimal(0)) == sum(
                (getattr(x, line_field) for x in lines), Decimal(0)
            )
    for job in FineTuningJob.objects.all():
        charged = Charge.objects.filter(job=job)
        lines = InvoiceLine.objects.filter(job=job, invoice__status="finalized")
        assert sum((c.net for c in charged), Decimal(0)) == sum(
            (x.amount for x in lines), Decimal(0)
        )
        assert sum((c.vat for c in charged), Decimal(0)) == sum((x.vat for x in lines), Decimal(0))
        assert sum((c.provider_amount for c in charged), Decimal(0)) == sum(
            (x.provider_amount for x in lines), Decimal(0)
        )


@settings(
    max_examples=int(os.environ.get("BILLING_EXAMPLES", "40")),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(steps=st.lists(operation, min_size=1, max_size=30))
def test_money_invariants_hold_for_any_life_cycle(steps: list[tuple[Any, ...]]) -> None:
    with transaction.atomic(), time_machine.travel(START, tick=False) as clock:
        world = World(clock)
        for step in steps:
            event(step[0])
            # A move the state machine refuses (e.g. resume of a running job) is fine.
            with contextlib.suppress(InvalidTransition):
                getattr(world, step[0])(*step[1:])
        assert_invariants()
        world.wind_down()
        for job in FineTuningJob.objects.exclude(failure_class=""):
            event(f"failure: {job.failure_class}")
        assert_invariants()
        if UsageRecord.objects.filter(covered_gpu_seconds__gt=0).exists():
            event("usage covered by a booking")
        if BookingCharge.objects.filter(kind="refund").exists():
            event("booking refunded")
        check_invoices_match_ledger()
        world.assert_finalized_invoices_unchanged()
        transaction.set_rollback(True)
