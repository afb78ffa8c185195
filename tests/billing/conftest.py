"""Billing test helpers: pools through capacity's real services, jobs through the real job
services, and a `Life` driver that moves a job through its life cycle with a frozen clock.

Money checks (`assert_invariants`) state REFERENCE §6 over the whole database.
"""

from __future__ import annotations

import io
import itertools
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
import time_machine

from marketplace.accounts.models import Organization
from marketplace.billing import services as billing
from marketplace.billing.models import (
    Account,
    BillingAccount,
    BookingCharge,
    Charge,
    Invoice,
    InvoiceLine,
    JournalEntry,
    LedgerLine,
    UsageRecord,
)
from marketplace.capacity.models import Booking, Pool
from marketplace.finetuning import services as jobs
from marketplace.finetuning.models import FineTuningJob, JobAttempt
from tests.capacity import factories
from tests.conftest import chat_lines, jsonl
from tests.fakes.adapter import adapter_archive
from workers.executors.base import EXIT_PREEMPTED, Phase

T0 = datetime(2026, 11, 3, 9, 0, tzinfo=UTC)


@pytest.fixture
def clock() -> Iterator[time_machine.Coordinates]:
    with time_machine.travel(T0, tick=False) as traveller:
        yield traveller


@pytest.fixture
def provider_org(db: None) -> Organization:
    return factories.provider("gpu-provider")


@pytest.fixture
def pool(provider_org: Organization) -> Pool:
    return factories.pool(provider_org, price="2.50", gpus=16)


def training_file(org: Organization) -> str:
    return jobs.file_create(
        organization=org, stream=io.BytesIO(jsonl(chat_lines(3))), filename="t.jsonl"
    ).id


def job_new(
    org: Organization, *, gpus: int = 1, max_cost: Decimal | None = None, file_id: str | None = None
) -> FineTuningJob:
    return jobs.job_create(
        organization=org,
        model="partage/tiny-llama",
        training_file=file_id or training_file(org),
        gpu_count=gpus,
        max_cost=max_cost,
    )


def admit(job: FineTuningJob, pool: Pool, *, max_duration: int = 3600) -> Decimal:
    """What the admission pass does: hold (inside the transaction), then queued → admitted."""
    from django.db import transaction

    from marketplace.capacity.models import Placement

    with transaction.atomic():
        # The admission pass places a requeued job afresh (placement_commit) before the hold;
        # this helper admits without a placement, so it drops the one of an earlier admission.
        Placement.objects.filter(job_id=job.id).delete()
        held = billing.hold_place(job=job, pool=pool, max_duration_seconds=max_duration)
        jobs.job_admit(job_id=job.id, pool_id=pool.pk, placement_reason="test")
    return held


def start(job: FineTuningJob) -> JobAttempt:
    attempt = jobs.attempt_for_dispatch(job_id=job.id)
    assert attempt is not None
    jobs.attempt_training_started(attempt=attempt)
    return attempt


def succeed(job: FineTuningJob, attempt: JobAttempt) -> None:
    jobs.adapter_store(
        job_id=job.id,
        attempt_number=attempt.number,
        archive=adapter_archive(),
        manifest={"tokens_trained": 10},
    )
    jobs.attempt_ended(attempt_id=attempt.pk, phase=Phase.SUCCEEDED, exit_code=0)


def preempt(attempt: JobAttempt) -> None:
    jobs.attempt_ended(
        attempt_id=attempt.pk,
        phase=Phase.DISRUPTED,
        exit_code=EXIT_PREEMPTED,
        reason="node drained",
    )


def fail(attempt: JobAttempt, *, exit_code: int = 1) -> None:
    jobs.attempt_ended(attempt_id=attempt.pk, phase=Phase.FAILED, exit_code=exit_code)


def topup(org: Organization, amount: str, ref: str = "t1") -> None:
    billing.topup_record(organization=org, amount=Decimal(amount), reference=ref, created_by="test")


def run_job(job: FineTuningJob, pool: Pool, clock: Any, seconds: float) -> JobAttempt:
    admit(job, pool)
    attempt = start(job)
    clock.shift(timedelta(seconds=seconds))
    succeed(job, attempt)
    return attempt


