"""Fixtures for the outbox tests: consumers that record what they are handed, eager Celery."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from marketplace.events.consumers import consumer_register, consumer_unregister
from marketplace.events.models import DomainEvent


@dataclass
class Recorder:
    """A consumer's handler: keeps the public ids it was handed; `fail_times` makes it raise."""

    seen: list[str] = field(default_factory=list)
    fail_times: int = 0
    calls: int = 0

    def __call__(self, event: DomainEvent) -> str:
        self.calls += 1
        if self.fail_times:
            self.fail_times -= 1
            raise RuntimeError("receiver is down")
        self.seen.append(event.public_id)
        return event.public_id


@pytest.fixture
def consumer() -> Iterator[Callable[..., Recorder]]:
    names: list[str] = []

    def make(name: str, event_types: Any = None, **options: Any) -> Recorder:
        recorder = Recorder()
        consumer_register(name, recorder, event_types=event_types, **options)
        names.append(name)
        return recorder

    yield make
    for name in names:
        consumer_unregister(name)


@pytest.fixture
def eager_celery(settings: Any) -> Iterator[None]:
    from workers.celery import app

    previous = app.conf.task_always_eager
    settings.CELERY_TASK_ALWAYS_EAGER = True
    app.conf.task_always_eager = True
    yield
    app.conf.task_always_eager = previous
