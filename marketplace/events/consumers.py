"""The registry of outbox consumers: who wants which event types, and how to hand them over.

A consumer is registered once per process, from its app's `AppConfig.ready()`. Its handler takes
the `DomainEvent` and runs inside a transaction with the consumer's delivery row: it must not
catch database errors it cannot handle, and what it writes commits together with "handled".
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from marketplace.events.types import EVENT_TYPES

if TYPE_CHECKING:
    from marketplace.events.models import DomainEvent

Handler = Callable[["DomainEvent"], Any]


@dataclass(frozen=True)
class Consumer:
    name: str
    handler: Handler
    # None: every event type.
    event_types: frozenset[str] | None
    # True: handed each event right after its transaction commits (and by the sweep as a safety
    # net); False: only by the periodic sweep (`dispatch.consumer_drain`).
    on_commit: bool = True

    def wants(self, event_type: str) -> bool:
        return self.event_types is None or event_type in self.event_types


_CONSUMERS: dict[str, Consumer] = {}


def consumer_register(
    name: str,
    handler: Handler,
    event_types: Iterable[str] | None = None,
    *,
    on_commit: bool = True,
) -> Consumer:
    """Register (or replace) the consumer `name`. Its cursor and delivery rows keep that name,
    so renaming a consumer makes it start over: choose a stable one."""
    if not name or len(name) > 80:
        raise ValueError(f"A consumer name must be 1 to 80 characters, got {name!r}.")
    types = None if event_types is None else frozenset(event_types)
    unknown = sorted((types or frozenset()) - EVENT_TYPES.keys())
    if unknown:
        raise ValueError(
            f"Consumer {name!r} asks for unknown event types {unknown}; "
            "add them to EVENT_TYPES in marketplace/events/types.py first."
        )
    consumer = Consumer(name=name, handler=handler, event_types=types, on_commit=on_commit)
    _CONSUMERS[name] = consumer
    return consumer


def consumer_unregister(name: str) -> None:
    _CONSUMERS.pop(name, None)


def consumer_get(name: str) -> Consumer:
    try:
        return _CONSUMERS[name]
    except KeyError:
        raise LookupError(
            f"No consumer {name!r} is registered; known: {sorted(_CONSUMERS)}."
        ) from None


def consumers_all() -> list[Consumer]:
    return list(_CONSUMERS.values())


def consumers_for(event_type: str, *, on_commit_only: bool = False) -> list[Consumer]:
    return [
        c
        for c in _CONSUMERS.values()
        if c.wants(event_type) and (c.on_commit or not on_commit_only)
    ]