def assert_invariants() -> None:
    """REFERENCE §6, over everything in the database."""
    # Every entry sums to zero, and so does the ledger.
    sums: dict[int, Decimal] = {}
    for entry_id, amount in LedgerLine.objects.values_list("entry_id", "amount"):
        sums[entry_id] = sums.get(entry_id, Decimal(0)) + amount
    assert all(total == 0 for total in sums.values()), sums
    assert sum(sums.values(), Decimal(0)) == 0
    # No negative balance without a credit line; nothing negative on hold.
    for account in BillingAccount.objects.all():
        available = billing.balance_available(organization=account.organization_id)
        assert available >= -account.credit_limit, (account.organization_id, available)
        assert billing.balance_held(organization=account.organization_id) >= 0
    # One usage record per attempt; billed seconds never exceed the attempt's wall-clock x GPUs.
    for record in UsageRecord.objects.select_related("attempt", "job"):
        attempt = record.attempt
        assert attempt.ended_at is not None
        if attempt.training_started_at is None:
            assert record.gpu_seconds == 0
        else:
            wall = Decimal((attempt.ended_at - attempt.training_started_at).total_seconds())
            assert record.gpu_seconds <= wall * record.gpu_count + Decimal("0.001")
        # Covered by a booking: only the GPU-seconds inside the booking's window.
        assert 0 <= record.covered_gpu_seconds <= record.gpu_seconds
        if record.booking is None:
            assert record.covered_gpu_seconds == 0
        elif record.covered_gpu_seconds > 0:
            assert attempt.training_started_at is not None
            inside = min(attempt.ended_at, record.booking.end) - max(
                attempt.training_started_at, record.booking.start
            )
            assert record.covered_gpu_seconds <= Decimal(
                inside.total_seconds()
            ) * record.gpu_count + Decimal("0.001")
    # Billed intervals of one job never overlap: one attempt at a time.
    for job in FineTuningJob.objects.all():
        intervals = [
            (a.training_started_at, a.ended_at)
            for a in JobAttempt.objects.filter(job=job, training_started_at__isnull=False).order_by(
                "number"
            )
        ]
        for (_, end), (begin, _) in itertools.pairwise(intervals):
            assert end is not None and end <= begin, (job.id, intervals)
        _assert_job_money(job)
    _assert_booking_money()
    # Invoice lines add up exactly to totals.
    for invoice in Invoice.objects.prefetch_related("lines"):
        lines = list(invoice.lines.all())
        assert invoice.subtotal == sum((line.amount for line in lines), Decimal(0))
        assert invoice.vat == sum((line.vat for line in lines), Decimal(0))
        assert invoice.total == invoice.subtotal + invoice.vat
        for line in lines:
            assert line.amount == line.fee + line.provider_amount
        # The customer's total = provider payable + platform fee + VAT, on the invoice too.
        assert invoice.total == sum(
            (line.provider_amount + line.fee + line.vat for line in lines), Decimal(0)
        )


def _assert_booking_money() -> None:
    """Every booking is charged exactly its amount once; a cancellation refunds exactly the
    promised refund once; each booking entry splits into provider + fee + VAT to the cent."""
    for booking in Booking.objects.all():
        charges = {c.kind: c for c in BookingCharge.objects.filter(booking=booking)}
        assert set(charges) <= {"charge", "refund"}
        charge = charges["charge"]
        assert charge.net == booking.amount, (booking.public_id, charge.net, booking.amount)
        refund = charges.get("refund")
        if booking.status == Booking.Status.CANCELLED and booking.refund_amount:
            assert refund is not None and -refund.net == booking.refund_amount
            assert -(refund.net + refund.vat) <= charge.net + charge.vat
            assert -refund.provider_amount <= charge.provider_amount
        else:
            assert refund is None
    for row in BookingCharge.objects.select_related("entry"):
        legs = {account: _amount(row.entry, account) for account in Account.values}
        assert legs[Account.CUSTOMER_BALANCE] == row.net + row.vat
        assert -legs[Account.PROVIDER_PAYABLE] == row.provider_amount
        assert -legs[Account.PLATFORM_REVENUE] == row.fee
        assert -legs[Account.VAT_PAYABLE] == row.vat
        assert legs[Account.CUSTOMER_HELD] == 0 and legs[Account.CASH] == 0
        assert row.net == row.fee + row.provider_amount


