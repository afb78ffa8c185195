"""Effective quotas: a staff override wins over the organization's plan, which wins over the
default plan. With no plan at all (a fresh install), an organization is unlimited.

`QuotaBook` loads everything for many organizations in a constant number of queries, so the
admission pass can resolve quotas in memory.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from django.conf import settings

from marketplace.quotas.models import (
    QUOTA_FIELDS,
    FlavorQuotaOverride,
    OrganizationQuota,
    Plan,
    PlanFlavorQuota,
)


@dataclass(frozen=True)
class EffectiveQuota:
    guaranteed_gpus: int
    max_gpus: int | None  # None: no cap (only capacity limits it)
    monthly_gpu_hours: Decimal | None  # None: no budget cap
    max_job_hours: Decimal
    max_concurrent_jobs: int | None
    source: str  # where the values come from, for people: "plan pro", "plan pro + override"

    def as_dict(self) -> dict[str, Any]:
        return {
            "guaranteed_gpus": self.guaranteed_gpus,
            "max_gpus": self.max_gpus,
            "monthly_gpu_hours": self.monthly_gpu_hours,
            "max_job_hours": self.max_job_hours,
            "max_concurrent_jobs": self.max_concurrent_jobs,
            "source": self.source,
        }


def default_max_job_hours() -> Decimal:
    return Decimal(str(settings.PARTAGE_DEFAULT_MAX_JOB_HOURS))


class QuotaBook:
    """Plans, organizations' plans and weights, and overrides, loaded once (4 queries)."""

    plans: dict[int, Plan]
    plan_rows: dict[tuple[int, int], PlanFlavorQuota]

    def __init__(
        self,
        org_ids: Iterable[int] | None = None,
        *,
        plans_of: QuotaBook | None = None,
        org_quota_rows: Iterable[OrganizationQuota] | None = None,
    ) -> None:
        """`plans_of`: take the plans and their per-flavor rows from that book (the pass's)
        instead of reading them again. Plan edits do not lock organizations, so a re-read
        under the org-quota lock was only ever fresher, never serialized.
        `org_quota_rows`: the rows of `org_ids` the caller has just read (locked) in this
        transaction, used instead of reading them again."""
        if plans_of is not None:
            plans = plans_of.plans
            self.plan_rows = plans_of.plan_rows
        else:
            plans = {plan.pk: plan for plan in Plan.objects.all()}
            self.plan_rows = {
                (row.plan_id, row.flavor_id): row for row in PlanFlavorQuota.objects.all()
            }
        self.default_plan = next((p for p in plans.values() if p.is_default), None)
        self.plans = plans
        org_quotas = OrganizationQuota.objects.all()
        overrides = FlavorQuotaOverride.objects.all()
        if org_ids is not None:
            ids = list(set(org_ids))
            org_quotas = org_quotas.filter(organization_id__in=ids)
            overrides = overrides.filter(organization_id__in=ids)
        if org_quota_rows is not None:
            if org_ids is None:
                raise ValueError("org_quota_rows needs the org_ids they cover")
            self.org_quotas = {row.organization_id: row for row in org_quota_rows}
        else:
            self.org_quotas = {row.organization_id: row for row in org_quotas}
        self.overrides = {(row.organization_id, row.flavor_id): row for row in overrides}
        self._resolved: dict[tuple[int, int], EffectiveQuota] = {}
        self._weights: dict[int, Decimal] = {}

    def plan_of(self, org_id: int) -> Plan | None:
        row = self.org_quotas.get(org_id)
        if row is not None and row.plan_id is not None:
            return self.plans[row.plan_id]
        return self.default_plan

    def weight(self, org_id: int) -> Decimal:
        if org_id not in self._weights:
            row = self.org_quotas.get(org_id)
            if row is not None and row.weight is not None:
                self._weights[org_id] = row.weight
            else:
                plan = self.plan_of(org_id)
                self._weights[org_id] = plan.weight if plan is not None else Decimal("1")
        return self._weights[org_id]

    def quota(self, org_id: int, flavor_id: int) -> EffectiveQuota:
        key = (org_id, flavor_id)
        if key not in self._resolved:  # the book is a snapshot: resolve each pair once
            plan = self.plan_of(org_id)
            plan_row = self.plan_rows.get((plan.pk, flavor_id)) if plan else None
            self._resolved[key] = resolve(plan, plan_row, self.overrides.get(key))
        return self._resolved[key]


def resolve(
    plan: Plan | None, plan_row: PlanFlavorQuota | None, override: FlavorQuotaOverride | None
) -> EffectiveQuota:
    if plan is None:
        base: dict[str, Any] = {
            "guaranteed_gpus": 0,
            "max_gpus": None,
            "monthly_gpu_hours": None,
            "max_job_hours": default_max_job_hours(),
            "max_concurrent_jobs": None,
        }
        source = "no plan: unlimited"
    elif plan_row is None:
        # A flavor outside the plan cannot be used unless staff override it.
        base = {
            "guaranteed_gpus": 0,
            "max_gpus": 0,
            "monthly_gpu_hours": None,
            "max_job_hours": default_max_job_hours(),
            "max_concurrent_jobs": 0,
        }
        source = f"plan {plan.slug} (flavor not included)"
    else:
        base = {field: getattr(plan_row, field) for field in QUOTA_FIELDS}
        source = f"plan {plan.slug}"
    if override is not None:
        changed = False
        for field in QUOTA_FIELDS:
            value = getattr(override, field)
            if value is not None:
                base[field] = value
                changed = True
        if override.budget_unlimited:
            base["monthly_gpu_hours"] = None
            changed = True
        if changed:
            source += " + override"
    if base["max_gpus"] is not None and base["guaranteed_gpus"] > base["max_gpus"]:
        base["guaranteed_gpus"] = base["max_gpus"]
    return EffectiveQuota(source=source, **base)
