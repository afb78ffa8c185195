"""Signed webhooks (Standard Webhooks): endpoints, events, deliveries with retries.

Other domains call `webhook_event_emit(organization=…, event_type=…, data={"id": …})` from a
service; the event type must be listed in `events.EVENT_TYPES`.
"""

from marketplace.api.webhooks.events import EVENT_TYPES
from marketplace.api.webhooks.services import webhook_event_emit

__all__ = ["EVENT_TYPES", "webhook_event_emit"]
