"""Metering and money. Foundation version: metering lives on JobAttempt.gpu_seconds.

The billing issue adds holds, the ledger and invoices behind these same functions.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from marketplace.finetuning.models import FineTuningJob, JobAttempt


def attempt_meter(*, attempt: JobAttempt) -> None:
    """Record the attempt's usage (GPU-seconds are already on the attempt)."""
    return None


def job_settle(*, job: FineTuningJob) -> None:
    """Capture the actual cost and release the rest of the hold when a job stops."""
    return None


def job_over_budget(*, job: FineTuningJob) -> bool:
    """True when the job's max_cost is reached and it should finish gracefully now."""
    return False


def hold_place(*, job: FineTuningJob, pool: Any, max_duration_seconds: int) -> Decimal:
    """Snapshot the pool's price on the job and hold funds for its worst case; call at admission.

    Call it inside the admission transaction, after the pool and org-quota locks (it locks the
    org's balance row last: pool → org quota → org balance). `pool` is a capacity Pool (its pk,
    `price_per_gpu_hour` and provider organization are read). The hold is
    job.gpu_count × max_duration_seconds × price (+ VAT); on a re-admission (requeue, resume)
    only the shortfall is added. Safe to call twice for the same admission.

    Returns the amount now held for the job (Decimal EUR). Raises
    marketplace.errors.InsufficientFunds (nothing written) when the balance does not cover it;
    the caller should leave the job queued with that message as its pending reason.
    """
    return Decimal("0")
