"""The portal's heaviest reads and the cockpit's audited writes on the real PostgreSQL: day
buckets of the usage chart at UTC midnight, the cockpit's quota and price edits with their
audit rows, and list pages whose query count does not grow with rows."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
import time_machine
from django.contrib.admin.models import LogEntry
from django.test import Client

from marketplace.billing.services import attempt_meter
from marketplace.finetuning.models import JobAttempt
from marketplace.quotas.models import QuotaAuditEntry
from tests.capacity import factories
from tests.portal.conftest import assert_list_queries_flat, make_job

pytestmark = [pytest.mark.pg, pytest.mark.django_db]

NOW = datetime(2026, 3, 15, 9, 0, tzinfo=UTC)


def _metered(org: Any, captured: Any, ended: datetime, gpu_seconds: str) -> None:
    with time_machine.travel(ended, tick=False):
        job = make_job(org, captured)
        attempt = JobAttempt.objects.create(
            job=job,
            number=1,
            executor="local",
            name=f"a-{job.pk}",
            training_started_at=ended - timedelta(hours=1),
            ended_at=ended,
            gpu_seconds=Decimal(gpu_seconds),
        )
        attempt_meter(attempt=attempt)


def test_usage_chart_buckets_days_at_utc_midnight(
    alice_web: Client, org_a: Any, django_capture_on_commit_callbacks: Any
) -> None:
    captured = django_capture_on_commit_callbacks
    _metered(org_a, captured, datetime(2026, 3, 13, 23, 30, tzinfo=UTC), "3600")
    _metered(org_a, captured, datetime(2026, 3, 14, 0, 30, tzinfo=UTC), "7200")
    _metered(org_a, captured, datetime(2026, 2, 1, 12, 0, tzinfo=UTC), "36000")  # too old
    with time_machine.travel(NOW, tick=False):
        response = alice_web.get("/usage/")
    bars = {bar.label: bar.value for bar in response.context["hours_chart"].bars}
    assert bars["Mar 13"] == Decimal("1.00") and bars["Mar 14"] == Decimal("2.00")
    assert bars["Mar 15"] == Decimal("0.00") and len(bars) == 30
    assert response.context["hours_total"] == Decimal("3.00")


def test_cockpit_edits_are_audited_on_postgresql(
    carol_web: Client, alice_web: Client, carol: Any, org_a: Any
) -> None:
    pool = factories.pool(gpus=8, price="2.50", name="Paris H100")
    response = carol_web.post(
        "/cockpit/quotas/",
        {"organization": org_a.public_id, "flavor": "h100-80g", "max_gpus": 4},
    )
    assert response.status_code == 302
    assert QuotaAuditEntry.objects.get(organization=org_a, field="max_gpus").new_value == "4"
    carol_web.post(f"/cockpit/pools/{pool.public_id}/price/", {"price_per_gpu_hour": "2.25"})
    entry = LogEntry.objects.get()
    assert entry.user == carol and "€2.5000 → €2.2500" in entry.get_change_message()
    assert 'data-flavor="h100-80g"' in alice_web.get("/usage/").content.decode()


@pytest.mark.parametrize("url", ["/jobs/", "/data/", "/usage/"])
def test_list_pages_query_counts_do_not_grow_on_postgresql(
    alice_web: Client,
    org_a: Any,
    url: str,
    django_capture_on_commit_callbacks: Any,
    django_assert_max_num_queries: Any,
) -> None:
    assert_list_queries_flat(
        alice_web, url, org_a, django_capture_on_commit_callbacks, django_assert_max_num_queries
    )
