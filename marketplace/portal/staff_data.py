"""Usage against quota, from the quotas domain's selectors, shaped for the portal's gauges.

Used by the startup's usage page (its gauges) and by the staff cockpit (every organization).
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from marketplace.accounts.models import Organization


@dataclass(frozen=True)
class QuotaLine:
    flavor_slug: str
    flavor_label: str
    running_gpus: int  # GPUs counted against the maximum (booked work excluded)
    booked_gpus: int
    max_gpus: int | None
    guaranteed_gpus: int
    running_jobs: int
    max_concurrent_jobs: int | None
    gpu_hours_month: Decimal
    monthly_gpu_hours: Decimal | None
    max_job_hours: Decimal
    source: str

    @staticmethod
    def _percent(used: Any, limit: Any) -> float | None:
        if limit is None:
            return None
        if not limit:
            return 100.0 if used else 0.0
        return min(100.0, round(float(used) * 100 / float(limit), 1))

    @property
    def gpus_percent(self) -> float | None:
        return self._percent(self.running_gpus, self.max_gpus)

    @property
    def hours_percent(self) -> float | None:
        return self._percent(self.gpu_hours_month, self.monthly_gpu_hours)


def _line(row: dict[str, Any]) -> QuotaLine:
    return QuotaLine(
        flavor_slug=row["flavor"],
        flavor_label=row["flavor_name"],
        running_gpus=row["used_gpus"] - row["booked_gpus"],
        booked_gpus=row["booked_gpus"],
        max_gpus=row["max_gpus"],
        guaranteed_gpus=row["guaranteed_gpus"],
        running_jobs=row["running_jobs"],
        max_concurrent_jobs=row["max_concurrent_jobs"],
        gpu_hours_month=Decimal(row["gpu_hours_used"]).quantize(Decimal("0.01")),
        monthly_gpu_hours=row["monthly_gpu_hours"],
        max_job_hours=row["max_job_hours"],
        source=row["source"],
    )


def quota_lines_for_org(org: Organization) -> list[QuotaLine]:
    from marketplace.quotas.selectors import quota_usage_for_org

    return [_line(row) for row in quota_usage_for_org(org)]


def organizations_against_quota() -> list[dict[str, Any]]:
    from marketplace.quotas.selectors import quota_usage_all_orgs

    rows = quota_usage_all_orgs()
    orgs = Organization.objects.in_bulk(
        [r["organization_id"] for r in rows], field_name="public_id"
    )
    return [
        {
            "org": orgs[r["organization_id"]],
            "plan": r["plan"],
            "lines": [_line(f) for f in r["flavors"]],
        }
        for r in rows
        if r["organization_id"] in orgs
    ]
