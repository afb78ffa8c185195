"""Quota release: exactly once per allocation, by a conditional UPDATE … WHERE released_at IS NULL."""

from __future__ import annotations

from decimal import Decimal

from django.db import transaction
from django.db.models import Exists, OuterRef
from django.utils import timezone

from marketplace.finetuning.models import JobAttempt
from marketplace.quotas.models import Allocation
from marketplace.quotas.services.admission import admission_pass_request


def quota_release(*, job_id: str, attempt_number: int) -> bool:
    """Free what the ended attempt held. True the one time it releases; False after that.

    Called by finetuning when an attempt has ended (every pod gone), whatever the path.
    """
    attempt = (
        JobAttempt.objects.filter(job_id=job_id, number=attempt_number)
        .values_list("gpu_seconds", "status")
        .first()
    )
    gpu_seconds, status = attempt if attempt else (Decimal("0"), "ended")
    released = Allocation.objects.filter(
        job_id=job_id, attempt_number=attempt_number, released_at__isnull=True
    ).update(
        released_at=timezone.now(),
        used_gpu_hours=(Decimal(gpu_seconds) / 3600).quantize(Decimal("0.001")),
        release_reason=f"attempt {status}"[:60],
    )
    if released:
        transaction.on_commit(admission_pass_request)
    return bool(released)


def quota_release_for_job(*, job_id: str, reason: str = "job left the queue") -> int:
    """Free allocations of a job that no live attempt uses (admitted, then paused/cancelled or
    failed before its attempt started). An allocation with a live attempt is freed when that
    attempt ends, never before."""
    live_attempt = JobAttempt.objects.filter(
        job_id=OuterRef("job_id"), number=OuterRef("attempt_number"), ended_at__isnull=True
    )
    released = (
        Allocation.objects.filter(job_id=job_id, released_at__isnull=True)
        .exclude(Exists(live_attempt))
        .update(released_at=timezone.now(), used_gpu_hours=Decimal("0"), release_reason=reason[:60])
    )
    if released:
        transaction.on_commit(admission_pass_request)
    return released
