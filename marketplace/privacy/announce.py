"""Domain events of data protection, recorded through the events outbox (REFERENCE §10) in the
caller's transaction. The types are in marketplace/events/types.py (EVENT_TYPES).
"""

from __future__ import annotations

import logging
from typing import Any

from marketplace.events.services import event_record

logger = logging.getLogger("partage.privacy")

EXPORT_READY = "organization.export.ready"
FILE_EXPIRED = "file.expired"
CHECKPOINT_EXPIRED = "fine_tuning.job.checkpoint.expired"
ERASURE_SCHEDULED = "organization.erasure.scheduled"
ERASURE_CANCELLED = "organization.erasure.cancelled"
ORGANIZATION_ERASED = "organization.erased"


def announce(
    *, event_type: str, organization_id: int | None, subject_id: str, data: dict[str, Any]
) -> None:
    logger.info(
        "privacy event",
        extra={"event_type": event_type, "org_id": organization_id, "subject_id": subject_id},
    )
    event_record(
        event_type=event_type, organization_id=organization_id, subject_id=subject_id, data=data
    )
