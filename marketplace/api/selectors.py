"""Reads for the /v1 views that the hot paths need lean: no joins the representation never uses.

A job is rendered with its organization, which the caller already has (it is the caller's own),
so it is attached instead of joined; the manifest (large) is only read where it is shown.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from django.db.models import QuerySet

from marketplace.accounts.models import Organization
from marketplace.finetuning.models import FineTuningJob


def jobs_for_org(org: Organization) -> QuerySet[FineTuningJob]:
    return FineTuningJob.objects.filter(organization=org).defer("manifest")


def job_for_org(org: Organization, job_id: str) -> FineTuningJob | None:
    job = jobs_for_org(org).filter(pk=job_id).first()
    if job is not None:
        job.organization = org
    return job


def rendered_with_org(
    org: Organization, render: Callable[[Any], dict[str, Any]]
) -> Callable[[Any], dict[str, Any]]:
    def render_job(job: FineTuningJob) -> dict[str, Any]:
        job.organization = org
        return render(job)

    return render_job
