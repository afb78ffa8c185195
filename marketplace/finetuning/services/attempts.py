"""Attempts as the executor sees them: dispatch, launch, logs, the start of training, and the
end of an attempt (metered, then its job requeued, paused, cancelled or failed)."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from marketplace.errors import NotFound
from marketplace.finetuning import states
from marketplace.finetuning.admission import admission
from marketplace.finetuning.charging import job_charging
from marketplace.finetuning.models import FailureClass, FineTuningJob, JobAttempt, JobEvent
from marketplace.finetuning.models import JobStatus as S
from marketplace.finetuning.services.jobs import (
    _job_ended,
    _job_requeue,
    job_fail,
)
from marketplace.finetuning.services.transitions import job_event_add, job_transition


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

    job_charging().attempt_meter(attempt=attempt)
    admission().release_attempt(job_id=attempt.job_id, attempt_number=attempt.number)
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
    from workers.protocol import EXIT_PREEMPTED, EXIT_USER_ERROR, Phase

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


def attempt_exit_report(
    *, job_id: str, attempt_number: int, exit_code: int, logs: str
) -> FineTuningJob:
    """The agent's report of how its attempt ended (over HTTP, or replayed from its spool)."""
    from workers.protocol import EXIT_KILLED, EXIT_OK, EXIT_OUT_OF_MEMORY, exit_phase

    attempt = JobAttempt.objects.filter(job_id=job_id, number=attempt_number).first()
    if attempt is None:
        raise NotFound("No such attempt.")
    # A trainer killed on its own (the OOM killer, a stray SIGKILL) is interrupted like one
    # killed with its whole process group or pod: retried from the latest checkpoint.
    phase = exit_phase(exit_code)
    reason = {
        EXIT_OK: "",
        EXIT_KILLED: "the trainer was killed",
        EXIT_OUT_OF_MEMORY: "the trainer ran out of memory",
    }.get(exit_code, f"trainer exited with code {exit_code}")
    return attempt_ended(
        attempt_id=attempt.pk, phase=phase, exit_code=exit_code, reason=reason, logs=logs
    )


LIVE_LOG_CHARS = 100_000


def attempt_log_report(*, job_id: str, attempt_number: int, logs: str) -> bool:
    """The trainer's log so far (its latest LIVE_LOG_CHARS), sent by the agent while the attempt
    runs, so that the job page shows it live. It replaces what came before (each report is the
    whole tail), and only while the attempt runs: the exit report's log is the last word.
    Returns whether it was taken."""
    if not JobAttempt.objects.filter(job_id=job_id, number=attempt_number).exists():
        raise NotFound("No such attempt.")
    taken = JobAttempt.objects.filter(
        job_id=job_id, number=attempt_number, ended_at__isnull=True
    ).update(logs=logs[-LIVE_LOG_CHARS:])
    return bool(taken)


def out_of_memory_advice(job: FineTuningJob) -> str:
    """What the user can change when training runs out of memory."""
    hp = job.hyperparameters or {}
    batch = hp.get("batch_size")
    length = hp.get("max_seq_length")
    return (
        "Training ran out of memory. Lower hyperparameters.batch_size"
        + (f" (now {batch})" if batch else "")
        + " or the sequence length (max_seq_length"
        + (f", now {length}" if length else "")
        + "), use shorter examples, or choose a GPU flavor with more memory."
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
    from workers.protocol import Phase

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
        return _job_requeue(
            job,
            message="Preempted: queued again; will resume from the latest checkpoint",
            pending_reason="waiting: preempted; will resume from the latest checkpoint",
        )
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
    from workers.protocol import EXIT_OUT_OF_MEMORY

    disrupted = phase in {Phase.DISRUPTED, Phase.MISSING} or preempted
    out_of_memory = exit_code == EXIT_OUT_OF_MEMORY
    if out_of_memory:
        job_event_add(job_id=job.id, level=JobEvent.Level.WARN, message=out_of_memory_advice(job))
    if disrupted and job.attempt_count < MAX_ATTEMPTS:
        why = reason or ("the trainer was preempted" if preempted else "the attempt was lost")
        job_transition(
            job_id=job.id,
            to=S.REQUEUEING,
            message=f"Attempt {job.attempt_count} interrupted ({why}); requeueing to resume from the latest checkpoint",
            level=JobEvent.Level.WARN,
        )
        return _job_requeue(
            job,
            message="Queued again",
            pending_reason="waiting: requeued after an interruption; will resume from the latest checkpoint",
        )
    if out_of_memory:
        # Admitted as fitting (job_fit_check): the platform's estimate was wrong, so the
        # customer is not charged (REFERENCE §6); the message says what to change.
        return job_fail(
            job_id=job.id,
            failure_class=FailureClass.PLATFORM_ERROR,
            code="out_of_memory",
            message=out_of_memory_advice(job),
        )
    failure = FailureClass.PROVIDER_ERROR if disrupted else FailureClass.PLATFORM_ERROR
    return job_fail(
        job_id=job.id,
        failure_class=failure,
        code="training_failed",
        message=reason or f"the trainer stopped with exit code {exit_code}",
    )
