"""What the trainer reports for its attempt: events and progress, checkpoints, the adapter."""

from __future__ import annotations

import json
from typing import IO, Any

from django.core.files import File as DjangoFile
from django.core.files.storage import default_storage
from django.db import IntegrityError, transaction
from django.utils import timezone

from marketplace.errors import InvalidInput, NotFound
from marketplace.events.services import event_record
from marketplace.finetuning.charging import job_charging
from marketplace.finetuning.models import Checkpoint, FineTuningJob, JobAttempt, JobEvent
from marketplace.finetuning.models import JobStatus as S
from marketplace.finetuning.services.attempts import attempt_training_started
from marketplace.finetuning.services.files import (
    residency_check_storage,
    result_file_create,
    stream_digest,
)
from marketplace.finetuning.services.jobs import _job_ended
from marketplace.finetuning.services.transitions import job_event_add, job_transition
from workers.protocol import TrainerEvent


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

    return {
        "stop": job.status in {S.CANCELLING, S.PAUSING, S.REQUEUEING}
        or attempt.ended_at is not None,
        "finish_now": job_charging().job_over_budget(job=job),
    }


def _trainer_event_record(attempt: JobAttempt, event: dict[str, Any]) -> None:
    kind = event.get("event")
    job_id = attempt.job_id
    data = {k: v for k, v in event.items() if k != "event"}
    if kind == TrainerEvent.PROGRESS:
        # When it was reported: the admission pass turns eta_s into an expected end with it.
        data["reported_at"] = timezone.now().isoformat()
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
    elif kind == TrainerEvent.VALIDATION:
        job_event_add(
            job_id=job_id,
            message=f"Step {data.get('step')}: validation loss={data.get('valid_loss')}",
            type=JobEvent.Type.METRICS,
            data=data,
        )
    elif kind == TrainerEvent.DATA_REPORT:
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
    elif kind == TrainerEvent.ERROR:
        job_event_add(
            job_id=job_id,
            message=str(data.get("message", "trainer error")),
            level=JobEvent.Level.ERROR,
            data=data,
        )
    elif kind in {TrainerEvent.PREEMPTED, TrainerEvent.COMPLETED, TrainerEvent.CHECKPOINT}:
        job_event_add(job_id=job_id, message=f"Trainer: {kind}", data=data)
    elif kind == TrainerEvent.LOG:
        job_event_add(job_id=job_id, message=str(data.get("message", ""))[:2000], data=None)


def checkpoint_store(
    *, job_id: str, attempt_number: int, step: int, metrics: dict[str, Any], archive: IO[bytes]
) -> Checkpoint:
    attempt = _current_attempt(job_id, attempt_number)
    residency_check_storage(
        organization_id=attempt.job.organization_id, what="checkpoints", job=attempt.job
    )
    sha256, size = stream_digest(archive)
    existing = Checkpoint.objects.filter(job_id=job_id, step=step).first()
    if existing:
        return existing
    stored = default_storage.save(
        f"checkpoints/{job_id}/step-{step:06d}.tar.gz", DjangoFile(archive)
    )
    try:
        # The checkpoint, its line in the job's log and its announcement commit together.
        with transaction.atomic():
            checkpoint = Checkpoint.objects.create(
                job_id=job_id,
                attempt=attempt,
                step=step,
                metrics=metrics,
                archive=stored,
                sha256=sha256,
                bytes=size,
            )
            job_event_add(
                job_id=job_id,
                message=f"Checkpoint written at step {step}",
                data={"step": step, "metrics": metrics},
            )
            event_record(
                event_type="fine_tuning.job.checkpoint.created",
                organization_id=attempt.job.organization_id,
                subject_id=checkpoint.public_id,
                data={"fine_tuning_job_id": job_id},
            )
    except IntegrityError:
        default_storage.delete(stored)
        return Checkpoint.objects.get(job_id=job_id, step=step)
    return checkpoint


def adapter_store(
    *, job_id: str, attempt_number: int, archive: IO[bytes], manifest: dict[str, Any]
) -> FineTuningJob:
    """The trainer delivered the adapter: running → finalizing → succeeded."""
    attempt = _current_attempt(job_id, attempt_number)
    job = attempt.job
    if job.status == S.SUCCEEDED:
        return job
    from marketplace.finetuning.provenance import adapter_archive_sign

    residency_check_storage(organization_id=job.organization_id, what="the adapter", job=job)
    # Signed before the transaction: re-packing streams the whole archive once.
    signed = adapter_archive_sign(job=job, archive=archive, manifest=manifest)
    try:
        return _adapter_record(job_id=job_id, attempt=attempt, archive=signed, manifest=manifest)
    finally:
        signed.close()


def _adapter_record(
    *, job_id: str, attempt: JobAttempt, archive: IO[bytes], manifest: dict[str, Any]
) -> FineTuningJob:
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
