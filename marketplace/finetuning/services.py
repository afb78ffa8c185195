"""Writes for fine-tuning: files, jobs, the state machine, attempts, events, checkpoints, adapters.

The database is the source of truth. Every job transition is a conditional UPDATE
(`… WHERE status IN allowed`) that appends an event; a transition that is not allowed raises.
Executors are driven from Celery tasks enqueued with `transaction.on_commit`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import tempfile
import uuid
from collections.abc import Iterable, Iterator, Sequence
from decimal import Decimal
from functools import partial
from typing import IO, Any, cast

from django.conf import settings
from django.core.files import File as DjangoFile
from django.core.files.storage import default_storage
from django.db import IntegrityError, transaction
from django.db.models import Case, F, Field, Value, When
from django.utils import timezone

from marketplace.accounts.models import ApiKey, Organization, User
from marketplace.errors import Conflict, InvalidInput, InvalidTransition, NotFound
from marketplace.finetuning import states
from marketplace.finetuning.models import (
    Checkpoint,
    FailureClass,
    File,
    FineTuningJob,
    JobAttempt,
    JobEvent,
)
from marketplace.finetuning.models import JobStatus as S
from marketplace.finetuning.validation import validate_lines

logger = logging.getLogger("partage.finetuning")

DEFAULT_LEARNING_RATE = 2e-4
DEFAULT_LORA = {"r": 8, "alpha": 16, "dropout": 0.05, "target_modules": "all-linear"}


def _new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


# ---------------------------------------------------------------- files


def _chunks(stream: IO[bytes], size: int = 1 << 20) -> Iterator[bytes]:
    while chunk := stream.read(size):
        yield chunk


def _lines(stream: IO[bytes]) -> Iterator[bytes]:
    stream.seek(0)
    for raw in stream:
        yield raw.rstrip(b"\r\n")


def file_create(
    *,
    organization: Organization,
    stream: IO[bytes],
    filename: str,
    purpose: str = File.Purpose.FINE_TUNE,
    size: int | None = None,
) -> File:
    """Validate, then store. Bad input raises InvalidInput and leaves nothing behind."""
    if purpose != File.Purpose.FINE_TUNE:
        raise InvalidInput(
            f"purpose {purpose!r} is not accepted for uploads; use 'fine-tune'.", param="purpose"
        )
    limit = settings.PARTAGE_MAX_UPLOAD_BYTES
    if size is not None and size > limit:
        raise InvalidInput(
            f"The file is {size} bytes; the limit is {limit} bytes. Split it into smaller files.",
            code="file_too_large",
            param="file",
        )
    digest = hashlib.sha256()
    total = 0
    stream.seek(0)
    for chunk in _chunks(stream):
        digest.update(chunk)
        total += len(chunk)
        if total > limit:
            raise InvalidInput(
                f"The file is larger than the {limit}-byte limit. Split it into smaller files.",
                code="file_too_large",
                param="file",
            )
    report = validate_lines(_lines(stream), max_lines=settings.PARTAGE_MAX_TRAINING_LINES)
    if not report.ok:
        first = report.errors[0]
        where = f"line {first.line}: " if first.line else ""
        raise InvalidInput(
            f"The training file has {report.error_count} invalid line(s); first, {where}"
            f"{first.message} See error.details for every line.",
            code="invalid_training_file",
            param="file",
            details=report.as_dict(),
        )
    stream.seek(0)
    file_id = _new_id("file")
    stored_name = default_storage.save(
        f"files/{organization.pk}/{file_id}.jsonl", DjangoFile(stream)
    )
    try:
        with transaction.atomic():
            return File.objects.create(
                id=file_id,
                organization=organization,
                filename=filename[:255] or "training.jsonl",
                purpose=purpose,
                bytes=total,
                sha256=digest.hexdigest(),
                content=stored_name,
                status=File.Status.PROCESSED,
                status_details=report.as_dict(),
                data_format=report.data_format,
                line_count=report.line_count,
            )
    except Exception:
        default_storage.delete(stored_name)
        raise


def file_delete(*, organization: Organization, file_id: str) -> File:
    file = File.objects.filter(
        organization=organization, pk=file_id, deleted_at__isnull=True
    ).first()
    if file is None:
        raise NotFound(f"No file {file_id!r}.", param="file_id")
    in_use = FineTuningJob.objects.filter(
        organization=organization, status__in=states.UNFINISHED
    ).filter(training_file=file) | FineTuningJob.objects.filter(
        organization=organization, status__in=states.UNFINISHED, validation_file=file
    )
    if in_use.exists():
        raise Conflict(
            f"File {file_id} is used by an unfinished job; cancel the job first.", param="file_id"
        )
    File.objects.filter(pk=file.pk).update(deleted_at=timezone.now())
    file.content.delete(save=False)
    return file


def result_file_create(*, job: FineTuningJob, stream: IO[bytes], filename: str) -> File:
    digest = hashlib.sha256()
    total = 0
    stream.seek(0)
    for chunk in _chunks(stream):
        digest.update(chunk)
        total += len(chunk)
    stream.seek(0)
    file_id = _new_id("file")
    stored = default_storage.save(
        f"results/{job.organization_id}/{file_id}.tar.gz", DjangoFile(stream)
    )
    return File.objects.create(
        id=file_id,
        organization_id=job.organization_id,
        filename=filename,
        purpose=File.Purpose.RESULTS,
        bytes=total,
        sha256=digest.hexdigest(),
        content=stored,
        status=File.Status.PROCESSED,
    )


# ---------------------------------------------------------------- events and transitions


def job_event_add(
    *,
    job_id: str,
    message: str,
    level: str = JobEvent.Level.INFO,
    type: str = JobEvent.Type.MESSAGE,
    data: dict[str, Any] | None = None,
) -> JobEvent:
    """Append an event with the job's next sequence number (a row-level atomic increment)."""
    with transaction.atomic():
        FineTuningJob.objects.filter(pk=job_id).update(event_seq=F("event_seq") + 1)
        seq = FineTuningJob.objects.filter(pk=job_id).values_list("event_seq", flat=True).get()
        return JobEvent.objects.create(
            job_id=job_id, seq=seq, level=level, type=type, message=message, data=data
        )


