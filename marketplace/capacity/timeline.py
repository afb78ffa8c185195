"""Interval arithmetic on GPU loads over half-open windows [start, end). No database here."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta


@dataclass(frozen=True)
class Load:
    """`gpus` GPUs taken during [start, end)."""

    start: datetime
    end: datetime
    gpus: int


def load_at(loads: Iterable[Load], at: datetime) -> int:
    return sum(load.gpus for load in loads if load.start <= at < load.end)


def peak(loads: Iterable[Load], start: datetime, end: datetime) -> int:
    """The largest total load at any instant of [start, end).

    A sweep: ends sort before starts at the same instant, because the windows are half-open
    (a booking ending at 12:00 and one starting at 12:00 never overlap).
    """
    events: list[tuple[datetime, int, int]] = []
    for load in loads:
        if load.end <= start or load.start >= end:
            continue
        events.append((max(load.start, start), 1, load.gpus))
        events.append((load.end, 0, -load.gpus))
    events.sort()
    current = best = 0
    for _moment, _kind, delta in events:
        current += delta
        best = max(best, current)
    return best


def earliest_fit(
    loads: Sequence[Load],
    *,
    capacity: int,
    gpus: int,
    duration: timedelta,
    not_before: datetime,
) -> datetime | None:
    """The earliest start ≥ not_before at which `gpus` more fit for `duration`, or None if never.

    Only `not_before` and the ends of existing loads can be the earliest start: moving a
    candidate later without passing an end never lowers the peak it faces.
    """
    if gpus > capacity:
        return None
    candidates = sorted({not_before} | {load.end for load in loads if load.end > not_before})
    for start in candidates:
        if peak(loads, start, start + duration) + gpus <= capacity:
            return start
    return None  # unreachable: after the last end nothing is loaded
