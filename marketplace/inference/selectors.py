"""Reads for inference: which fine-tuned model a name means for an organization, and prices."""

from __future__ import annotations

from django.db.models import QuerySet

from marketplace.accounts.models import Organization
from marketplace.finetuning import states
from marketplace.finetuning.models import FineTuningJob, JobStatus
from marketplace.finetuning.selectors import jobs_for_org
from marketplace.inference.errors import ModelNotFound, ModelNotReady
from marketplace.inference.models import InferencePrice, InferenceUsage


def _job_of_name(org: Organization, model: str) -> FineTuningJob | None:
    """Names are `ft:<base>:<org>[:<suffix>]:<first 8 of the job id>`; before the job succeeds
    the name is not stored yet, so an unfinished job is found by its id prefix."""
    jobs = jobs_for_org(org)
    job = jobs.filter(fine_tuned_model=model).first()
    if job is not None:
        return job
    head, _, short_id = model.rpartition(":")
    base = head.removeprefix("ft:").split(":", 1)[0] if head else ""
    if len(short_id) < 8 or not base:
        return None
    return jobs.filter(pk__startswith=f"ftjob-{short_id}", model__startswith=base).first()


def fine_tuned_model_resolve(org: Organization, model: str) -> FineTuningJob:
    """The org's succeeded job behind `model`, with its adapter; else a clear error."""
    if not model.startswith("ft:"):
        raise ModelNotFound(
            f"The model {model!r} is not a fine-tuned model of your organization: chat "
            "completions take a job's `fine_tuned_model` (ft:…), listed by GET /v1/models.",
            param="model",
        )
    job = _job_of_name(org, model)
    if job is None:
        raise ModelNotFound(
            f"The model {model!r} does not exist or you do not have access to it.", param="model"
        )
    if job.status in states.UNFINISHED:
        raise ModelNotReady(
            f"The model {model!r} is not ready: its job {job.id} is {job.status}. Retry once the "
            "job has succeeded.",
            param="model",
        )
    if job.status != JobStatus.SUCCEEDED or job.result_file is None:
        raise ModelNotFound(
            f"The model {model!r} does not exist: its job {job.id} ended {job.status} without "
            "an adapter.",
            param="model",
        )
    if job.result_file.deleted_at is not None:
        raise ModelNotFound(
            f"The model {model!r} was deleted: its adapter file {job.result_file_id} was deleted.",
            param="model",
        )
    return job


def price_for(base_model: str) -> InferencePrice | None:
    """The latest price staff set for a base model; None: not priced (served at no charge)."""
    return (
        InferencePrice.objects.filter(base_model=base_model).order_by("-created_at", "-id").first()
    )


def usage_for_org(org: Organization) -> QuerySet[InferenceUsage]:
    return InferenceUsage.objects.filter(organization=org)
