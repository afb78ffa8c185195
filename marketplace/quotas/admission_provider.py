"""Quotas' side of `marketplace.finetuning.admission`: the outlook of a job before it is queued,
admission pass requests, and releases, answered by quotas' selectors and services."""

from __future__ import annotations

from typing import Any

from marketplace.finetuning.admission import Outlook


class QuotasAdmission:
    def outlook(
        self,
        *,
        organization_id: int,
        gpu_flavor: str,
        gpu_count: int,
        residency: dict[str, Any] | None,
        priority: int,
    ) -> Outlook | None:
        from marketplace.quotas.decide import Wait
        from marketplace.quotas.selectors import job_outlook

        decision = job_outlook(
            organization_id=organization_id,
            gpu_flavor=gpu_flavor,
            gpu_count=gpu_count,
            residency=residency,
            priority=priority,
        )
        if decision is None:
            return None
        if not isinstance(decision, Wait):
            return Outlook(fits_now=True)
        return Outlook(
            fits_now=False,
            reason=decision.reason,
            estimated_start=decision.estimated_start,
            unfit=decision.unfit,
        )

    def pass_request(self) -> None:
        from marketplace.quotas.services import admission_pass_request

        admission_pass_request()

    def release_attempt(self, *, job_id: str, attempt_number: int) -> None:
        from marketplace.quotas.services import quota_release

        quota_release(job_id=job_id, attempt_number=attempt_number)

    def release_job(self, *, job_id: str) -> None:
        from marketplace.quotas.services import quota_release_for_job

        quota_release_for_job(job_id=job_id)
