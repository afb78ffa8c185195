"""The job life cycle: create, admit, cancel, pause, preempt, resume, fail, settle on the way
out; and the hooks that enqueue the admission pass and the dispatch and stop tasks."""

from __future__ import annotations

import uuid
from datetime import datetime
from decimal import Decimal
from functools import partial
from typing import Any

from django.db import transaction
from django.utils import timezone

from marketplace.accounts.guards import content_add_check
from marketplace.accounts.models import ApiKey, Organization, User
from marketplace.errors import InvalidInput, InvalidTransition, NotFound
from marketplace.finetuning import states
from marketplace.finetuning.admission import admission
from marketplace.finetuning.charging import job_charging
from marketplace.finetuning.models import File, FineTuningJob, JobEvent
from marketplace.finetuning.models import JobStatus as S
from marketplace.finetuning.services.files import _new_id
from marketplace.finetuning.services.options import normalize_hyperparameters, normalize_lora
from marketplace.finetuning.services.transitions import (
    _jobs_transition_apply,
    job_event_add,
    job_transition,
)


def _training_file(organization: Organization, file_id: str | None, param: str) -> File | None:
    if not file_id:
        return None
    file = File.objects.filter(
        organization=organization,
        pk=file_id,
        deleted_at__isnull=True,
        purpose=File.Purpose.FINE_TUNE,
    ).first()
    if file is None:
        raise InvalidInput(f"No training file {file_id!r} in your organization.", param=param)
    if file.status == File.Status.UPLOADED:
        raise InvalidInput(
            f"File {file_id} is still being validated; retry once its status is 'processed'.",
            code="file_not_ready",
            param=param,
        )
    if file.status != File.Status.PROCESSED:
        raise InvalidInput(
            f"File {file_id} failed validation; fix it and upload again.", param=param
        )
    return file


def job_create(
    *,
    organization: Organization,
    model: str,
    training_file: str,
    validation_file: str | None = None,
    hyperparameters: dict[str, Any] | None = None,
    lora: dict[str, Any] | None = None,
    seed: int | None = None,
    suffix: str | None = None,
    metadata: dict[str, str] | None = None,
    gpu_flavor: str = "",
    gpu_count: int = 1,
    max_cost: Decimal | None = None,
    residency: dict[str, Any] | None = None,
    priority: int = 0,
    created_by: User | None = None,
    created_by_key: ApiKey | None = None,
) -> FineTuningJob:
    from marketplace.finetuning.selectors import base_model_get

    content_add_check(organization=organization, action="create a fine-tuning job")
    if base_model_get(model) is None:
        raise InvalidInput(
            f"Model {model!r} is not in the catalog; GET /v1/models lists the base models.",
            param="model",
        )
    train = _training_file(organization, training_file, "training_file")
    assert train is not None
    valid = _training_file(organization, validation_file, "validation_file")
    if suffix and (len(suffix) > 64 or not suffix.replace("-", "").replace("_", "").isalnum()):
        raise InvalidInput("suffix must be at most 64 letters, digits, '-' or '_'.", param="suffix")
    if gpu_count < 1 or gpu_count > 64:
        raise InvalidInput("gpu_count must be from 1 to 64.", param="gpu_count")
    if max_cost is not None and max_cost <= 0:
        raise InvalidInput("max_cost must be a positive amount in EUR.", param="max_cost")
    hp = normalize_hyperparameters(hyperparameters)
    lora_options = normalize_lora(lora)
    pending_reason, estimated_start = job_fit_check(
        organization=organization,
        gpu_flavor=gpu_flavor,
        gpu_count=gpu_count,
        residency=residency,
        priority=priority,
    )
    job_id = _new_id("ftjob")
    with transaction.atomic():
        job = FineTuningJob.objects.create(
            id=job_id,
            organization=organization,
            created_by=created_by,
            created_by_key=created_by_key,
            model=model,
            training_file=train,
            validation_file=valid,
            hyperparameters=hp,
            lora=lora_options,
            seed=seed if seed is not None else uuid.uuid4().int % (2**31),
            suffix=suffix or "",
            metadata=metadata or {},
            gpu_flavor=gpu_flavor,
            gpu_count=gpu_count,
            max_cost=max_cost,
            residency=residency or {},
            priority=priority,
        )
        job_event_add(job_id=job.id, message=f"Created fine-tuning job: {job.id}")
        # Files were validated at upload, so the job is ready for admission at once.
        job = job_transition(
            job_id=job.id,
            to=S.QUEUED,
            message="Validated training file; job queued",
            pending_reason=pending_reason,
            estimated_start=estimated_start,
        )
        transaction.on_commit(_enqueue_admission)
    return job


