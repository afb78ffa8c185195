"""Celery entry points of the outbox: hand one committed event to its consumers, and a periodic
sweep that catches up what the first was not there for (a lost task, a retry that is due)."""

from __future__ import annotations

from typing import Any

from workers.celery import app

app.conf.beat_schedule.setdefault(
    "partage-events-sweep", {"task": "partage.events_sweep", "schedule": 30.0}
)


@app.task(name="partage.events_dispatch", acks_late=True)
def events_dispatch(event_id: int, **kwargs: Any) -> int:
    from marketplace.events.dispatch import event_dispatch

    return event_dispatch(event_id=event_id)


@app.task(name="partage.events_sweep", acks_late=True)
def events_sweep(**kwargs: Any) -> dict[str, int]:
    from marketplace.events.dispatch import events_sweep as sweep

    return sweep()
