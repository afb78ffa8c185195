"""Bridges jobs in the database and the executor: launch, stop, and level-based resync.

Every function here is idempotent: it may run twice (Celery redelivery, beat overlap) without
starting a second trainer or double-counting anything.
"""

from __future__ import annotations

import logging
from datetime import timedelta

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from marketplace.errors import InvalidTransition
from marketplace.finetuning import services, states
from marketplace.finetuning.models import FineTuningJob, JobAttempt
from marketplace.finetuning.models import JobStatus as S
from marketplace.finetuning.tokens import job_token_issue
from workers.executors import get_executor
from workers.executors.base import Executor, LaunchSpec
from workers.protocol import Phase

logger = logging.getLogger("partage.dispatch")


def launch_spec(attempt: JobAttempt) -> LaunchSpec:
    job = attempt.job
    from marketplace.capacity.selectors import launch_settings_for_job

    pool = launch_settings_for_job(job)
    deadline_seconds = LaunchSpec.active_deadline_seconds
    return LaunchSpec(
        job_id=job.id,
        org_id=job.organization.public_id,
        attempt=attempt.number,
        name=attempt.name,
        callback_url=f"{settings.PARTAGE_INTERNAL_URL}/internal/v1",
        # The token dies with the attempt: it cannot outlive the deadline the trainer runs under.
        token=job_token_issue(
            job_id=job.id, attempt=attempt.number, deadline_seconds=deadline_seconds
        ),
        active_deadline_seconds=deadline_seconds,
        base_model=job.model,
        gpu_count=job.gpu_count,
        gpu_flavor=job.gpu_flavor,
        pool=pool,
        env={"PARTAGE_MODEL_CACHE": str(settings.PARTAGE_MODEL_CACHE)},
    )


def executor_for(attempt: JobAttempt) -> Executor:
    return get_executor(attempt.executor)


def job_dispatch(*, job_id: str) -> str | None:
    """Start the job's current attempt on its executor. Returns the handle, or None."""
    attempt = services.attempt_for_dispatch(job_id=job_id)
    if attempt is None:
        return None
    spec = launch_spec(attempt)
    handle = executor_for(attempt).launch(spec)
    services.attempt_launched(attempt=attempt, handle=handle)
    logger.info("dispatched %s", spec.name, extra={"job_id": job_id, "org_id": spec.org_id})
    return handle


def job_stop(*, job_id: str) -> None:
    """Ask the executor to stop the live attempt (cancel or pause)."""
    job = FineTuningJob.objects.filter(pk=job_id).first()
    if job is None or job.status not in {S.CANCELLING, S.PAUSING, S.REQUEUEING}:
        return
    attempt = (
        JobAttempt.objects.select_related("job", "job__organization")
        .filter(job=job, number=job.attempt_count, ended_at__isnull=True)
        .first()
    )
    if attempt is None:
        # Nothing runs for this admission (never launched; a re-admitted job's earlier attempts
        # have all ended): settle the state now. An attempt that ends while the job is
        # cancelling or pausing settles the job itself; if one just did, this one loses.
        if job.status != S.REQUEUEING:
            target = S.CANCELLED if job.status == S.CANCELLING else S.PAUSED
            try:
                with transaction.atomic():
                    ended = services.job_transition(
                        job_id=job_id, to=target, message=f"Job {target}", only_from={job.status}
                    )
                    services._job_ended(ended)
            except InvalidTransition:
                pass
        return
    executor, spec = executor_for(attempt), launch_spec(attempt)
    # Deleting the Job deletes its pods and their logs: keep what they said first.
    services.attempt_logs_capture(attempt_id=attempt.pk, logs=executor.logs(spec))
    executor.cancel(spec)


def attempt_observe(*, attempt: JobAttempt) -> Phase:
    """Compare one unfinished attempt with its executor and apply what ended."""
    executor = executor_for(attempt)
    spec = launch_spec(attempt)
    seen = executor.status(spec)
    if seen.phase in {Phase.PENDING, Phase.RUNNING}:
        return seen.phase
    logs = executor.logs(spec)
    services.attempt_ended(
        attempt_id=attempt.pk,
        phase=seen.phase,
        exit_code=seen.exit_code,
        reason=seen.reason,
        logs=logs or None,  # a vanished pod's empty log must not erase a captured one
    )
    return seen.phase


STUCK_AFTER = timedelta(seconds=60)


def resync() -> dict[str, int]:
    """Level-based pass over every unfinished job: the database against the executors."""
    counts = {"observed": 0, "ended": 0, "redispatched": 0}
    unfinished = JobAttempt.objects.select_related("job", "job__organization").filter(
        ended_at__isnull=True, job__status__in=states.ACTIVE | {S.REQUEUEING}
    )
    for attempt in unfinished:
        counts["observed"] += 1
        if attempt.handle == "" and attempt.job.status == S.STARTING:
            if timezone.now() - attempt.created_at > STUCK_AFTER:
                job_dispatch(job_id=attempt.job_id)  # launch is idempotent per attempt name
                counts["redispatched"] += 1
            continue
        if attempt_observe(attempt=attempt) not in {Phase.PENDING, Phase.RUNNING}:
            counts["ended"] += 1
    stale_admitted = FineTuningJob.objects.filter(
        status=S.ADMITTED, admitted_at__lt=timezone.now() - STUCK_AFTER
    ).values_list("id", flat=True)
    for job_id in stale_admitted:
        job_dispatch(job_id=job_id)
        counts["redispatched"] += 1
    for job_id in (
        FineTuningJob.objects.filter(
            status__in=[S.CANCELLING, S.PAUSING, S.REQUEUEING], attempts__ended_at__isnull=True
        )
        .values_list("id", flat=True)
        .distinct()
    ):
        job_stop(job_id=job_id)
    return counts
