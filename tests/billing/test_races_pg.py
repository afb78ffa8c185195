"""Holds, settlements and top-ups under real concurrency, on PostgreSQL with real threads."""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
import time_machine
from django.db import connection, transaction

from marketplace.billing import services as billing
from marketplace.billing.models import Charge, JournalEntry
from marketplace.errors import InsufficientFunds
from marketplace.finetuning import services as jobs
from tests.billing.conftest import (
    admit,
    assert_invariants,
    job_new,
    preempt,
    start,
    topup,
    training_file,
)

pytestmark = [pytest.mark.pg, pytest.mark.django_db(transaction=True)]


def _together(count: int, work: Callable[[int], Any]) -> list[Any]:
    """Run work(i) in `count` threads released at once; returns results or exceptions."""
    barrier = threading.Barrier(count)
    results: list[Any] = [None] * count

    def run(index: int) -> None:
        try:
            barrier.wait(timeout=30)
            results[index] = work(index)
        except Exception as e:
            results[index] = e
        finally:
            connection.close()

    threads = [threading.Thread(target=run, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    return results


@pytest.fixture(autouse=True)
def _needs_postgres() -> None:
    if connection.vendor != "postgresql":
        pytest.skip("row locks need PostgreSQL: run with DATABASE_URL=postgres://…")


def test_concurrent_admissions_never_overspend(org_a: Any, pool: Any) -> None:
    topup(org_a, "9.50")  # room for three holds of €3.00
    file_id = training_file(org_a)
    batch = [job_new(org_a, file_id=file_id) for _ in range(8)]

    def hold(index: int) -> Decimal:
        with transaction.atomic():
            return billing.hold_place(job=batch[index], pool=pool, max_duration_seconds=3600)

    results = _together(8, hold)
    held = [r for r in results if isinstance(r, Decimal)]
    refused = [r for r in results if isinstance(r, InsufficientFunds)]
    assert len(held) == 3 and len(refused) == 5, results
    assert billing.balance_available(organization=org_a) == Decimal("0.50")
    assert billing.balance_held(organization=org_a) == Decimal("9.00")
    assert_invariants()


def test_concurrent_batches_over_two_orgs_never_overspend_nor_deadlock(
    org_a: Any, org_b: Any, pool: Any
) -> None:
    """Batches that name the two organizations in either order lock their balances in one
    order (organization id), so they wait for each other instead of deadlocking."""
    topup(org_a, "9.50")  # room for three holds of €3.00 each
    topup(org_b, "9.50", ref="t-b")
    files = {org.pk: training_file(org) for org in (org_a, org_b)}
    batches = []
    for index in range(4):
        orgs = (org_a, org_b) if index % 2 else (org_b, org_a)
        batch = [job_new(org, file_id=files[org.pk]) for org in orgs for _ in range(2)]
        batches.append([_request(job, pool) for job in batch])

    def hold(index: int) -> dict[str, Any]:
        with transaction.atomic():
            return billing.holds_place(batches[index])

    results = _together(4, hold)
    assert all(isinstance(r, dict) for r in results), results
    outcomes = [outcome for r in results for outcome in r.values()]
    assert sum(isinstance(o, Decimal) for o in outcomes) == 6, outcomes
    assert sum(isinstance(o, InsufficientFunds) for o in outcomes) == 10, outcomes
    for org in (org_a, org_b):
        assert billing.balance_available(organization=org) == Decimal("0.50")
        assert billing.balance_held(organization=org) == Decimal("9.00")
    assert_invariants()


def _request(job: Any, pool: Any) -> billing.HoldRequest:
    from marketplace.finetuning.models import FineTuningJob

    loaded = FineTuningJob.objects.select_related("organization").get(pk=job.pk)
    return billing.HoldRequest(job=loaded, pool=pool, max_duration_seconds=3600)


def test_concurrent_duplicate_settlements_charge_once(org_a: Any, pool: Any) -> None:
    topup(org_a, "20.00")
    job = job_new(org_a)
    with transaction.atomic():
        billing.hold_place(job=job, pool=pool, max_duration_seconds=3600)
        jobs.job_admit(job_id=job.id, pool_id=pool.pk)
    attempt = start(job)
    from marketplace.finetuning.models import JobAttempt

    # The attempt trained for 30 minutes.
    JobAttempt.objects.filter(pk=attempt.pk).update(
        training_started_at=attempt.created_at - timedelta(seconds=1800)
    )
    jobs.job_pause(organization=org_a, job_id=job.id)
    jobs.attempt_ended(attempt_id=attempt.pk, phase="failed", exit_code=4)
    job.refresh_from_db()
    assert job.status == "paused"
    before = JournalEntry.objects.count()
    results = _together(6, lambda _: billing.job_settle(job=job))
    assert all(r is None for r in results), results
    assert JournalEntry.objects.count() == before
    assert Charge.objects.filter(job=job).count() == 1
    assert_invariants()


def test_concurrent_duplicate_topups_count_once(org_a: Any) -> None:
    results = _together(
        6,
        lambda _: billing.topup_record(
            organization=org_a, amount=Decimal("7.00"), reference="wire-42"
        ),
    )
    assert all(not isinstance(r, Exception) for r in results), results
    assert billing.balance_available(organization=org_a) == Decimal("7.00")
    assert JournalEntry.objects.filter(kind="topup").count() == 1


def test_invoice_cut_waits_for_usage_being_recorded(org_a: Any, pool: Any) -> None:
    """A usage record stamped before the period's end but not yet committed when the invoice run
    starts: the run waits for it (the metering lock) and bills it. Without the lock the run would
    miss it, and the next run, which starts where this one ends, would never bill it."""
    end_of_november = datetime(2026, 12, 1, tzinfo=UTC)
    metered, proceed = threading.Event(), threading.Event()
    results: dict[str, Any] = {}
    with time_machine.travel(end_of_november - timedelta(minutes=2), tick=False) as clock:
        topup(org_a, "20.00")
        job = job_new(org_a)
        admit(job, pool, max_duration=3600)
        attempt = start(job)
        clock.shift(timedelta(seconds=72))  # 72 GPU-s at €2.50/GPU-hour = €0.05

        def meter() -> None:
            try:
                with transaction.atomic():
                    preempt(attempt)  # the attempt ends: its usage record is written
                    metered.set()
                    proceed.wait(timeout=30)
            finally:
                connection.close()

        def cut() -> None:
            try:
                start, end = billing.month_bounds(2026, 11)
                results["invoices"] = billing.invoices_finalize(period_start=start, period_end=end)
            except Exception as e:
                results["error"] = e
            finally:
                connection.close()

        writer = threading.Thread(target=meter)
        writer.start()
        assert metered.wait(timeout=30)
        clock.move_to(end_of_november + timedelta(seconds=5))
        invoicer = threading.Thread(target=cut)
        invoicer.start()
        invoicer.join(timeout=2)
        assert invoicer.is_alive(), "the invoice run did not wait for the record being written"
        proceed.set()
        writer.join(timeout=30)
        invoicer.join(timeout=30)
    assert "error" not in results, results
    [invoice] = results["invoices"]
    [line] = invoice.lines.all()
    assert line.job_id == job.id and line.gpu_seconds == Decimal("72.000")
    assert line.amount == Decimal("0.05")


def test_concurrent_bookings_never_overspend_and_refused_ones_leave_nothing(
    org_a: Any, pool: Any
) -> None:
    from django.utils import timezone

    from marketplace.billing.models import BookingCharge
    from marketplace.capacity.models import Booking
    from marketplace.capacity.services import booking_create

    topup(org_a, "9.50")  # room for three bookings of €2.50 + €0.50 VAT
    begin = timezone.now().replace(minute=0, second=0, microsecond=0) + timedelta(days=3)

    def reserve(index: int) -> Any:
        return booking_create(
            organization=org_a,
            flavor=pool.flavor.slug,
            gpu_count=1,
            start=begin + timedelta(hours=index),
            end=begin + timedelta(hours=index + 1),
            pool_id=pool.public_id,
        )

    results = _together(8, reserve)
    refused = [r for r in results if isinstance(r, InsufficientFunds)]
    assert len(refused) == 5, results
    assert Booking.objects.count() == 3
    assert BookingCharge.objects.count() == 3
    assert billing.balance_available(organization=org_a) == Decimal("0.50")
    assert_invariants()
