"""Reads for fine-tuning, scoped by organization from the start."""

from __future__ import annotations

from typing import Any

from django.db.models import QuerySet

from marketplace.accounts.models import Organization
from marketplace.events.models import DomainEvent
from marketplace.events.selectors import events_about
from marketplace.finetuning.models import Checkpoint, File, FineTuningJob, JobAttempt, JobEvent


def files_for_org(org: Organization) -> QuerySet[File]:
    return File.objects.filter(organization=org, deleted_at__isnull=True)


def jobs_for_org(org: Organization) -> QuerySet[FineTuningJob]:
    return FineTuningJob.objects.filter(organization=org).select_related(
        "organization", "training_file", "validation_file", "result_file"
    )


def job_for_org(org: Organization, job_id: str) -> FineTuningJob | None:
    return jobs_for_org(org).filter(pk=job_id).first()


def events_for_job(job: FineTuningJob) -> QuerySet[JobEvent]:
    return JobEvent.objects.filter(job=job)


def checkpoints_for_job(job: FineTuningJob) -> QuerySet[Checkpoint]:
    return Checkpoint.objects.filter(job=job)


def attempts_for_job(job: FineTuningJob) -> QuerySet[JobAttempt]:
    return JobAttempt.objects.filter(job=job).order_by("number")


def latest_checkpoint(job_id: str) -> Checkpoint | None:
    return Checkpoint.objects.filter(job_id=job_id).order_by("-step").first()


def base_models() -> list[dict[str, Any]]:
    """The catalog of base models that can be fine-tuned (no download happens here)."""
    from workers import catalog

    entries = catalog.CATALOG.values() if isinstance(catalog.CATALOG, dict) else catalog.CATALOG
    result = []
    for entry in entries:
        as_dict = entry if isinstance(entry, dict) else vars(entry)
        result.append(dict(as_dict))
    return result


def base_model_get(model_id: str) -> dict[str, Any] | None:
    return next((m for m in base_models() if m.get("id") == model_id), None)


def fine_tuned_models_for_org(org: Organization) -> QuerySet[FineTuningJob]:
    return jobs_for_org(org).filter(status="succeeded").exclude(fine_tuned_model="")


def job_announcements(job: FineTuningJob, *, after: int = 0) -> QuerySet[DomainEvent]:
    """What the outbox holds about the job after the reader's cursor: its state changes and
    its checkpoints (`fine_tuning.job.*`), oldest first."""
    return events_about(
        organization_id=job.organization_id,
        subject_id=job.id,
        after=after,
        parent_key="fine_tuning_job_id",
    )
