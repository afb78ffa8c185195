"""`quota.threshold_reached`: the admission pass reserves GPU-hours of an organization's monthly
budget, so it is where usage crosses 80% and 100%. Each threshold is recorded once per
organization, flavor and month (a dedup key), after the admissions that crossed it commit."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from decimal import Decimal

from django.db import transaction
from django.utils import timezone

from marketplace.events.services import event_record_once
from marketplace.quotas.selectors import quota_usage_for_orgs

# Percent of the monthly GPU-hour budget at which quota.threshold_reached is recorded.
QUOTA_THRESHOLDS = (80, 100)
CENTS = Decimal("0.01")


def quota_thresholds_record(*, org_ids: Iterable[int], now: datetime | None = None) -> int:
    """Record the thresholds these organizations' usage has reached this month; returns how
    many are new."""
    now = now or timezone.now()
    month = now.strftime("%Y-%m")
    recorded = 0
    usage = quota_usage_for_orgs(sorted(set(org_ids)), now=now)
    for org_id, rows in usage.items():
        for row in rows:
            budget = row["monthly_gpu_hours"]
            if budget is None or Decimal(budget) <= 0:
                continue
            used = Decimal(row["gpu_hours_used"])
            percent = used * 100 / Decimal(budget)
            for threshold in QUOTA_THRESHOLDS:
                if percent < threshold:
                    continue
                with transaction.atomic():
                    event = event_record_once(
                        event_type="quota.threshold_reached",
                        organization_id=org_id,
                        subject_id=f"quota-{row['flavor']}",
                        data={
                            "flavor": row["flavor"],
                            "metric": "monthly_gpu_hours",
                            "threshold_percent": threshold,
                            "used": str(used.quantize(CENTS)),
                            "limit": str(Decimal(budget).quantize(CENTS)),
                            "period": month,
                        },
                        occurred_at=now,
                        dedup_key=(
                            f"quota.threshold_reached:{org_id}:{row['flavor']}:{month}:{threshold}"
                        ),
                    )
                recorded += event is not None
    return recorded
