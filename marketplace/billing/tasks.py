"""Celery entry point for closing billing periods on schedule (services/periods.py)."""

from __future__ import annotations

from typing import Any

from django.conf import settings

from workers.celery import app

app.conf.beat_schedule.setdefault(
    "partage-billing-periods-close",
    {
        "task": "partage.billing_periods_close",
        "schedule": float(settings.PARTAGE_BILLING_CLOSE_EVERY_SECONDS),
    },
)


@app.task(name="partage.billing_periods_close", acks_late=True)
def billing_periods_close(**kwargs: Any) -> list[str]:
    from marketplace.billing.services.periods import periods_close_due

    return [str(period) for period in periods_close_due()]
