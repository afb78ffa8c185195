"""Usage against quota, read from the quotas domain's own read models (world + quota book).

Used by the startup's usage page (its gauges) and by the staff cockpit (every organization).
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from django.utils import timezone

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


def quota_lines(org_ids: list[int]) -> dict[int, list[QuotaLine]]:
    from marketplace.quotas.quota_book import QuotaBook
    from marketplace.quotas.world import world_load

    world = world_load(now=timezone.now(), pool_ids=[], org_ids=org_ids)
    book = QuotaBook(org_ids=org_ids)
    result: dict[int, list[QuotaLine]] = {}
    for org_id in org_ids:
        lines = []
        for flavor in world.flavors.values():
            quota = book.quota(org_id, flavor.id)
            usage = world.usage.get((org_id, flavor.id))
            lines.append(
                QuotaLine(
                    flavor_slug=flavor.slug,
                    flavor_label=flavor.label,
                    running_gpus=usage.quota_used if usage else 0,
                    booked_gpus=usage.booked if usage else 0,
                    max_gpus=quota.max_gpus,
                    guaranteed_gpus=quota.guaranteed_gpus,
                    running_jobs=usage.jobs if usage else 0,
                    max_concurrent_jobs=quota.max_concurrent_jobs,
                    gpu_hours_month=(usage.budget_used if usage else Decimal(0)).quantize(
                        Decimal("0.01")
                    ),
                    monthly_gpu_hours=quota.monthly_gpu_hours,
                    max_job_hours=quota.max_job_hours,
                    source=quota.source,
                )
            )
        result[org_id] = lines
    return result


def quota_lines_for_org(org: Organization) -> list[QuotaLine]:
    return quota_lines([org.pk])[org.pk]


def organizations_against_quota() -> list[dict[str, Any]]:
    orgs = list(Organization.objects.filter(kind=Organization.Kind.STARTUP).order_by("name"))
    lines = quota_lines([o.pk for o in orgs])
    return [{"org": org, "lines": lines[org.pk]} for org in orgs]
