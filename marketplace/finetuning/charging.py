"""What finetuning needs from billing for a job: meter an ended attempt, settle a job that left
the running world, and say whether it reached its max_cost. Billing depends on finetuning (it
meters and invoices jobs), not the reverse: it provides this interface at start-up
(`BillingConfig.ready`)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

from django.core.exceptions import ImproperlyConfigured

if TYPE_CHECKING:
    from marketplace.finetuning.models import FineTuningJob, JobAttempt


class JobCharging(Protocol):
    def attempt_meter(self, *, attempt: JobAttempt) -> Any:
        """Write the ended attempt's usage record (idempotent)."""
        ...

    def job_settle(self, *, job: FineTuningJob) -> None:
        """Capture actual usage from the job's hold and release the rest (idempotent)."""
        ...

    def job_over_budget(self, *, job: FineTuningJob) -> bool:
        """True when the job's max_cost is reached: it should finish gracefully now."""
        ...


_provider: JobCharging | None = None


def job_charging_provide(provider: JobCharging) -> None:
    global _provider
    _provider = provider


def job_charging() -> JobCharging:
    if _provider is None:
        raise ImproperlyConfigured(
            "No job charging: add 'marketplace.billing' to INSTALLED_APPS "
            "(its AppConfig.ready registers it)."
        )
    return _provider
