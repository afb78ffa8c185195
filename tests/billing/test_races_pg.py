"""Holds, settlements and top-ups under real concurrency, on PostgreSQL with real threads."""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import timedelta
from decimal import Decimal
from typing import Any

import pytest
from django.db import connection, transaction

from marketplace.billing import services as billing
from marketplace.billing.models import Charge, JournalEntry
from marketplace.errors import InsufficientFunds
from marketplace.finetuning import services as jobs
from tests.billing.conftest import assert_invariants, job_new, start, topup, training_file

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
