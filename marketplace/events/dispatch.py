"""Handing events to consumers: right after commit (one task per event), and by a periodic sweep
that walks each consumer's cursor and retries what failed, with backoff.

Exactly once per consumer: a handler runs inside the transaction that marks its delivery row
done, under that row's lock, so its database writes and "handled" commit together. Side effects
outside the database (an e-mail) happen at least once. A failing handler only delays its own
consumer's copy of that event; the other consumers, and its next events, go on.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from django.db import transaction
from django.utils import timezone

from marketplace.events.consumers import Consumer, consumer_get, consumers_all, consumers_for
from marketplace.events.models import ConsumerCursor, ConsumerDelivery, DomainEvent

logger = logging.getLogger("partage.events")

# Seconds to wait after the n-th failure; the consumer gives up after MAX_ATTEMPTS.
BACKOFF_SECONDS = (10, 60, 300, 1800, 3600, 7200, 14400, 28800)
MAX_ATTEMPTS = len(BACKOFF_SECONDS) + 1
# A transaction may commit a little after its events got their ids: the cursor stays this far
# behind the clock so that it never skips an event committed late (a delivery row prevents
# handling twice what it scans again).
SETTLE = timedelta(minutes=5)
# A consumer seen for the first time starts with the last day of events, not all of history.
FIRST_LOOKBACK = timedelta(days=1)
BATCH = 500


@dataclass
class Outcome:
    handled: bool  # the handler ran and its writes committed
    result: Any = None
    error: str = ""


@dataclass
class DrainReport:
    handled: list[Outcome] = field(default_factory=list)
    failed: int = 0

    @property
    def results(self) -> list[Any]:
        return [o.result for o in self.handled]


def _backoff(attempts: int) -> timedelta:
    return timedelta(seconds=BACKOFF_SECONDS[min(attempts - 1, len(BACKOFF_SECONDS) - 1)])


def consumer_handle(
    consumer: Consumer, event: DomainEvent, *, now: datetime | None = None
) -> Outcome | None:
    """Hand `event` to `consumer` unless it already has it; None when there was nothing to do."""
    now = now or timezone.now()
    with transaction.atomic():
        delivery, _ = ConsumerDelivery.objects.select_for_update().get_or_create(
            consumer=consumer.name,
            event=event,
            defaults={"created_at": now, "updated_at": now},
        )
        if delivery.status != ConsumerDelivery.Status.PENDING:
            return None
        if delivery.next_attempt_at is not None and delivery.next_attempt_at > now:
            return None
        delivery.attempts += 1
        delivery.updated_at = now
        try:
            with transaction.atomic():
                result = consumer.handler(event)
        except Exception as e:
            error = f"{e.__class__.__name__}: {e}"[:2000]
            delivery.last_error = error
            if delivery.attempts >= MAX_ATTEMPTS:
                delivery.status = ConsumerDelivery.Status.FAILED
                delivery.next_attempt_at = None
            else:
                delivery.next_attempt_at = now + _backoff(delivery.attempts)
            delivery.save()
            logger.warning(
                "consumer %s failed on %s (attempt %s): %s",
                consumer.name,
                event.public_id,
                delivery.attempts,
                error,
                exc_info=True,
                extra={"org_id": event.organization_id, "event_id": event.public_id},
            )
            return Outcome(handled=False, error=error)
        delivery.status = ConsumerDelivery.Status.DONE
        delivery.next_attempt_at = None
        delivery.last_error = ""
        delivery.save()
    return Outcome(handled=True, result=result)


def event_dispatch(*, event_id: int) -> int:
    """Hand a just-committed event to each consumer that takes events on commit."""
    event = DomainEvent.objects.filter(pk=event_id).first()
    if event is None:
        return 0  # the recording transaction rolled back after all
    handled = 0
    for consumer in consumers_for(event.event_type, on_commit_only=True):
        outcome = consumer_handle(consumer, event)
        handled += bool(outcome and outcome.handled)
    return handled


def _cursor(name: str, now: datetime) -> ConsumerCursor:
    cursor = ConsumerCursor.objects.select_for_update().filter(pk=name).first()
    if cursor is not None:
        return cursor
    start = (
        DomainEvent.objects.filter(recorded_at__lt=now - FIRST_LOOKBACK)
        .order_by("-pk")
        .values_list("pk", flat=True)
        .first()
    )
    ConsumerCursor.objects.get_or_create(
        consumer=name, defaults={"position": start or 0, "updated_at": now}
    )
    return ConsumerCursor.objects.select_for_update().get(pk=name)


def consumer_drain(name: str, *, now: datetime | None = None, limit: int = BATCH) -> DrainReport:
    """Hand `name` every event past its cursor it has not taken up, retry its due failures, and
    move the cursor over what has settled."""
    consumer = consumer_get(name)
    now = now or timezone.now()
    report = DrainReport()
    with transaction.atomic():
        # One drain per consumer at a time; others wait, then find the work done.
        cursor = _cursor(name, now)
        scanned = list(
            DomainEvent.objects.filter(pk__gt=cursor.position)
            .order_by("pk")
            .values_list("pk", "event_type", "recorded_at")[:limit]
        )
        wanted = [pk for pk, event_type, _ in scanned if consumer.wants(event_type)]
        taken = set(
            ConsumerDelivery.objects.filter(consumer=name, event_id__in=wanted).values_list(
                "event_id", flat=True
            )
        )
        due = list(
            ConsumerDelivery.objects.filter(
                consumer=name,
                status=ConsumerDelivery.Status.PENDING,
                next_attempt_at__lte=now,
            )
            .order_by("next_attempt_at")
            .values_list("event_id", flat=True)[:limit]
        )
        new = [pk for pk in wanted if pk not in taken]
        fresh = set(new)
        todo = new + [pk for pk in due if pk not in fresh]
        events = DomainEvent.objects.in_bulk(todo)
        for pk in todo:
            outcome = consumer_handle(consumer, events[pk], now=now)
            if outcome is None:
                continue
            if outcome.handled:
                report.handled.append(outcome)
            else:
                report.failed += 1
        position = cursor.position
        for pk, _, recorded_at in scanned:
            if recorded_at > now - SETTLE:
                break
            position = pk
        if position != cursor.position:
            ConsumerCursor.objects.filter(pk=name).update(position=position, updated_at=now)
    return report


def events_sweep(*, now: datetime | None = None) -> dict[str, int]:
    """Drain every registered consumer (the safety net behind the on-commit dispatch)."""
    handled: dict[str, int] = {}
    for consumer in consumers_all():
        report = consumer_drain(consumer.name, now=now)
        handled[consumer.name] = len(report.handled)
    return handled
