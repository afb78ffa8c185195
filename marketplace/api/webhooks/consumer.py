"""Webhook delivery as a consumer of the domain-event outbox.

Two registrations share one handler: `webhooks` takes each event right after its transaction
commits (job events, and any new type), `webhooks.scheduled` takes the facts that were found by
the clock or by batch work (bookings, invoices, quota thresholds) and is drained by the minute
sweep, as those events always were (at most a minute late). The handler records a webhook event
with one delivery per subscribed endpoint; `services` signs, sends and retries it.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from django.utils import timezone

from marketplace.api.models import WebhookEndpoint, WebhookEvent
from marketplace.api.webhooks.services import webhook_event_emit_once
from marketplace.events.consumers import consumer_register
from marketplace.events.models import DomainEvent
from marketplace.events.types import EVENT_TYPES

INSTANT = "webhooks"
SCHEDULED = "webhooks.scheduled"
SCHEDULED_TYPES = frozenset(
    {"booking.started", "booking.ended", "invoice.finalized", "quota.threshold_reached"}
)
# A scheduled fact older than this is not announced (a sweep that was down does not replay
# history), nor one that happened before the organization's first subscribed endpoint existed.
LOOKBACK = timedelta(days=1)


def _subscribed_since(organization_id: int, event_type: str) -> Any:
    """When the organization's oldest live endpoint subscribed to `event_type` was created."""
    created = [
        created_at
        for types, created_at in WebhookEndpoint.objects.filter(
            organization_id=organization_id, deleted_at__isnull=True
        ).values_list("event_types", "created_at")
        if event_type in (types or ())
    ]
    return min(created) if created else None


def webhook_event_from_domain(event: DomainEvent) -> WebhookEvent | None:
    """Announce a domain event to the organization's subscribed endpoints (None: nobody
    subscribed, or a scheduled fact too old to announce). Idempotent on the event id."""
    if event.organization_id is None:
        return None
    since = _subscribed_since(event.organization_id, event.event_type)
    if since is None:
        return None
    if event.event_type in SCHEDULED_TYPES and (
        event.occurred_at < since or event.occurred_at < timezone.now() - LOOKBACK
    ):
        return None
    return webhook_event_emit_once(
        organization=event.organization_id,
        event_type=event.event_type,
        data={"id": event.subject_id, **event.data},
        dedup_key=f"event:{event.public_id}",
    )


def webhook_consumers_register() -> None:
    consumer_register(
        INSTANT, webhook_event_from_domain, event_types=set(EVENT_TYPES) - SCHEDULED_TYPES
    )
    consumer_register(
        SCHEDULED, webhook_event_from_domain, event_types=SCHEDULED_TYPES, on_commit=False
    )
