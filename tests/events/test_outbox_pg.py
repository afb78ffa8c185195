"""On PostgreSQL with real threads: sweeps and on-commit dispatches racing for the same events
hand each event to a consumer exactly once."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import pytest
from django.db import connection

from marketplace.events import dispatch
from marketplace.events.consumers import consumer_get
from marketplace.events.models import ConsumerDelivery
from marketplace.events.services import event_record

pytestmark = [pytest.mark.pg, pytest.mark.django_db(transaction=True)]

THREADS = 6


def _race(count: int, work: Callable[[int], Any]) -> list[Any]:
    barrier = threading.Barrier(count)
    results: list[Any] = [None] * count

    def run(index: int) -> None:
        try:
            barrier.wait(timeout=30)
            results[index] = work(index)
        except Exception as e:  # report, don't hide
            results[index] = e
        finally:
            connection.close()

    threads = [threading.Thread(target=run, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    return results


def test_racing_sweeps_and_dispatches_handle_each_event_once(org_a: Any, consumer: Any) -> None:
    recorder = consumer("test.race")  # on commit, but Celery is not eager: nothing ran yet
    events = [
        event_record(
            event_type="fine_tuning.job.queued", organization_id=org_a.pk, subject_id=f"ftjob-{i}"
        )
        for i in range(20)
    ]

    def work(index: int) -> None:
        if index % 2:
            dispatch.consumer_drain("test.race")
        else:
            for event in events:
                dispatch.consumer_handle(consumer_get("test.race"), event)

    results = _race(THREADS, work)
    assert [r for r in results if isinstance(r, Exception)] == []
    assert sorted(recorder.seen) == sorted(e.public_id for e in events)
    assert ConsumerDelivery.objects.filter(consumer="test.race", status="done").count() == 20
