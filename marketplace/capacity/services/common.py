"""Shared by the capacity services: the capacity error, the pool lock, ids, window checks."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta

from django.utils import timezone

from marketplace.capacity.models import (
    Pool,
)
from marketplace.errors import Conflict, InvalidInput

MAX_BOOKING = timedelta(days=92)
START_GRACE = timedelta(minutes=5)  # a "start now" request arrives a little after now


class CapacityUnavailable(Conflict):
    """Nothing fits; `details` names the earliest window that would."""

    code = "capacity_unavailable"


def lock_pool(pk: int) -> Pool:
    """The pool lock, first in the order pool → org quota → org balance.

    NO KEY UPDATE: serializes every check-then-write on the pool, yet does not block rows that
    merely reference the pool by foreign key (their KEY SHARE lock), such as a new booking or
    billing row written while another lock is held.
    """
    return Pool.objects.select_for_update(no_key=True).get(pk=pk)


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


def unix(moment: datetime | None) -> int | None:
    return int(moment.timestamp()) if moment else None


def window_check(start: datetime, end: datetime) -> None:
    if timezone.is_naive(start) or timezone.is_naive(end):
        raise InvalidInput("start and end must be timezone-aware instants.", param="start")
    if end <= start:
        raise InvalidInput("end must be after start.", param="end")
