"""The billing calendar: where periods start and end (PARTAGE_BILLING_PERIOD, in UTC).

A regular period is a calendar month (default), an ISO week (from Monday) or a day. A period
closed early by staff ends when it was closed; the next one runs from there to the next regular
boundary, so closed periods always tile time.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from django.conf import settings


def _start_of(at: datetime, length: str) -> datetime:
    at = at.astimezone(UTC)
    day = at.replace(hour=0, minute=0, second=0, microsecond=0)
    if length == "day":
        return day
    if length == "week":
        return day - timedelta(days=day.weekday())
    return day.replace(day=1)


def period_boundary_after(at: datetime) -> datetime:
    """The first regular period boundary strictly after `at`."""
    length = settings.PARTAGE_BILLING_PERIOD
    start = _start_of(at, length)
    if length == "day":
        return start + timedelta(days=1)
    if length == "week":
        return start + timedelta(days=7)
    return start.replace(year=start.year + start.month // 12, month=start.month % 12 + 1)


def period_start_of(at: datetime) -> datetime:
    """The start of the regular period that contains `at`."""
    return _start_of(at, settings.PARTAGE_BILLING_PERIOD)


def period_advance(boundary: datetime, periods: int) -> datetime:
    """The regular boundary `periods` periods after `boundary` (itself for 0 or fewer)."""
    for _ in range(max(periods, 0)):
        boundary = period_boundary_after(boundary)
    return boundary
