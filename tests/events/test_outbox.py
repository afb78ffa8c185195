"""The outbox: an event exists only if its transaction commits; each consumer gets it once,
after commit, and a failing consumer is retried with backoff without holding up the others."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
import time_machine
from django.db import transaction
from django.utils import timezone

from marketplace.events import dispatch
from marketplace.events.consumers import consumer_register
from marketplace.events.models import ConsumerCursor, ConsumerDelivery, DomainEvent
from marketplace.events.services import event_record, event_record_once

pytestmark = pytest.mark.django_db(transaction=True)

JOB_DONE = "fine_tuning.job.succeeded"


def _record(org: Any, subject: str = "ftjob-a", **kwargs: Any) -> DomainEvent:
    return event_record(
        event_type=kwargs.pop("event_type", JOB_DONE),
        organization_id=org.pk,
        subject_id=subject,
        **kwargs,
    )


def test_an_event_is_handed_to_each_consumer_once_after_commit(
    org_a: Any, consumer: Any, eager_celery: None
) -> None:
    webhooks_like = consumer("test.a", [JOB_DONE])
    email_like = consumer("test.b")
    others = consumer("test.c", ["booking.started"])
    with transaction.atomic():
        event = _record(org_a, data={"fine_tuning_job_id": "ftjob-a"})
        assert webhooks_like.seen == []  # nothing before commit
    assert webhooks_like.seen == [event.public_id]
    assert email_like.seen == [event.public_id]
    assert others.seen == []
    # The sweep, run again and again, hands nothing a second time.
    for _ in range(2):
        dispatch.events_sweep(now=timezone.now() + timedelta(minutes=10))
    assert webhooks_like.seen == [event.public_id] and email_like.seen == [event.public_id]
    event.refresh_from_db()
    assert event.data == {"fine_tuning_job_id": "ftjob-a"} and event.organization_id == org_a.pk


def test_a_rolled_back_transaction_leaves_no_event(
    org_a: Any, consumer: Any, eager_celery: None
) -> None:
    recorder = consumer("test.a")
    with pytest.raises(RuntimeError), transaction.atomic():
        _record(org_a)
        raise RuntimeError("the change failed")
    dispatch.events_sweep()
    assert not DomainEvent.objects.exists()
    assert recorder.calls == 0


def test_a_failing_consumer_is_retried_with_backoff_and_does_not_block_others(
    org_a: Any, consumer: Any, eager_celery: None
) -> None:
    flaky = consumer("test.flaky")
    healthy = consumer("test.healthy")
    flaky.fail_times = 3  # both first attempts, then the first event's second attempt
    t0 = timezone.now()
    with time_machine.travel(t0, tick=False) as clock:
        first = _record(org_a, "ftjob-1")
        second = _record(org_a, "ftjob-2")
        assert healthy.seen == [first.public_id, second.public_id]
        assert flaky.seen == []  # the first attempt at each failed
        row = ConsumerDelivery.objects.get(consumer="test.flaky", event=first)
        assert row.status == "pending" and row.attempts == 1
        assert row.next_attempt_at == t0 + timedelta(seconds=dispatch.BACKOFF_SECONDS[0])
        assert "receiver is down" in row.last_error

        dispatch.events_sweep()  # not due yet
        assert flaky.calls == 2
        clock.shift(timedelta(seconds=dispatch.BACKOFF_SECONDS[0]))
        dispatch.events_sweep()  # both due: the second gets through, the first fails again
        assert flaky.seen == [second.public_id]
        clock.shift(timedelta(seconds=dispatch.BACKOFF_SECONDS[1]))
        dispatch.events_sweep()
        assert sorted(flaky.seen) == sorted([first.public_id, second.public_id])
        dispatch.events_sweep()
    assert len(flaky.seen) == 2 and len(healthy.seen) == 2
    assert set(
        ConsumerDelivery.objects.filter(consumer="test.flaky").values_list("status", flat=True)
    ) == {"done"}


def test_a_consumer_gives_up_after_the_last_attempt(
    org_a: Any, consumer: Any, eager_celery: None
) -> None:
    broken = consumer("test.broken")
    broken.fail_times = 10_000
    with time_machine.travel(timezone.now(), tick=False) as clock:
        event = _record(org_a)
        for _ in range(dispatch.MAX_ATTEMPTS + 3):
            clock.shift(timedelta(days=1))
            dispatch.consumer_drain("test.broken")
    row = ConsumerDelivery.objects.get(consumer="test.broken", event=event)
    assert row.status == "failed" and row.attempts == dispatch.MAX_ATTEMPTS
    assert broken.calls == dispatch.MAX_ATTEMPTS


def test_a_sweep_only_consumer_gets_events_from_its_cursor(org_a: Any, consumer: Any) -> None:
    # No eager Celery, no on-commit handling: only the drain hands events over.
    batch = consumer("test.batch", [JOB_DONE], on_commit=False)
    t0 = timezone.now()
    with time_machine.travel(t0, tick=False) as clock:
        first = _record(org_a, "ftjob-1")
        _record(org_a, "ftjob-x", event_type="booking.started")  # not its type
        report = dispatch.consumer_drain("test.batch")
        assert report.results == [first.public_id]
        # Too recent to move the cursor over (a late commit could still land below it).
        assert ConsumerCursor.objects.get(pk="test.batch").position == 0
        clock.shift(dispatch.SETTLE + timedelta(seconds=1))
        second = _record(org_a, "ftjob-2")
        assert dispatch.consumer_drain("test.batch").results == [second.public_id]
        cursor = ConsumerCursor.objects.get(pk="test.batch")
        assert cursor.position == second.pk - 1  # past the settled two, before the new one
    assert batch.seen == [first.public_id, second.public_id]


def test_a_new_consumer_starts_with_the_last_day_not_all_history(org_a: Any, consumer: Any) -> None:
    t0 = timezone.now()
    with time_machine.travel(t0 - timedelta(days=3), tick=False):
        _record(org_a, "ftjob-old")
    recent = _record(org_a, "ftjob-new")
    late = consumer("test.late", on_commit=False)
    dispatch.consumer_drain("test.late")
    assert late.seen == [recent.public_id]


def test_a_dedup_key_records_a_fact_once(org_a: Any, consumer: Any, eager_celery: None) -> None:
    recorder = consumer("test.a")
    first = event_record_once(
        event_type="booking.started",
        organization_id=org_a.pk,
        subject_id="bk_1",
        dedup_key="booking.started:bk_1",
    )
    assert first is not None
    again = event_record_once(
        event_type="booking.started",
        organization_id=org_a.pk,
        subject_id="bk_1",
        dedup_key="booking.started:bk_1",
    )
    assert again is None
    same = event_record(
        event_type="booking.started",
        organization_id=org_a.pk,
        subject_id="bk_1",
        dedup_key="booking.started:bk_1",
    )
    assert same.pk == first.pk
    assert recorder.seen == [first.public_id]


def test_unknown_types_and_bad_payloads_are_refused(org_a: Any) -> None:
    with pytest.raises(ValueError, match="add it to EVENT_TYPES"):
        event_record(event_type="job.done", organization_id=org_a.pk, subject_id="x")
    with pytest.raises(ValueError, match="subject_id"):
        event_record(event_type=JOB_DONE, organization_id=org_a.pk, subject_id="")
    with pytest.raises(ValueError, match="must be JSON"):
        event_record(
            event_type=JOB_DONE,
            organization_id=org_a.pk,
            subject_id="ftjob-a",
            data={"when": timezone.now()},
        )
    with pytest.raises(ValueError, match="unknown event types"):
        consumer_register("test.bad", lambda event: None, event_types=["job.done"])
    assert not DomainEvent.objects.exists()
