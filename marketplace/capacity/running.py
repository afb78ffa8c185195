"""Which work holds GPUs on a pool: capacity needs it to count free GPUs, and quotas keeps it
(its live allocations are the record, released exactly once when every pod of an attempt has
ended). Quotas depends on capacity, not the reverse: it registers the reader here at start-up
(`QuotasConfig.ready`)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from django.core.exceptions import ImproperlyConfigured


@dataclass(frozen=True)
class LiveAllocation:
    job_id: str
    pool_id: int
    booking_id: int | None
    gpus: int
    expected_end: datetime | None


# The live (not yet released) allocations on these pools.
AllocationsReader = Callable[[list[int]], list[LiveAllocation]]

_reader: AllocationsReader | None = None


def live_allocations_provide(reader: AllocationsReader) -> None:
    global _reader
    _reader = reader


def live_allocations(pool_ids: list[int]) -> list[LiveAllocation]:
    if _reader is None:
        raise ImproperlyConfigured(
            "No reader of live allocations: add 'marketplace.quotas' to INSTALLED_APPS "
            "(its AppConfig.ready registers one)."
        )
    return _reader(pool_ids)