def job_transition(
    *,
    job_id: str,
    to: str,
    message: str,
    level: str = JobEvent.Level.INFO,
    data: dict[str, Any] | None = None,
    only_from: Iterable[str] | None = None,
    **fields: Any,
) -> FineTuningJob:
    """Move a job to `to` if its current state allows it; record the event. Raises otherwise."""
    _job_transition_apply(
        job_id=job_id,
        to=to,
        message=message,
        level=level,
        data=data,
        only_from=only_from,
        **fields,
    )
    return FineTuningJob.objects.get(pk=job_id)


def _job_transition_apply(
    *,
    job_id: str,
    to: str,
    message: str,
    level: str = JobEvent.Level.INFO,
    data: dict[str, Any] | None = None,
    only_from: Iterable[str] | None = None,
    **fields: Any,
) -> None:
    """job_transition without reading the job back.

    No savepoint: a refused transition raises only after the block (it wrote nothing), so a
    caller may catch it and go on; a database error inside aborts the caller's transaction
    (it would be unusable on PostgreSQL anyway), as it does the standalone call's own.
    """
    _jobs_transition_apply(
        job_ids=[job_id],
        to=to,
        message=message,
        level=level,
        data=data,
        only_from=only_from,
        **fields,
    )


def _jobs_transition_apply(
    *,
    job_ids: Sequence[str],
    to: str,
    message: str,
    level: str = JobEvent.Level.INFO,
    data: dict[str, Any] | None = None,
    only_from: Iterable[str] | None = None,
    per_job: dict[str, dict[str, Any]] | None = None,
    **fields: Any,
) -> None:
    """Move many jobs to `to` at once: one conditional UPDATE, one read of their event
    numbers, one INSERT of their events, whatever their number. `per_job` gives fields whose
    value differs per job (job id → {field: value}); `fields` are the same for all.

    Raises InvalidTransition (or NotFound) unless every job could move. For one job nothing
    was written then; for several, some may have moved: the caller rolls back (the admission
    pass does, its batch being one transaction).
    """
    ids = list(dict.fromkeys(job_ids))
    allowed = set(states.ALLOWED[S(to)])
    if only_from is not None:
        allowed &= set(only_from)
    now = timezone.now()
    if to in states.TERMINAL:
        fields.setdefault("finished_at", now)
    for name in {name for values in (per_job or {}).values() for name in values}:
        field = cast(Field, FineTuningJob._meta.get_field(name))  # a column, not a relation
        fields[name] = Case(
            *(
                When(pk=job_id, then=Value(values[name]))
                for job_id, values in (per_job or {}).items()
                if name in values
            ),
            default=F(name),
            output_field=field,
        )
    with transaction.atomic(savepoint=False):
        # The event's sequence number is taken in the same UPDATE (what job_event_add does).
        updated = FineTuningJob.objects.filter(pk__in=ids, status__in=allowed).update(
            status=to, updated_at=now, event_seq=F("event_seq") + 1, **fields
        )
        if updated == len(ids):
            seqs = dict(FineTuningJob.objects.filter(pk__in=ids).values_list("pk", "event_seq"))
            JobEvent.objects.bulk_create(
                JobEvent(
                    job_id=job_id,
                    seq=seqs[job_id],
                    level=level,
                    type=JobEvent.Type.MESSAGE,
                    message=message,
                    data=data,
                )
                for job_id in ids
            )
            from marketplace.api.webhooks.hooks import job_status_changed  # webhooks, on commit

            for job_id in ids:
                job_status_changed(job_id=job_id, status=to)
    if updated != len(ids):
        current = dict(FineTuningJob.objects.filter(pk__in=ids).values_list("pk", "status"))
        for job_id in ids:
            if job_id not in current:
                raise NotFound(f"No fine-tuning job {job_id!r}.", param="job_id")
        job_id, status = next((j, s) for j, s in current.items() if s not in allowed)
        raise InvalidTransition(
            f"Job {job_id} is {states.public_status(status)} ({status}); it cannot become {to}.",
            param="status",
        )
    for job_id in ids:
        logger.info("job %s -> %s", job_id, to, extra={"job_id": job_id, "status": to})


