"""The event types a webhook endpoint can subscribe to: the domain event catalog
(marketplace/events/types.py), checked here with the API's error for a bad subscription."""

from __future__ import annotations

from marketplace.errors import InvalidInput
from marketplace.events.types import EVENT_TYPES, JOB_STATUS_EVENTS, EventType

__all__ = ["EVENT_TYPES", "JOB_STATUS_EVENTS", "EventType", "event_type_check"]


def event_type_check(event_type: object, *, param: str) -> str:
    if not isinstance(event_type, str) or event_type not in EVENT_TYPES:
        raise InvalidInput(
            f"Unknown event type {event_type!r}; GET /v1/webhook_event_types lists them.",
            param=param,
        )
    return event_type
