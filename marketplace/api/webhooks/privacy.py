"""What the webhook tables contribute to an organization's export and erasure.

Registered with marketplace.privacy at start-up (ApiConfig.ready): the privacy app never imports
the partner API. Signing secrets are never exported.
"""

from __future__ import annotations

from typing import Any

from marketplace.accounts.models import Organization
from marketplace.api.models import (
    IdempotencyRecord,
    WebhookDelivery,
    WebhookDeliveryAttempt,
    WebhookEndpoint,
    WebhookEvent,
)


def webhooks_export(org: Organization, writer: Any) -> None:
    from marketplace.privacy.services.exports import row

    endpoints = WebhookEndpoint.objects.filter(organization=org).order_by("created_at", "id")
    writer.add_json("webhooks/endpoints.json", [row(e) for e in endpoints], kind="webhooks")
    deliveries = (
        WebhookDelivery.objects.filter(organization=org)
        .select_related("event")
        .prefetch_related("attempts")
        .order_by("created_at", "id")
    )
    writer.add_jsonl(
        "webhooks/deliveries.jsonl",
        (
            {
                **row(d),
                "event": row(d.event),
                "attempts": [row(a) for a in d.attempts.all()],
            }
            for d in deliveries
        ),
        kind="webhooks",
    )


def webhooks_erase(org: Organization) -> dict[str, int]:
    """Endpoints (URLs, secrets), events, deliveries and their payload logs."""
    attempts, _ = WebhookDeliveryAttempt.objects.filter(delivery__organization=org).delete()
    deliveries, _ = WebhookDelivery.objects.filter(organization=org).delete()
    events, _ = WebhookEvent.objects.filter(organization=org).delete()
    endpoints, _ = WebhookEndpoint.objects.filter(organization=org).delete()
    records, _ = IdempotencyRecord.objects.filter(organization=org).delete()
    return {
        "endpoints": endpoints,
        "events": events,
        "deliveries": deliveries,
        "delivery_attempts": attempts,
        "idempotency_records": records,
    }