# ---------------------------------------------------------------- jobs


def _int_or_auto(value: Any, name: str, *, low: int, high: int, auto: int | None) -> int | None:
    if value in (None, "auto"):
        return auto
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise InvalidInput(
            f"hyperparameters.{name} must be 'auto' or an integer from {low} to {high}.",
            param=f"hyperparameters.{name}",
        )
    return value


def normalize_hyperparameters(raw: dict[str, Any] | None) -> dict[str, Any]:
    raw = dict(raw or {})
    known = {"n_epochs", "batch_size", "learning_rate_multiplier", "max_seq_length"}
    unknown = set(raw) - known
    if unknown:
        raise InvalidInput(
            f"Unknown hyperparameter(s): {', '.join(sorted(unknown))}. "
            f"Known: {', '.join(sorted(known))}.",
            param="hyperparameters",
        )
    multiplier = raw.get("learning_rate_multiplier", "auto")
    if multiplier == "auto":
        multiplier = 1.0
    if (
        isinstance(multiplier, bool)
        or not isinstance(multiplier, int | float)
        or not (0 < multiplier <= 100)
    ):
        raise InvalidInput(
            "hyperparameters.learning_rate_multiplier must be 'auto' or a number in (0, 100].",
            param="hyperparameters.learning_rate_multiplier",
        )
    return {
        "n_epochs": _int_or_auto(raw.get("n_epochs"), "n_epochs", low=1, high=50, auto=3),
        "batch_size": _int_or_auto(raw.get("batch_size"), "batch_size", low=1, high=256, auto=8),
        "learning_rate_multiplier": float(multiplier),
        "max_seq_length": _int_or_auto(
            raw.get("max_seq_length"), "max_seq_length", low=16, high=32768, auto=1024
        ),
    }


