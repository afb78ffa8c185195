"""Metering and money. Foundation version: metering lives on JobAttempt.gpu_seconds.

The billing issue adds holds, the ledger and invoices behind these same three functions.
"""

from __future__ import annotations

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