def _job_lines(job: FineTuningJob, account: str) -> Decimal:
    amounts = LedgerLine.objects.filter(entry__job=job, account=account).values_list(
        "amount", flat=True
    )
    return sum(amounts, Decimal(0))


def _assert_job_money(job: FineTuningJob) -> None:
    entries = JournalEntry.objects.filter(job=job)
    held = -sum(
        (_amount(e, Account.CUSTOMER_HELD) for e in entries if e.kind == "hold"), Decimal(0)
    )
    captured_from_hold = sum(
        (_amount(e, Account.CUSTOMER_HELD) for e in entries if e.kind == "capture"), Decimal(0)
    )
    released = sum(
        (_amount(e, Account.CUSTOMER_HELD) for e in entries if e.kind == "release"), Decimal(0)
    )
    assert 0 <= captured_from_hold + released <= held
    charges = Charge.objects.filter(job=job)
    captured = sum((c.net + c.vat for c in charges if c.net + c.vat > 0), Decimal(0))
    refunded = -sum((c.net + c.vat for c in charges if c.net + c.vat < 0), Decimal(0))
    assert refunded <= captured
    for charge in charges:
        # Customer charge = provider payable + platform fee + VAT, to the cent, in the ledger:
        # what left the customer's accounts is exactly what the three others received.
        legs = {account: _amount(charge.entry, account) for account in Account.values}
        customer = legs[Account.CUSTOMER_HELD] + legs[Account.CUSTOMER_BALANCE]
        assert customer == charge.net + charge.vat
        assert -legs[Account.PROVIDER_PAYABLE] == charge.provider_amount
        assert -legs[Account.PLATFORM_REVENUE] == charge.fee
        assert -legs[Account.VAT_PAYABLE] == charge.vat
        assert customer == charge.provider_amount + charge.fee + charge.vat
        assert legs[Account.CASH] == 0
    # No double charge: what was charged is exactly what the usage records say is due.
    settled = job.status in {"succeeded", "failed", "cancelled", "paused"}
    if settled and not JobAttempt.objects.filter(job=job, ended_at__isnull=True).exists():
        streams = billing.usage.streams_for_job(job)
        for stream in streams.values():
            due = stream.get("due")
            charged = stream.get("charged")
            assert (due.net if due else 0) == (charged.net if charged else 0)
            assert (due.vat if due else 0) == (charged.vat if charged else 0)
        assert billing.job_held(job_id=job.id) == 0
        if job.failure_class in {"platform_error", "provider_error"}:
            assert _job_lines(job, Account.PROVIDER_PAYABLE) == 0
            assert (
                _job_lines(job, Account.CUSTOMER_BALANCE) + _job_lines(job, Account.CUSTOMER_HELD)
                == 0
            )


def _amount(entry: JournalEntry, account: str) -> Decimal:
    return sum((line.amount for line in entry.lines.all() if line.account == account), Decimal(0))


def book(org: Organization, pool: Pool, *, gpus: int, start: datetime, hours: float) -> Booking:
    from marketplace.capacity.services import booking_create

    return booking_create(
        organization=org,
        flavor=pool.flavor.slug,
        gpu_count=gpus,
        start=start,
        end=start + timedelta(hours=hours),
        pool_id=pool.public_id,
    )


def admit_on_booking(job: FineTuningJob, booking: Booking, *, max_duration: int = 3600) -> Decimal:
    """What the admission pass does for a job placed on its org's booking: placement (pool lock),
    hold (balance lock), queued → admitted, in one transaction."""
    from django.db import transaction

    from marketplace.capacity.placement import PlacementDecision
    from marketplace.capacity.services import placement_commit

    pool = booking.pool
    with transaction.atomic():
        placement_commit(
            job=job,
            decision=PlacementDecision(
                pool=pool,
                booking=booking,
                gpu_count=job.gpu_count,
                price_per_gpu_hour=pool.price_per_gpu_hour,
                reliability=None,
                reason="on your booking",
            ),
        )
        held = billing.hold_place(job=job, pool=pool, max_duration_seconds=max_duration)
        jobs.job_admit(job_id=job.id, pool_id=pool.pk, placement_reason="on your booking")
    return held


def invoice_lines_for(job: FineTuningJob) -> list[InvoiceLine]:
    return list(InvoiceLine.objects.filter(job=job, invoice__status="finalized"))
