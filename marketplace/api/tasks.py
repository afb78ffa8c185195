"""Celery entry points for webhook deliveries: one attempt per task, plus a periodic sweep."""

from __future__ import annotations

from typing import Any

from workers.celery import app

app.conf.beat_schedule.setdefault(
    "partage-webhook-sweep", {"task": "partage.webhook_sweep", "schedule": 30.0}
)


@app.task(name="partage.webhook_deliver", acks_late=True)
def webhook_deliver(delivery_id: str, **kwargs: Any) -> None:
    from marketplace.api.webhooks.services import webhook_delivery_attempt

    webhook_delivery_attempt(delivery_id=delivery_id)


@app.task(name="partage.webhook_sweep", acks_late=True)
def webhook_sweep(**kwargs: Any) -> int:
    from marketplace.api.webhooks.services import webhook_deliveries_sweep

    return webhook_deliveries_sweep()
