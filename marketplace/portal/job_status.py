"""One sentence that says where a job is, shown once on its page and kept fresh by the live poll.

Every element of the page that describes the job's state (status badge, progress text, pending
reason, attempts) derives from the same status, so they can no longer contradict each other.
"""

from __future__ import annotations

from typing import Any

from marketplace.finetuning.models import FineTuningJob, JobStatus
from marketplace.portal.templatetags.portal import duration

S = JobStatus


def _training(job: FineTuningJob) -> str:
    progress = job.progress or {}
    step, total, eta = progress.get("step"), progress.get("total_steps"), progress.get("eta_s")
    if isinstance(step, int) and isinstance(total, int) and total:
        left = f", about {duration(eta)} left" if eta is not None else ""
        return f"Training: step {step} of {total}{left}."
    return "Training has started; the first progress report arrives within a minute."


def _waiting(job: FineTuningJob) -> str:
    reason = (job.pending_reason or "").strip()
    if reason.startswith("waiting: "):
        reason = reason.removeprefix("waiting: ")
    text = f"Queued: {reason}" if reason else "Queued: waiting for the next admission pass."
    return text if text.endswith(".") else text + "."


_FIXED: dict[str, str] = {
    S.VALIDATING_FILES: "Checking your training data before the job is queued.",
    S.ADMITTED: "Admitted: GPUs are reserved and the trainer is being started.",
    S.STARTING: "Starting: the trainer is loading the base model and your data.",
    S.FINALIZING: "Saving: the adapter is being written, hashed and uploaded.",
    S.SUCCEEDED: "Succeeded: your adapter is ready to download.",
    S.CANCELLING: "Cancelling: the trainer is being stopped.",
    S.CANCELLED: "Cancelled.",
    S.PAUSING: "Pausing: the trainer is writing a checkpoint, then stops.",
    S.PAUSED: "Paused: resume it to continue from its last checkpoint.",
    S.REQUEUEING: "Going back to the queue: it resumes from its last checkpoint.",
}


def job_status_message(job: FineTuningJob) -> str:
    status = str(job.status)
    if status == S.RUNNING:
        return _training(job)
    if status == S.QUEUED:
        return _waiting(job)
    if status == S.FAILED:
        error: dict[str, Any] = job.error or {}
        return f"Failed: {error.get('message') or 'the job stopped with an error.'}"
    return _FIXED.get(status, status)


def job_progress_label(job: FineTuningJob) -> str:
    """The short text beside the progress bar when no percentage is known yet."""
    status = str(job.status)
    if status in {S.VALIDATING_FILES, S.QUEUED, S.PAUSED, S.REQUEUEING}:
        return "waiting"
    if status in {S.ADMITTED, S.STARTING, S.RUNNING}:
        return "starting"
    return ""