def normalize_lora(raw: dict[str, Any] | None) -> dict[str, Any]:
    raw = dict(raw or {})
    unknown = set(raw) - {"r", "alpha", "dropout", "target_modules", "use_rslora"}
    if unknown:
        raise InvalidInput(
            f"Unknown LoRA option(s): {', '.join(sorted(unknown))}. "
            "Known: r, alpha, dropout, target_modules, use_rslora.",
            param="lora",
        )
    lora = {**DEFAULT_LORA, **raw}
    r = lora["r"]
    cap = settings.PARTAGE_MAX_ADAPTER_RANK
    if isinstance(r, bool) or not isinstance(r, int) or not 1 <= r <= cap:
        raise InvalidInput(f"lora.r must be an integer from 1 to {cap}.", param="lora.r")
    alpha = lora["alpha"]
    if isinstance(alpha, bool) or not isinstance(alpha, int | float) or alpha <= 0:
        raise InvalidInput("lora.alpha must be a positive number.", param="lora.alpha")
    dropout = lora["dropout"]
    if isinstance(dropout, bool) or not isinstance(dropout, int | float) or not 0 <= dropout < 1:
        raise InvalidInput("lora.dropout must be a number in [0, 1).", param="lora.dropout")
    targets = lora["target_modules"]
    if targets != "all-linear" and (
        not isinstance(targets, list)
        or not targets
        or not all(isinstance(t, str) and t for t in targets)
    ):
        raise InvalidInput(
            "lora.target_modules must be 'all-linear' or a list of module names "
            "such as ['q_proj', 'v_proj'].",
            param="lora.target_modules",
        )
    if not isinstance(lora.get("use_rslora", False), bool):
        raise InvalidInput("lora.use_rslora must be true or false.", param="lora.use_rslora")
    return lora


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
            pending_reason="waiting: in the admission queue",
        )
        transaction.on_commit(_enqueue_admission)
    return job


ADMISSION_PENDING_KEY = "admission-pass-pending"


def _enqueue_admission() -> None:
    """Ask for an admission pass; with a shared (Redis) cache, at most one waits in the queue.

    One pass admits every queued job, so a burst of creates needs one, not one each: without
    this, 20 creates a second queue 20 passes a second, and dispatch waits behind them. The
    task clears the flag before it reads the queue; the timeout covers a lost message.
    """
    from django.core.cache import cache

    from workers import tasks

    if settings.REDIS_URL and not cache.add(ADMISSION_PENDING_KEY, 1, timeout=30):
        return  # a pass is queued and has not started: it will see this job
    tasks.admission_pass.delay()


def _enqueue(task_name: str, job_id: str) -> None:
    from workers import tasks

    getattr(tasks, task_name).delay(job_id)


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


def job_cancel(*, organization: Organization, job_id: str) -> FineTuningJob:
    job = FineTuningJob.objects.filter(organization=organization, pk=job_id).first()
    if job is None:
        raise NotFound(f"No fine-tuning job {job_id!r}.", param="job_id")
    if job.status in states.TERMINAL:
        raise InvalidTransition(
            f"Job {job_id} already {states.public_status(job.status)}; nothing to cancel.",
            param="job_id",
        )
    if job.status in {S.VALIDATING_FILES, S.QUEUED, S.PAUSED}:
        with transaction.atomic():
            job = job_transition(job_id=job_id, to=S.CANCELLED, message="Job cancelled")
            _job_ended(job)
        return job
    with transaction.atomic():
        job = job_transition(
            job_id=job_id, to=S.CANCELLING, message="Cancelling: stopping the trainer"
        )
        transaction.on_commit(lambda: _enqueue("job_stop", job_id))
    return job


def job_pause(*, organization: Organization, job_id: str) -> FineTuningJob:
    job = FineTuningJob.objects.filter(organization=organization, pk=job_id).first()
    if job is None:
        raise NotFound(f"No fine-tuning job {job_id!r}.", param="job_id")
    if job.status in {S.QUEUED, S.ADMITTED}:
        with transaction.atomic():
            job = job_transition(job_id=job_id, to=S.PAUSED, message="Job paused before it started")
            _job_ended(job)
        return job
    with transaction.atomic():
        job = job_transition(
            job_id=job_id,
            to=S.PAUSING,
            message="Pausing: writing a checkpoint",
            only_from={S.STARTING, S.RUNNING},
        )
        transaction.on_commit(lambda: _enqueue("job_stop", job_id))
    return job


