"""Admission and quota accounting.

Foundation version: with no pools and quotas configured, every queued job is admitted in
priority then age order. The quotas issue replaces `admission_pass` with quota-, capacity- and
fair-share-aware admission; `quota_release` is called exactly once per ended attempt.
"""

from __future__ import annotations

from marketplace.finetuning.models import FineTuningJob, JobStatus


def admission_pass(*, limit: int = 100) -> list[str]:
    from marketplace.finetuning.services import job_admit

    admitted: list[str] = []
    queued = FineTuningJob.objects.filter(status=JobStatus.QUEUED).order_by("-priority", "created_at")
    for job_id in queued.values_list("id", flat=True)[:limit]:
        job_admit(job_id=job_id, placement_reason="embedded default: local executor")
        admitted.append(job_id)
    return admitted


def quota_release(*, job_id: str, attempt_number: int) -> None:
    """Free what the attempt held. Foundation: nothing is held yet."""
    return None
