"""Recording domain events. Call `event_record` inside the transaction that makes the change:
if it rolls back, the event never existed; if it commits, every consumer gets the event."""

from __future__ import annotations

import json
import uuid
from datetime import datetime
from typing import Any

from django.db import IntegrityError, transaction
from django.utils import timezone

from marketplace.events.consumers import consumers_for
from marketplace.events.models import DomainEvent
from marketplace.events.types import EVENT_TYPES


def _public_id() -> str:
    return f"evt_{uuid.uuid4().hex[:24]}"


def _check(event_type: str, subject_id: str, data: dict[str, Any] | None) -> dict[str, Any]:
    if event_type not in EVENT_TYPES:
        raise ValueError(
            f"Unknown event type {event_type!r}: add it to EVENT_TYPES in "
            "marketplace/events/types.py first."
        )
    if not isinstance(subject_id, str) or not subject_id or len(subject_id) > 100:
        raise ValueError(
            f"subject_id must be the public id of the object concerned (1 to 100 characters), "
            f"got {subject_id!r} for {event_type}."
        )
    data = dict(data or {})
    try:
        json.dumps(data)
    except (TypeError, ValueError) as e:
        raise ValueError(
            f"data of {event_type} must be JSON (ids, strings, numbers): {e}. "
            "Send ids and let consumers fetch the current state."
        ) from e
    return data


def _dispatch_on_commit(event: DomainEvent) -> None:
    if not consumers_for(event.event_type, on_commit_only=True):
        return

    def enqueue() -> None:
        from marketplace.events import tasks

        tasks.events_dispatch.delay(event.pk)

    # robust: a broker that is down must not fail the caller; the sweep delivers it later.
    transaction.on_commit(enqueue, robust=True)


def event_record(
    *,
    event_type: str,
    organization_id: int | None,
    subject_id: str,
    data: dict[str, Any] | None = None,
    occurred_at: datetime | None = None,
    dedup_key: str | None = None,
) -> DomainEvent:
    """Record that `event_type` happened to `subject_id` (a public id) in an organization.

    With `dedup_key`, the fact is recorded at most once: a repeat returns the first event.
    """
    event = event_record_once(
        event_type=event_type,
        organization_id=organization_id,
        subject_id=subject_id,
        data=data,
        occurred_at=occurred_at,
        dedup_key=dedup_key,
    )
    if event is None:
        return DomainEvent.objects.get(dedup_key=dedup_key)
    return event


def event_record_once(
    *,
    event_type: str,
    organization_id: int | None,
    subject_id: str,
    data: dict[str, Any] | None = None,
    occurred_at: datetime | None = None,
    dedup_key: str | None = None,
) -> DomainEvent | None:
    """Like `event_record`; returns None when `dedup_key` was already recorded."""
    data = _check(event_type, subject_id, data)
    now = timezone.now()
    fields = {
        "public_id": _public_id(),
        "event_type": event_type,
        "organization_id": organization_id,
        "subject_id": subject_id,
        "data": data,
        "occurred_at": occurred_at or now,
        "recorded_at": now,
        "dedup_key": dedup_key or None,
    }
    if dedup_key:
        try:
            with transaction.atomic():
                event = DomainEvent.objects.create(**fields)
        except IntegrityError:
            if DomainEvent.objects.filter(dedup_key=dedup_key).exists():
                return None
            raise
    else:
        event = DomainEvent.objects.create(**fields)
    _dispatch_on_commit(event)
    return event
