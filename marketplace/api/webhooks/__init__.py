"""Signed webhooks (Standard Webhooks): endpoints, events, deliveries with retries.

Domains do not call webhooks: they record domain events (marketplace/events), and webhook
delivery is a consumer of that outbox (`consumer.py`). The event types are the outbox's catalog,
`marketplace/events/types.py`.
"""

from marketplace.api.webhooks.events import EVENT_TYPES
from marketplace.api.webhooks.services import webhook_event_emit

__all__ = ["EVENT_TYPES", "webhook_event_emit"]