def job_fit_check(
    *,
    organization: Organization,
    gpu_flavor: str,
    gpu_count: int,
    residency: dict[str, Any] | None = None,
    priority: int = 0,
) -> tuple[str, datetime | None]:
    """A new job's first pending reason and estimated start, by quotas' decision rules, before
    the first admission pass. Raises InvalidInput, writing nothing, when the job could never
    run as asked: a flavor no pool offers, more GPUs than any pool has or than the organization
    may use, a residency no pool meets (job_create; the portal, before the user confirms)."""
    outlook = admission().outlook(
        organization_id=organization.pk,
        gpu_flavor=gpu_flavor,
        gpu_count=gpu_count,
        residency=residency,
        priority=priority,
    )
    if outlook is None:
        return "waiting: in the admission queue; the local executor starts it now", _minute()
    if outlook.fits_now:
        return "waiting: in the admission queue; the GPUs it needs are free now", _minute()
    if outlook.unfit is not None:
        param, message = outlook.unfit
        raise InvalidInput(message, param=param)
    return outlook.reason, outlook.estimated_start


def _job_requeue(
    job: FineTuningJob,
    *,
    message: str,
    pending_reason: str,
    only_from: set[str] | None = None,
) -> FineTuningJob:
    """→ queued again (resumed, preempted, interrupted), with a first estimated start; the
    admission pass it asks for on commit says better. The estimate is None when the job can no
    longer run as it is: that pass says why and what to do."""
    outlook = admission().outlook(
        organization_id=job.organization_id,
        gpu_flavor=job.gpu_flavor,
        gpu_count=job.gpu_count,
        residency=job.residency,
        priority=job.priority,
    )
    requeued = job_transition(
        job_id=job.id,
        to=S.QUEUED,
        message=message,
        only_from=only_from,
        pending_reason=pending_reason,
        estimated_start=(
            outlook.estimated_start if outlook is not None and not outlook.fits_now else _minute()
        ),
    )
    transaction.on_commit(_enqueue_admission)
    return requeued


def _minute() -> datetime:
    """Now, to the minute, as the admission pass writes estimates."""
    return timezone.now().replace(second=0, microsecond=0)


def _enqueue_admission() -> None:
    """Ask for an admission pass (coalesced by quotas, which provides admission)."""
    admission().pass_request()


def _enqueue(task_name: str, job_id: str) -> None:
    """Enqueue `partage.<task_name>` for a job (by name: workers/tasks.py imports these
    services, so they do not import it)."""
    from workers.celery import task_send

    task_send(f"partage.{task_name}", job_id)


def job_admit(
    *, job_id: str, pool_id: int | None = None, placement_reason: str = ""
) -> FineTuningJob:
    """queued → admitted, then dispatch on commit. Called by the admission pass."""
    job_admit_apply(job_id=job_id, pool_id=pool_id, placement_reason=placement_reason)
    return FineTuningJob.objects.get(pk=job_id)


def job_admit_apply(*, job_id: str, pool_id: int | None = None, placement_reason: str = "") -> None:
    """job_admit without reading the job back (the admission pass does not need it): one
    conditional UPDATE, the event, and the dispatch on commit. Raises InvalidTransition /
    NotFound, having written nothing, when the job is no longer queued."""
    jobs_admit_apply({job_id: placement_reason})