def job_preempt(*, job_id: str, reason: str) -> FineTuningJob:
    """running → requeueing (quotas' preemption): stop the trainer, which writes a checkpoint
    and exits 4; the ended attempt then requeues the job to resume from that checkpoint."""
    with transaction.atomic():
        job = job_transition(
            job_id=job_id,
            to=S.REQUEUEING,
            message=f"Preempting: {reason}; a checkpoint is written and the job is requeued",
            level=JobEvent.Level.WARN,
            only_from={S.RUNNING},
        )
        transaction.on_commit(lambda: _enqueue("job_stop", job_id))
    return job


def job_resume(*, organization: Organization, job_id: str) -> FineTuningJob:
    job = FineTuningJob.objects.filter(organization=organization, pk=job_id).first()
    if job is None:
        raise NotFound(f"No fine-tuning job {job_id!r}.", param="job_id")
    with transaction.atomic():
        job = job_transition(
            job_id=job_id,
            to=S.QUEUED,
            message="Resumed: queued again, will continue from the latest checkpoint",
            only_from={S.PAUSED},
            pending_reason="waiting: in the admission queue",
        )
        transaction.on_commit(_enqueue_admission)
    return job


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
    from marketplace.billing.services import job_settle
    from marketplace.quotas.services import quota_release_for_job

    job_settle(job=job)
    quota_release_for_job(job_id=job.id)  # admitted but never started: nothing else frees it
    transaction.on_commit(_enqueue_admission)


# ---------------------------------------------------------------- attempts


def attempt_for_dispatch(*, job_id: str) -> JobAttempt | None:
    """admitted → starting with a new attempt, or the existing launching attempt (idempotent).

    Returns None when there is nothing to dispatch (the job moved on: cancelled, finished…).
    """
    with transaction.atomic():
        job = FineTuningJob.objects.select_for_update().filter(pk=job_id).first()
        if job is None:
            return None
        if job.status == S.STARTING:
            return (
                JobAttempt.objects.filter(job=job, number=job.attempt_count, ended_at__isnull=True)
                .select_related("job")
                .first()
            )
        if job.status != S.ADMITTED:
            return None
        number = job.attempt_count + 1
        attempt = JobAttempt.objects.create(
            job=job,
            number=number,
            executor=settings.PARTAGE_EXECUTOR,
            name=f"ft-{job.id.removeprefix('ftjob-')[:40]}-a{number}",
        )
        job_transition(
            job_id=job.id,
            to=S.STARTING,
            message=f"Starting attempt {number} on the {settings.PARTAGE_EXECUTOR} executor",
            attempt_count=number,
            started_at=job.started_at or timezone.now(),
        )
        attempt.job.refresh_from_db()
        return attempt


def attempt_launched(*, attempt: JobAttempt, handle: str) -> None:
    JobAttempt.objects.filter(pk=attempt.pk, handle="").update(handle=handle)


def attempt_logs_capture(*, attempt_id: int, logs: str) -> bool:
    """Keep the executor's copy of an attempt's output (the pod log, read before the pod is
    deleted) when it holds more than what is stored. Changes nothing else."""
    logs = logs[-200_000:]
    with transaction.atomic():
        attempt = JobAttempt.objects.select_for_update().filter(pk=attempt_id).first()
        if attempt is None or len(logs) <= len(attempt.logs):
            return False
        JobAttempt.objects.filter(pk=attempt_id).update(logs=logs)
    return True


def attempt_training_started(*, attempt: JobAttempt) -> None:
    """The trainer reported its first sign of life: starting → running, start metering."""
    with transaction.atomic():
        JobAttempt.objects.filter(pk=attempt.pk, training_started_at__isnull=True).update(
            training_started_at=timezone.now(), status=JobAttempt.Status.RUNNING
        )
        job = FineTuningJob.objects.get(pk=attempt.job_id)
        if job.status == S.STARTING and job.attempt_count == attempt.number:
            job_transition(
                job_id=job.id, to=S.RUNNING, message="Training started", only_from={S.STARTING}
            )


