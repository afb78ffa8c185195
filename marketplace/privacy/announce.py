"""Domain events of data protection, recorded through the events outbox (REFERENCE §10).

The types (add them to marketplace/events/types.py EVENT_TYPES when that catalog is present):
"""

from __future__ import annotations

import logging
from typing import Any

logger = logging.getLogger("partage.privacy")

EXPORT_READY = "organization.export.ready"
FILE_EXPIRED = "file.expired"
CHECKPOINT_EXPIRED = "fine_tuning.job.checkpoint.expired"
ERASURE_SCHEDULED = "organization.erasure.scheduled"
ERASURE_CANCELLED = "organization.erasure.cancelled"
ORGANIZATION_ERASED = "organization.erased"
EVENT_TYPES = (
    EXPORT_READY,
    FILE_EXPIRED,
    CHECKPOINT_EXPIRED,
    ERASURE_SCHEDULED,
    ERASURE_CANCELLED,
    ORGANIZATION_ERASED,
)


def announce(
    *, event_type: str, organization_id: int | None, subject_id: str, data: dict[str, Any]
) -> None:
    """Record the event in the caller's transaction; logged as well, with its ids."""
    logger.info(
        "privacy event",
        extra={"event_type": event_type, "org_id": organization_id, "subject_id": subject_id},
    )
    try:
        from marketplace.events.services import event_record
    except ImportError:  # the events app (issue 19) is not installed on this branch yet
        return
    event_record(
        event_type=event_type, organization_id=organization_id, subject_id=subject_id, data=data
    )