def jobs_admit_apply(placements: dict[str, str]) -> None:
    """queued → admitted for many jobs (job id → placement reason) in the caller's
    transaction, in a constant number of statements; each job's dispatch is enqueued on
    commit. Raises InvalidTransition / NotFound when a job is no longer queued: with several
    jobs the caller must roll back (see _jobs_transition_apply)."""
    _jobs_transition_apply(
        job_ids=list(placements),
        to=S.ADMITTED,
        message="Admitted: capacity reserved",
        admitted_at=timezone.now(),
        pending_reason="",
        per_job={job_id: {"placement_reason": reason} for job_id, reason in placements.items()},
    )
    for job_id in placements:
        # Registered only once the transition is written; dropped with the caller's transaction.
        transaction.on_commit(partial(_enqueue, "job_dispatch", job_id))


def _org_job(organization: Organization, job_id: str) -> FineTuningJob:
    """The organization's job; NotFound, the same as for an unknown id, for another's."""
    job = FineTuningJob.objects.filter(organization=organization, pk=job_id).first()
    if job is None:
        raise NotFound(f"No fine-tuning job {job_id!r}.", param="job_id")
    return job


def job_cancel(*, organization: Organization, job_id: str) -> FineTuningJob:
    job = _org_job(organization, job_id)
    if job.status in states.TERMINAL:
        raise InvalidTransition(
            f"Job {job_id} already {states.public_status(job.status)}; nothing to cancel.",
            param="job_id",
        )
    if job.status in {S.VALIDATING_FILES, S.QUEUED, S.PAUSED}:
        return _job_end_now(job_id=job_id, to=S.CANCELLED, message="Job cancelled")
    return _trainer_stop(job_id=job_id, to=S.CANCELLING, message="Cancelling: stopping the trainer")


def job_pause(*, organization: Organization, job_id: str) -> FineTuningJob:
    job = _org_job(organization, job_id)
    if job.status in {S.QUEUED, S.ADMITTED}:
        return _job_end_now(job_id=job_id, to=S.PAUSED, message="Job paused before it started")
    return _trainer_stop(
        job_id=job_id,
        to=S.PAUSING,
        message="Pausing: writing a checkpoint",
        only_from={S.STARTING, S.RUNNING},
    )


def job_preempt(*, job_id: str, reason: str) -> FineTuningJob:
    """running → requeueing (quotas' preemption): stop the trainer, which writes a checkpoint
    and exits 4; the ended attempt then requeues the job to resume from that checkpoint."""
    return _trainer_stop(
        job_id=job_id,
        to=S.REQUEUEING,
        message=f"Preempting: {reason}; a checkpoint is written and the job is requeued",
        level=JobEvent.Level.WARN,
        only_from={S.RUNNING},
    )


def _job_end_now(*, job_id: str, to: str, message: str) -> FineTuningJob:
    """A job with no trainer running (not started yet, or paused) ends at once: money settled,
    quota freed."""
    with transaction.atomic():
        job = job_transition(job_id=job_id, to=to, message=message)
        _job_ended(job)
    return job


def _trainer_stop(*, job_id: str, to: str, message: str, **options: Any) -> FineTuningJob:
    """→ a stopping state (cancelling, pausing, requeueing); the trainer is stopped once that is
    committed, and its attempt's end moves the job on."""
    with transaction.atomic():
        job = job_transition(job_id=job_id, to=to, message=message, **options)
        transaction.on_commit(lambda: _enqueue("job_stop", job_id))
    return job


def job_resume(*, organization: Organization, job_id: str) -> FineTuningJob:
    job = _org_job(organization, job_id)
    with transaction.atomic():
        return _job_requeue(
            job,
            message="Resumed: queued again, will continue from the latest checkpoint",
            pending_reason="waiting: in the admission queue",
            only_from={S.PAUSED},
        )


def job_fail(
    *, job_id: str, failure_class: str, code: str, message: str, param: str | None = None
) -> FineTuningJob:
    with transaction.atomic():
        job = job_transition(
            job_id=job_id,
            to=S.FAILED,
            message=f"Job failed: {message}",
            level=JobEvent.Level.ERROR,
            failure_class=failure_class,
            error={"code": code, "message": message, "param": param},
        )
        _job_ended(job)
    return job


def _job_ended(job: FineTuningJob) -> None:
    """The job left the running world (terminal or paused): settle money, free the queue."""

    job_charging().job_settle(job=job)
    admission().release_job(job_id=job.id)  # admitted but never started: nothing else frees it
    transaction.on_commit(_enqueue_admission)
