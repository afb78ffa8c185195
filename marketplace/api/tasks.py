"""Celery entry points for webhooks: one delivery attempt per task, a periodic sweep of due
deliveries, and a periodic sweep of scheduled events (bookings, invoices, quota thresholds)."""

from __future__ import annotations

from typing import Any

from workers.celery import app

app.conf.beat_schedule.setdefault(
    "partage-webhook-sweep", {"task": "partage.webhook_sweep", "schedule": 30.0}
)
app.conf.beat_schedule.setdefault(
    "partage-webhook-scheduled-events",
    {"task": "partage.webhook_scheduled_events", "schedule": 60.0},
)


@app.task(name="partage.webhook_deliver", acks_late=True)
def webhook_deliver(delivery_id: str, **kwargs: Any) -> None:
    from marketplace.api.webhooks.services import webhook_delivery_attempt

    webhook_delivery_attempt(delivery_id=delivery_id)


@app.task(name="partage.webhook_sweep", acks_late=True)
def webhook_sweep(**kwargs: Any) -> int:
    from marketplace.api.webhooks.services import webhook_deliveries_sweep

    return webhook_deliveries_sweep()


@app.task(name="partage.webhook_scheduled_events", acks_late=True)
def webhook_scheduled_events(**kwargs: Any) -> int:
    from marketplace.api.webhooks.scheduled import webhook_scheduled_events_sweep

    return webhook_scheduled_events_sweep()
