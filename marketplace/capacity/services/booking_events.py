"""A booking's window starting and ending happen by the clock, not by a write: a periodic task
records `booking.started` / `booking.ended` once each (a dedup key per booking and moment).

Only moments at most `LOOKBACK` old are recorded, so a task that was down catches up without
replaying history. Celery beat runs it every minute (marketplace/capacity/tasks.py).
"""

from __future__ import annotations

from datetime import datetime, timedelta

from django.db import transaction
from django.utils import timezone

from marketplace.capacity.models import Booking
from marketplace.events.services import event_record_once

LOOKBACK = timedelta(days=1)
MOMENTS = (("booking.started", "start"), ("booking.ended", "end"))


def booking_moments_record(*, now: datetime | None = None) -> int:
    """Record the starts and ends of confirmed bookings up to `now`; returns how many are new."""
    now = now or timezone.now()
    since = now - LOOKBACK
    recorded = 0
    confirmed = Booking.objects.filter(status=Booking.Status.CONFIRMED).select_related(
        "pool", "flavor"
    )
    for event_type, moment in MOMENTS:
        window = {f"{moment}__gt": since, f"{moment}__lte": now}
        for booking in confirmed.filter(**window).order_by(moment, "pk"):
            with transaction.atomic():
                event = event_record_once(
                    event_type=event_type,
                    organization_id=booking.organization_id,
                    subject_id=booking.public_id,
                    data={
                        "pool": booking.pool.public_id,
                        "flavor": booking.flavor.slug,
                        "gpu_count": booking.gpu_count,
                        "start": int(booking.start.timestamp()),
                        "end": int(booking.end.timestamp()),
                    },
                    occurred_at=getattr(booking, moment),
                    dedup_key=f"{event_type}:{booking.public_id}",
                )
            recorded += event is not None
    return recorded
