"""Celery entry points for capacity: the minute task that records bookings starting and ending."""

from __future__ import annotations

from typing import Any

from workers.celery import app

app.conf.beat_schedule.setdefault(
    "partage-booking-moments", {"task": "partage.booking_moments_record", "schedule": 60.0}
)


@app.task(name="partage.booking_moments_record", acks_late=True)
def booking_moments_record(**kwargs: Any) -> int:
    from marketplace.capacity.services.booking_events import booking_moments_record as record

    return record()
