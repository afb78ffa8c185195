"""Bridges jobs in the database and the executor: launch, stop, and level-based resync.

Every function here is idempotent: it may run twice (Celery redelivery, beat overlap) without
starting a second trainer or double-counting anything.
"""

from __future__ import annotations

import json
import logging
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from marketplace.errors import InvalidTransition, PartageError
from marketplace.finetuning import services, states
from marketplace.finetuning.models import FineTuningJob, JobAttempt
from marketplace.finetuning.models import JobStatus as S
from marketplace.finetuning.tokens import job_token_issue
from workers.executors import get_executor
from workers.executors.base import Executor, LaunchSpec
from workers.protocol import Phase
from workers.spool import Spool

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
        env={
            "PARTAGE_MODEL_CACHE": str(settings.PARTAGE_MODEL_CACHE),
            # The agent retries its reports to Partage until then (workers/agent.py).
            "PARTAGE_JOB_DEADLINE": str(int(job_deadline(attempt).timestamp())),
        },
    )


def job_deadline(attempt: JobAttempt) -> datetime:
    """The end of the job's admission, else the default longest run from the attempt's start."""
    from marketplace.quotas.selectors import job_deadline as admission_end

    return admission_end(job_id=attempt.job_id) or attempt.created_at + timedelta(
        hours=settings.PARTAGE_DEFAULT_MAX_JOB_HOURS
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
    # What the agent produced but could not deliver (Partage was down until it gave up, or it
    # died) is delivered now, in order, before the end is judged: an adapter is not lost.
    spool_dir = executor.spool_dir(spec)
    if spool_dir is not None and spool_replay(attempt=attempt, directory=spool_dir):
        attempt.refresh_from_db()
        if attempt.ended_at is not None:  # the spool held the agent's own exit report
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


def spool_replay(*, attempt: JobAttempt, directory: Path) -> int:
    """Deliver an ended agent's spooled reports through the services its HTTP calls reach.
    Returns how many were delivered; a refused one (a stale attempt) is set aside."""
    if not directory.is_dir():
        return 0
    spool = Spool(directory)
    stale = FineTuningJob.objects.filter(pk=attempt.job_id).values_list("attempt_count", flat=True)
    if stale.first() != attempt.number:  # as the internal API refuses a superseded attempt
        for entry in spool.pending():
            spool.reject(entry, f"attempt {attempt.number} was superseded")
        return 0
    delivered = 0
    for entry in spool.pending():
        kind, body, archive = spool.read(entry)
        try:
            _report_apply(attempt, kind, body, archive)
        except PartageError as e:
            logger.warning(
                "spooled %s refused: %s", entry.name, e, extra={"job_id": attempt.job_id}
            )
            spool.reject(entry, str(e))
            continue
        spool.remove(entry)
        delivered += 1
    if delivered:
        logger.warning(
            "delivered %d spooled report(s) of %s", delivered, attempt.name,
            extra={"job_id": attempt.job_id},
        )  # fmt: skip
    return delivered


def _report_apply(
    attempt: JobAttempt, kind: str, body: dict[str, Any], archive: Path | None
) -> None:
    job_id, number = attempt.job_id, attempt.number
    if kind == "events":
        services.trainer_events_record(job_id=job_id, attempt_number=number, events=body["events"])
    elif kind == "log":
        services.attempt_log_report(
            job_id=job_id, attempt_number=number, logs=str(body.get("logs") or "")
        )
    elif kind == "exit":
        services.attempt_exit_report(
            job_id=job_id, attempt_number=number, exit_code=int(body["exit_code"]),
            logs=str(body.get("logs") or ""),
        )  # fmt: skip
    else:
        assert archive is not None, kind
        with open(archive, "rb") as stream:
            if kind == "checkpoint":
                services.checkpoint_store(
                    job_id=job_id, attempt_number=number, step=int(body["step"]),
                    metrics=json.loads(body.get("metrics") or "{}"), archive=stream,
                )  # fmt: skip
            else:
                services.adapter_store(
                    job_id=job_id, attempt_number=number, archive=stream,
                    manifest=services.manifest_from_json(body["manifest"]),
                    eval_report=services.eval_from_json(body.get("eval") or ""),
                )  # fmt: skip


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