def _attempt_close(
    *, attempt: JobAttempt, status: str, exit_code: int | None, reason: str, logs: str | None
) -> bool:
    """Mark the attempt ended exactly once; False if it was already ended."""
    now = timezone.now()
    fields: dict[str, Any] = {
        "status": status,
        "exit_code": exit_code,
        "reason": reason[:2000],
        "ended_at": now,
    }
    if logs is not None and len(logs[-200_000:]) >= len(attempt.logs):
        fields["logs"] = logs[-200_000:]  # never replace a fuller copy captured earlier
    closed = JobAttempt.objects.filter(pk=attempt.pk, ended_at__isnull=True).update(**fields)
    if not closed:
        return False
    attempt.refresh_from_db()
    if attempt.training_started_at is not None:
        seconds = Decimal((now - attempt.training_started_at).total_seconds()).quantize(
            Decimal("0.001")
        )
        gpu_seconds = seconds * max(attempt.job.gpu_count, 1)
        JobAttempt.objects.filter(pk=attempt.pk).update(gpu_seconds=gpu_seconds)
        attempt.gpu_seconds = gpu_seconds
    from marketplace.billing.services import attempt_meter
    from marketplace.quotas.services import quota_release

    attempt_meter(attempt=attempt)
    quota_release(job_id=attempt.job_id, attempt_number=attempt.number)
    return True


def attempt_ended(
    *,
    attempt_id: int,
    phase: str,
    exit_code: int | None = None,
    reason: str = "",
    logs: str | None = None,
) -> FineTuningJob:
    """Apply the end of an attempt, seen by the executor, the reconciler or the agent. Idempotent."""
    from workers.executors.base import EXIT_PREEMPTED, EXIT_USER_ERROR, Phase

    with transaction.atomic():
        attempt = JobAttempt.objects.select_for_update().select_related("job").get(pk=attempt_id)
        job = FineTuningJob.objects.select_for_update().get(pk=attempt.job_id)
        current = job.attempt_count == attempt.number
        if phase == Phase.SUCCEEDED:
            # Success is recorded when the adapter arrives; a clean exit without it is a fault.
            done = job.status in {S.SUCCEEDED, S.FINALIZING}
            closed = _attempt_close(
                attempt=attempt,
                status=JobAttempt.Status.SUCCEEDED if done else JobAttempt.Status.FAILED,
                exit_code=exit_code,
                reason=reason or ("" if done else "trainer exited without delivering an adapter"),
                logs=logs,
            )
            if closed and current and not done and job.status not in states.TERMINAL:
                return job_fail(
                    job_id=job.id,
                    failure_class=FailureClass.PLATFORM_ERROR,
                    code="no_adapter",
                    message="The trainer exited without delivering an adapter.",
                )
            return FineTuningJob.objects.get(pk=job.id)
        status = {
            Phase.DISRUPTED: JobAttempt.Status.DISRUPTED,
            Phase.MISSING: JobAttempt.Status.LOST,
        }.get(Phase(phase), JobAttempt.Status.FAILED)
        if job.status == S.CANCELLING:
            status = JobAttempt.Status.CANCELLED
        closed = _attempt_close(
            attempt=attempt, status=status, exit_code=exit_code, reason=reason, logs=logs
        )
        if not closed or not current or job.status in states.TERMINAL:
            return FineTuningJob.objects.get(pk=job.id)
        return _after_attempt_stopped(
            job=job,
            phase=phase,
            exit_code=exit_code,
            reason=reason,
            user_error=exit_code == EXIT_USER_ERROR,
            preempted=exit_code == EXIT_PREEMPTED,
        )


MAX_ATTEMPTS = 5


