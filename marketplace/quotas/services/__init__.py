"""Writes for quotas: admission, release, and staff changes to quotas (audited)."""

from marketplace.quotas.services.admission import (
    ADMISSION_PENDING_KEY,
    admission_pass,
    admission_pass_request,
    admission_pass_run,
)
from marketplace.quotas.services.changes import (
    org_plan_set,
    org_quota_override_set,
    plan_create,
    plan_flavor_quota_set,
    plan_update,
)
from marketplace.quotas.services.release import quota_release, quota_release_for_job

__all__ = [
    "ADMISSION_PENDING_KEY",
    "admission_pass",
    "admission_pass_request",
    "admission_pass_run",
    "org_plan_set",
    "org_quota_override_set",
    "plan_create",
    "plan_flavor_quota_set",
    "plan_update",
    "quota_release",
    "quota_release_for_job",
]
