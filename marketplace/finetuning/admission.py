"""What finetuning needs from admission, which quotas provides.

Dependencies between the two point one way: quotas imports finetuning (it reads jobs and
admits, preempts and requeues them through finetuning's services), and finetuning never
imports quotas. Finetuning asks through this interface instead; quotas registers its
implementation when Django starts (`QuotasConfig.ready`).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from django.core.exceptions import ImproperlyConfigured


@dataclass(frozen=True)
class Outlook:
    """What an admission pass would say now of a job not yet queued."""

    fits_now: bool  # the GPUs it needs are free now
    reason: str = ""  # why it waits (when it does not fit now)
    estimated_start: datetime | None = None
    # (parameter, what to do) when nothing but a change to the job or its quota lets it run.
    unfit: tuple[str, str] | None = None


class Admission(Protocol):
    def outlook(
        self,
        *,
        organization_id: int,
        gpu_flavor: str,
        gpu_count: int,
        residency: dict[str, Any] | None,
        priority: int,
    ) -> Outlook | None:
        """None when no pool is configured (the local executor admits every job)."""
        ...

    def pass_request(self) -> None:
        """Ask for an admission pass soon (coalesced)."""
        ...

    def release_attempt(self, *, job_id: str, attempt_number: int) -> None:
        """Free what an ended attempt held."""
        ...

    def release_job(self, *, job_id: str) -> None:
        """Free what a job that left the running world holds without a live attempt."""
        ...


_provider: Admission | None = None


def admission_provide(provider: Admission) -> None:
    global _provider
    _provider = provider


def admission() -> Admission:
    if _provider is None:
        raise ImproperlyConfigured(
            "No admission provider: add 'marketplace.quotas' to INSTALLED_APPS "
            "(its AppConfig.ready registers one)."
        )
    return _provider