def _after_attempt_stopped(
    *,
    job: FineTuningJob,
    phase: str,
    exit_code: int | None,
    reason: str,
    user_error: bool,
    preempted: bool,
) -> FineTuningJob:
    from workers.executors.base import Phase

    if job.status == S.CANCELLING:
        ended = job_transition(job_id=job.id, to=S.CANCELLED, message="Job cancelled")
        _job_ended(ended)
        return ended
    if job.status == S.PAUSING:
        ended = job_transition(
            job_id=job.id,
            to=S.PAUSED,
            message="Job paused; resume continues from the latest checkpoint",
        )
        _job_ended(ended)
        return ended
    if job.status == S.REQUEUEING and not user_error:  # stopped by job_preempt
        requeued = job_transition(
            job_id=job.id,
            to=S.QUEUED,
            message="Preempted: queued again; will resume from the latest checkpoint",
            pending_reason="waiting: preempted; will resume from the latest checkpoint",
        )
        transaction.on_commit(_enqueue_admission)
        return requeued
    if user_error:
        last_error = (
            JobEvent.objects.filter(job=job, level=JobEvent.Level.ERROR).order_by("-seq").first()
        )
        detail = (
            last_error.message
            if last_error
            else reason or "the training data or settings were rejected"
        )
        return job_fail(
            job_id=job.id,
            failure_class=FailureClass.USER_ERROR,
            code="invalid_training_data",
            message=detail,
        )
    disrupted = phase in {Phase.DISRUPTED, Phase.MISSING} or preempted
    if disrupted and job.attempt_count < MAX_ATTEMPTS:
        why = reason or ("the trainer was preempted" if preempted else "the attempt was lost")
        requeued = job_transition(
            job_id=job.id,
            to=S.REQUEUEING,
            message=f"Attempt {job.attempt_count} interrupted ({why}); requeueing to resume from the latest checkpoint",
            level=JobEvent.Level.WARN,
        )
        requeued = job_transition(
            job_id=job.id,
            to=S.QUEUED,
            message="Queued again",
            pending_reason="waiting: requeued after an interruption; will resume from the latest checkpoint",
        )
        transaction.on_commit(_enqueue_admission)
        return requeued
    failure = FailureClass.PROVIDER_ERROR if disrupted else FailureClass.PLATFORM_ERROR
    return job_fail(
        job_id=job.id,
        failure_class=failure,
        code="training_failed",
        message=reason or f"the trainer stopped with exit code {exit_code}",
    )


# ---------------------------------------------------------------- reports from the trainer


def _current_attempt(job_id: str, attempt_number: int) -> JobAttempt:
    attempt = (
        JobAttempt.objects.select_related("job")
        .filter(job_id=job_id, number=attempt_number)
        .first()
    )
    if attempt is None:
        raise NotFound(f"No attempt {attempt_number} for job {job_id}.")
    return attempt


def trainer_events_record(
    *, job_id: str, attempt_number: int, events: list[dict[str, Any]]
) -> dict[str, bool]:
    """Relay the trainer's structured events into job events. Returns control flags for it."""
    attempt = _current_attempt(job_id, attempt_number)
    if attempt.training_started_at is None and attempt.ended_at is None:
        attempt_training_started(attempt=attempt)
    for event in events[:500]:
        _trainer_event_record(attempt, event)
    job = FineTuningJob.objects.get(pk=job_id)
    from marketplace.billing.services import job_over_budget

    return {
        "stop": job.status in {S.CANCELLING, S.PAUSING, S.REQUEUEING}
        or attempt.ended_at is not None,
        "finish_now": job_over_budget(job=job),
    }


def _trainer_event_record(attempt: JobAttempt, event: dict[str, Any]) -> None:
    kind = event.get("event")
    job_id = attempt.job_id
    data = {k: v for k, v in event.items() if k != "event"}
    if kind == "progress":
        FineTuningJob.objects.filter(pk=job_id).update(
            progress=data, trained_tokens=data.get("trained_tokens")
        )
        loss = data.get("train_loss")
        message = (
            f"Step {data.get('step')}/{data.get('total_steps')}: training loss={loss:.4f}"
            if isinstance(loss, int | float)
            else f"Step {data.get('step')}"
        )
        job_event_add(job_id=job_id, message=message, type=JobEvent.Type.METRICS, data=data)
    elif kind == "validation":
        job_event_add(
            job_id=job_id,
            message=f"Step {data.get('step')}: validation loss={data.get('valid_loss')}",
            type=JobEvent.Type.METRICS,
            data=data,
        )
    elif kind == "data_report":
        level = (
            JobEvent.Level.WARN
            if data.get("truncated") or data.get("dropped") or data.get("no_loss_tokens")
            else JobEvent.Level.INFO
        )
        job_event_add(
            job_id=job_id,
            message=(
                f"Data: {data.get('examples')} examples, {data.get('tokens')} tokens "
                f"({data.get('loss_tokens')} loss-bearing); truncated {data.get('truncated', 0)}, "
                f"dropped {data.get('dropped', 0)}, without loss tokens: {len(data.get('no_loss_tokens') or [])}"
            ),
            level=level,
            data=data,
        )
    elif kind == "error":
        job_event_add(
            job_id=job_id,
            message=str(data.get("message", "trainer error")),
            level=JobEvent.Level.ERROR,
            data=data,
        )
    elif kind in {"preempted", "completed", "checkpoint"}:
        job_event_add(job_id=job_id, message=f"Trainer: {kind}", data=data)
    elif kind == "log":
        job_event_add(job_id=job_id, message=str(data.get("message", ""))[:2000], data=None)


