"""The catalog of domain event types. A domain that announces something new adds it here first.

Events are facts in the past tense (REFERENCE §10). Webhook endpoints subscribe to these names.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class EventType:
    description: str
    sample_id: str  # the shape of the subject id (`data.id` on a webhook), used by test deliveries


EVENT_TYPES: dict[str, EventType] = {
    "fine_tuning.job.queued": EventType("A fine-tuning job entered the queue.", "ftjob-sample"),
    "fine_tuning.job.running": EventType("A fine-tuning job started training.", "ftjob-sample"),
    "fine_tuning.job.paused": EventType("A fine-tuning job was paused.", "ftjob-sample"),
    "fine_tuning.job.succeeded": EventType("A fine-tuning job succeeded.", "ftjob-sample"),
    "fine_tuning.job.failed": EventType("A fine-tuning job failed.", "ftjob-sample"),
    "fine_tuning.job.cancelled": EventType("A fine-tuning job was cancelled.", "ftjob-sample"),
    "fine_tuning.job.checkpoint.created": EventType(
        "A fine-tuning job wrote a checkpoint.", "ftckpt-sample-1"
    ),
    "booking.started": EventType("A GPU booking started.", "booking-sample"),
    "booking.ended": EventType("A GPU booking ended.", "booking-sample"),
    "invoice.finalized": EventType("An invoice was finalized.", "inv-sample"),
    "quota.threshold_reached": EventType(
        "Usage of a quota crossed a threshold (data names the quota and the threshold).",
        "quota-sample",
    ),
}

# Job states (internal) whose arrival is announced, and the event type that announces it.
JOB_STATUS_EVENTS: dict[str, str] = {
    "queued": "fine_tuning.job.queued",
    "running": "fine_tuning.job.running",
    "paused": "fine_tuning.job.paused",
    "succeeded": "fine_tuning.job.succeeded",
    "failed": "fine_tuning.job.failed",
    "cancelled": "fine_tuning.job.cancelled",
}
