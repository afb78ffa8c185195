"""The e-mail consumer of the outbox: renders an event into messages and sends them.

A topic registers `email_renderer_register("invoice.finalized", render)` where
`render(event) -> list[EmailMessage]` builds complete messages (recipients included) with
Django's e-mail framework; an empty list sends nothing. Sending happens at least once: a crash
between sending and committing "handled" sends again on retry.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

from django.core.mail import EmailMessage, get_connection

from marketplace.events.consumers import consumer_register
from marketplace.events.types import EVENT_TYPES

if TYPE_CHECKING:
    from marketplace.events.models import DomainEvent

logger = logging.getLogger("partage.notifications")

CONSUMER = "email"

Renderer = Callable[["DomainEvent"], list[EmailMessage]]

_RENDERERS: dict[str, Renderer] = {}


def email_renderer_register(event_type: str, renderer: Renderer) -> None:
    """Send the e-mails `renderer(event)` returns for every `event_type` event (one renderer
    per type: registering again replaces it)."""
    if event_type not in EVENT_TYPES:
        raise ValueError(
            f"Unknown event type {event_type!r}: add it to EVENT_TYPES in "
            "marketplace/events/types.py first."
        )
    _RENDERERS[event_type] = renderer
    email_consumer_register()


def email_renderer_unregister(event_type: str) -> None:
    _RENDERERS.pop(event_type, None)
    email_consumer_register()


def email_notify(event: DomainEvent) -> int:
    """The consumer's handler: render and send; returns how many messages were sent."""
    renderer = _RENDERERS.get(event.event_type)
    if renderer is None:
        return 0
    messages = renderer(event)
    if not messages:
        return 0
    sent = get_connection(fail_silently=False).send_messages(messages) or 0
    logger.info(
        "sent %s e-mail(s) for %s %s",
        sent,
        event.event_type,
        event.public_id,
        extra={"org_id": event.organization_id, "event_id": event.public_id},
    )
    return sent


def email_consumer_register() -> None:
    """(Re)register the consumer for exactly the event types that have a renderer."""
    consumer_register(CONSUMER, email_notify, event_types=set(_RENDERERS))