def checkpoint_store(
    *, job_id: str, attempt_number: int, step: int, metrics: dict[str, Any], archive: IO[bytes]
) -> Checkpoint:
    attempt = _current_attempt(job_id, attempt_number)
    digest = hashlib.sha256()
    size = 0
    archive.seek(0)
    for chunk in _chunks(archive):
        digest.update(chunk)
        size += len(chunk)
    archive.seek(0)
    existing = Checkpoint.objects.filter(job_id=job_id, step=step).first()
    if existing:
        return existing
    stored = default_storage.save(
        f"checkpoints/{job_id}/step-{step:06d}.tar.gz", DjangoFile(archive)
    )
    try:
        checkpoint = Checkpoint.objects.create(
            job_id=job_id,
            attempt=attempt,
            step=step,
            metrics=metrics,
            archive=stored,
            sha256=digest.hexdigest(),
            bytes=size,
        )
    except IntegrityError:
        default_storage.delete(stored)
        return Checkpoint.objects.get(job_id=job_id, step=step)
    job_event_add(
        job_id=job_id,
        message=f"Checkpoint written at step {step}",
        data={"step": step, "metrics": metrics},
    )
    from marketplace.api.webhooks.hooks import checkpoint_written  # webhooks, on commit

    checkpoint_written(job_id=job_id, checkpoint_id=checkpoint.public_id)
    return checkpoint


def adapter_store(
    *, job_id: str, attempt_number: int, archive: IO[bytes], manifest: dict[str, Any]
) -> FineTuningJob:
    """The trainer delivered the adapter: running → finalizing → succeeded."""
    attempt = _current_attempt(job_id, attempt_number)
    job = attempt.job
    if job.status == S.SUCCEEDED:
        return job
    with transaction.atomic():
        job = FineTuningJob.objects.select_for_update().get(pk=job_id)
        if job.status == S.SUCCEEDED:
            return job
        if job.status == S.STARTING:
            attempt_training_started(attempt=attempt)
        job_transition(job_id=job_id, to=S.FINALIZING, message="Finalizing: storing the adapter")
        result = result_file_create(job=job, stream=archive, filename=f"{job_id}-adapter.tar.gz")
        suffix = f":{job.suffix}" if job.suffix else ""
        job = job_transition(
            job_id=job_id,
            to=S.SUCCEEDED,
            message="The job has successfully completed",
            result_file=result,
            manifest=manifest,
            fine_tuned_model=f"ft:{job.model}:{job.organization.slug}{suffix}:{job_id.removeprefix('ftjob-')[:8]}",
            trained_tokens=manifest.get("trained_tokens") or job.trained_tokens,
        )
        _job_ended(job)
    return job


def manifest_from_json(text: str) -> dict[str, Any]:
    try:
        manifest = json.loads(text)
    except json.JSONDecodeError as e:
        raise InvalidInput(f"manifest is not valid JSON: {e.msg}", param="manifest") from e
    if not isinstance(manifest, dict):
        raise InvalidInput("manifest must be a JSON object", param="manifest")
    return manifest


def spooled(upload: IO[bytes]) -> IO[bytes]:
    tmp = tempfile.SpooledTemporaryFile(max_size=8 << 20)  # noqa: SIM115 - returned to caller
    for chunk in _chunks(upload):
        tmp.write(chunk)
    tmp.seek(0)
    return tmp
