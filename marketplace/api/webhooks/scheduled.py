"""The minute sweep of webhooks: announce the facts found by the clock or by batch work (a
booking's window starting and ending, an invoice finalized, a monthly GPU-hour budget crossing
a threshold).

The domains record those facts in the outbox (capacity's booking-moments task, billing's
invoice_finalize, quotas' admission pass); this sweep runs the clock-driven recording up to
`now` and then drains the `webhooks.scheduled` consumer. Each fact is announced once per
organization, only to organizations with an endpoint subscribed to it, and only when it is
newer than the oldest such endpoint and at most a day old. Celery beat runs the sweep every
minute (marketplace/api/tasks.py): an event arrives at most that late.
"""

from __future__ import annotations

import logging
from datetime import datetime

from marketplace.api.webhooks.consumer import SCHEDULED
from marketplace.capacity.services.booking_events import booking_moments_record
from marketplace.events.dispatch import consumer_drain

logger = logging.getLogger("partage.webhooks")


def webhook_scheduled_events_sweep(*, now: datetime | None = None) -> int:
    """Announce what happened up to `now`; returns how many webhook events were recorded."""
    booking_moments_record(now=now)
    report = consumer_drain(SCHEDULED)
    emitted = sum(1 for result in report.results if result is not None)
    if emitted:
        logger.info("webhook sweep announced %s scheduled events", emitted)
    return emitted
