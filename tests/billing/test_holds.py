"""holds_place: the admission pass's batch of holds. hold_place's rules for each request in
order, the funds of an organization shared along the batch, and a fixed number of statements."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal
from typing import Any

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from marketplace.accounts.services import organization_create
from marketplace.billing import services as billing
from marketplace.billing.models import JobPricing, JournalEntry
from marketplace.capacity import services as capacity
from marketplace.errors import InsufficientFunds, InvalidInput
from marketplace.finetuning.models import FineTuningJob
from tests.billing.conftest import (
    T0,
    admit,
    assert_invariants,
    book,
    job_new,
    preempt,
    start,
    topup,
    training_file,
)

pytestmark = pytest.mark.django_db


def _loaded(job: FineTuningJob) -> FineTuningJob:
    """The job as the admission pass hands it over: fresh, with its organization."""
    return FineTuningJob.objects.select_related("organization").get(pk=job.pk)


def _request(job: FineTuningJob, pool: Any, seconds: int = 3600, **kw: Any) -> Any:
    return billing.HoldRequest(job=_loaded(job), pool=pool, max_duration_seconds=seconds, **kw)


def _holds(job: FineTuningJob) -> list[JournalEntry]:
    return list(JournalEntry.objects.filter(job=job, kind="hold").order_by("id"))


def test_jobs_of_one_org_share_its_funds_in_order(org_a: Any, pool: Any, clock: Any) -> None:
    topup(org_a, "7.00")
    file_id = training_file(org_a)
    first, second, third, small = (job_new(org_a, file_id=file_id) for _ in range(4))

    outcome = billing.holds_place(
        [
            _request(first, pool),  # 1 GPU x 1 h at €2.50, + 20 % VAT: €3.00
            _request(second, pool),
            _request(third, pool),  # €1.00 left
            _request(small, pool, seconds=1000),  # €0.70 + €0.14 VAT: still fits
        ]
    )

    assert outcome[first.id] == outcome[second.id] == Decimal("3.00")
    assert outcome[small.id] == Decimal("0.84")
    refusal = outcome[third.id]
    assert isinstance(refusal, InsufficientFunds)
    assert refusal.details == {"needed": "3.00", "available": "1.00", "currency": "EUR"}
    assert not JobPricing.objects.filter(job=third).exists()
    assert _holds(third) == []
    assert [e.key for e in _holds(first)] == [f"hold:{first.id}:1"]
    assert billing.balance_held(organization=org_a) == Decimal("6.84")
    assert billing.balance_available(organization=org_a) == Decimal("0.16")
    # The refusal is the one hold_place raises for the job alone, to the word.
    topup(org_a, "0.84", ref="t2")
    with pytest.raises(InsufficientFunds) as alone:
        billing.hold_place(job=third, pool=pool, max_duration_seconds=3600)
    assert (alone.value.message, alone.value.param, alone.value.details) == (
        refusal.message,
        refusal.param,
        refusal.details,
    )
    assert_invariants()


def test_two_organizations_in_one_call(org_a: Any, org_b: Any, pool: Any, clock: Any) -> None:
    topup(org_a, "3.00")
    billing.credit_limit_set(organization=org_b, credit_limit=Decimal("5.00"))
    a1, a2, b1 = job_new(org_a), job_new(org_a), job_new(org_b, gpus=2)

    outcome = billing.holds_place(
        [_request(a1, pool), _request(b1, pool, seconds=1800), _request(a2, pool)]
    )

    assert outcome[a1.id] == Decimal("3.00")
    assert outcome[b1.id] == Decimal("3.00")  # on its credit line: org A's funds are not its own
    refusal = outcome[a2.id]
    assert isinstance(refusal, InsufficientFunds)
    assert refusal.details["available"] == "0.00"
    assert "organization org-a" in refusal.message
    assert billing.balance_available(organization=org_a) == 0
    assert billing.balance_available(organization=org_b) == Decimal("-3.00")
    assert JobPricing.objects.get(job=b1).max_duration_seconds == 1800
    assert_invariants()


def test_a_requeued_job_posts_only_its_shortfall(org_a: Any, pool: Any, clock: Any) -> None:
    topup(org_a, "20.00")
    job = job_new(org_a)
    admit(job, pool, max_duration=3600)  # €3.00
    attempt = start(job)
    clock.shift(timedelta(seconds=3000))
    preempt(attempt)  # €2.08 + €0.42 VAT metered, not captured: back in the queue
    fresh = job_new(org_a)

    # The requeued job's row is updated, the new job's created, in the same call.
    outcome = billing.holds_place([_request(job, pool), _request(fresh, pool)])

    assert outcome == {job.id: Decimal("5.50"), fresh.id: Decimal("3.00")}
    second = _holds(job)[-1]
    assert second.key == f"hold:{job.id}:2"
    assert [line.amount for line in second.lines.order_by("amount")] == [
        Decimal("-2.50"),
        Decimal("2.50"),
    ]
    assert JobPricing.objects.get(job=job).hold_seq == 2
    assert billing.job_held(job_id=job.id) == Decimal("5.50")
    # Asked again with nothing changed: nothing more to hold, nothing posted.
    assert billing.holds_place([_request(job, pool)]) == {job.id: Decimal("5.50")}
    assert len(_holds(job)) == 2
    assert_invariants()


def test_only_a_confirmed_booking_of_the_jobs_org_is_counted(
    org_a: Any, org_b: Any, pool: Any, clock: Any
) -> None:
    """Booked 2 GPUs for [T0+1h, T0+3h): it covers a 1 h job of its org from T0+1h."""
    topup(org_a, "100.00")
    topup(org_b, "100.00", ref="t-b")
    booking = book(org_a, pool, gpus=2, start=T0 + timedelta(hours=1), hours=2)
    cancelled = book(org_a, pool, gpus=2, start=T0 + timedelta(hours=1), hours=2)
    capacity.booking_cancel(organization=org_a, booking_id=cancelled.public_id)
    cancelled.refresh_from_db()
    clock.move_to(T0 + timedelta(hours=1))
    own, on_cancelled, other_org = (
        job_new(org_a, gpus=2),
        job_new(org_a, gpus=2),
        job_new(org_b, gpus=2),
    )

    outcome = billing.holds_place(
        [
            _request(own, pool, booking=booking),
            _request(on_cancelled, pool, booking=cancelled),
            _request(other_org, pool, booking=booking),
        ]
    )

    # 2 GPUs x 1 h at €2.50 = €5.00, + €1.00 VAT, unless the booking covers it.
    assert outcome == {
        own.id: Decimal("0.00"),
        on_cancelled.id: Decimal("6.00"),
        other_org.id: Decimal("6.00"),
    }
    assert JobPricing.objects.get(job=own).booking_id == booking.pk
    assert JobPricing.objects.get(job=on_cancelled).booking_id is None
    assert JobPricing.objects.get(job=other_org).booking_id is None
    assert _holds(own) == []
    assert_invariants()


def _orgs(count: int) -> list[Any]:
    orgs = [
        organization_create(name=f"Org {i}", slug=f"holds-{i}", country="FR") for i in range(count)
    ]
    for org in orgs:
        topup(org, "100.00", ref=f"t-{org.slug}")
    return orgs


def test_the_statements_do_not_grow_with_the_batch(pool: Any, clock: Any) -> None:
    orgs = _orgs(4)
    alone = _request(job_new(orgs[3]), pool)
    batch = [_request(job_new(orgs[i % 3], gpus=1 + i % 2), pool) for i in range(5)]

    with CaptureQueriesContext(connection) as one:
        billing.holds_place([alone])
    with CaptureQueriesContext(connection) as five:
        outcome = billing.holds_place(batch)

    assert all(held > 0 for held in outcome.values()), outcome
    assert JournalEntry.objects.filter(kind="hold").count() == 6
    sent = "\n".join(query["sql"][:120] for query in five.captured_queries)
    # Balance locks, balances, held, usage, charges, pricing rows (lock, insert), entries, lines.
    assert len(one.captured_queries) == len(five.captured_queries) == 9, sent
    assert_invariants()


@pytest.mark.parametrize("seconds", [0, -60, True, 3600.0, "3600"])
def test_an_invalid_duration_is_refused_before_anything(
    org_a: Any, pool: Any, clock: Any, seconds: Any
) -> None:
    topup(org_a, "100.00")
    good, bad = job_new(org_a), job_new(org_a)
    requests = [_request(good, pool), _request(bad, pool, seconds=seconds)]

    with CaptureQueriesContext(connection) as sent, pytest.raises(InvalidInput) as error:
        billing.holds_place(requests)

    assert error.value.param == "max_duration_seconds"
    assert sent.captured_queries == []
    assert not JobPricing.objects.exists()
    assert not JournalEntry.objects.filter(kind="hold").exists()
