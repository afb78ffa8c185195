"""Calls that other domains' services make, always through `transaction.on_commit`."""

from __future__ import annotations

import logging

from django.db import transaction

from marketplace.api.webhooks.events import JOB_STATUS_EVENTS

logger = logging.getLogger("partage.webhooks")


def _emit_job_event(job_id: str, event_type: str, object_id: str) -> None:
    from marketplace.api.webhooks.services import webhook_event_emit
    from marketplace.finetuning.models import FineTuningJob

    org_id = (
        FineTuningJob.objects.filter(pk=job_id).values_list("organization_id", flat=True).first()
    )
    if org_id is None:
        return
    data = (
        {"id": object_id}
        if object_id == job_id
        else {"id": object_id, "fine_tuning_job_id": job_id}
    )
    webhook_event_emit(organization=org_id, event_type=event_type, data=data)


def job_status_changed(*, job_id: str, status: str) -> None:
    """Announce a job's new state once the transition has committed (no-op for inner steps)."""
    event_type = JOB_STATUS_EVENTS.get(str(status))
    if event_type is not None:
        transaction.on_commit(lambda: _emit_job_event(job_id, event_type, job_id), robust=True)


def checkpoint_written(*, job_id: str, checkpoint_id: str) -> None:
    transaction.on_commit(
        lambda: _emit_job_event(job_id, "fine_tuning.job.checkpoint.created", checkpoint_id),
        robust=True,
    )
