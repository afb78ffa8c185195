"""The staff cockpit (quotas audited by the quotas domain; prices and approvals in the staff change log) and the
startup's usage page (charts, quota gauges, invoices)."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal
from typing import Any

import pytest
from django.contrib.admin.models import LogEntry
from django.test import Client
from django.utils import timezone

from marketplace.billing.services import (
    attempt_meter,
    invoice_draft,
    invoice_finalize,
    month_bounds,
)
from marketplace.capacity.models import Pool, ProviderProfile
from marketplace.finetuning.models import FineTuningJob, JobAttempt
from marketplace.quotas.models import QuotaAuditEntry
from tests.capacity import factories
from tests.portal.conftest import make_job

pytestmark = pytest.mark.django_db


def _gauge(page: str, flavor: str) -> str:
    start = page.index(f'data-flavor="{flavor}"')
    return page[start : start + 1500]


def test_staff_changes_a_quota_and_the_startup_sees_it(
    carol_web: Client, alice_web: Client, carol: Any, org_a: Any
) -> None:
    factories.pool(gpus=8)
    response = carol_web.post(
        "/cockpit/quotas/",
        {
            "organization": org_a.public_id,
            "flavor": "h100-80g",
            "max_gpus": 3,
            "monthly_gpu_hours": "120",
        },
    )
    assert response.status_code == 302
    entries = QuotaAuditEntry.objects.filter(organization=org_a, changed_by=carol)
    assert {(e.field, e.new_value) for e in entries} >= {
        ("max_gpus", "3"),
        ("monthly_gpu_hours", "120.00"),
    }
    usage = alice_web.get("/usage/").content.decode()
    gauge = _gauge(usage, "h100-80g")
    assert "0 / 3" in gauge and "/ 120.00" in gauge
    cockpit = carol_web.get("/cockpit/").content.decode()
    assert "max_gpus" in cockpit and "carol" in cockpit  # the audit log


def test_a_bad_quota_is_explained_and_changes_nothing(carol_web: Client, org_a: Any) -> None:
    factories.pool(gpus=8)
    response = carol_web.post(
        "/cockpit/quotas/",
        {
            "organization": org_a.public_id,
            "flavor": "h100-80g",
            "guaranteed_gpus": 5,
            "max_gpus": 2,
        },
    )
    assert response.status_code == 400
    assert "cannot exceed max_gpus" in response.content.decode()
    assert not QuotaAuditEntry.objects.filter(organization=org_a).exists()


def test_staff_changes_a_price_and_the_change_is_audited(carol_web: Client, carol: Any) -> None:
    pool = factories.pool(gpus=8, price="2.50", name="Paris H100")
    carol_web.post(f"/cockpit/pools/{pool.public_id}/price/", {"price_per_gpu_hour": "1.9"})
    pool.refresh_from_db()
    assert pool.price_per_gpu_hour == Decimal("1.9000")
    entry = LogEntry.objects.get(object_id=str(pool.pk))
    assert entry.user == carol
    assert entry.get_change_message() == "Paris H100: price per GPU-hour €2.5000 → €1.9000"
    log = carol_web.get("/cockpit/").content.decode()
    assert "<strong>carol</strong> · Paris H100: price per GPU-hour €2.5000 → €1.9000" in log
    response = carol_web.post(
        f"/cockpit/pools/{pool.public_id}/price/", {"price_per_gpu_hour": "-1"}, follow=True
    )
    assert "greater than or equal to 0" in response.content.decode()
    pool.refresh_from_db()
    assert pool.price_per_gpu_hour == Decimal("1.9000")
    assert LogEntry.objects.count() == 1  # a refused change logs nothing


def test_staff_approves_a_provider_then_its_pool(carol_web: Client) -> None:
    provider = factories.provider(approved=False)
    cockpit = carol_web.get("/cockpit/").content.decode()
    assert provider.name in cockpit
    carol_web.post(f"/cockpit/providers/{provider.public_id}/review/", {"decision": "approve"})
    assert ProviderProfile.objects.get(organization=provider).is_approved
    pool = factories.pool(provider, approve=False)
    cluster = factories.cluster()
    carol_web.post(
        f"/cockpit/pools/{pool.public_id}/review/", {"decision": "approve", "cluster": cluster.pk}
    )
    pool.refresh_from_db()
    assert pool.status == Pool.Status.ACTIVE and pool.cluster == cluster
    messages = [e.get_change_message() for e in LogEntry.objects.order_by("id")]
    assert messages == [
        f"{provider.name}: approved as a provider",
        f"{pool.name}: approved on cluster {cluster.name}",
    ]


def test_startups_cannot_use_the_cockpit(alice_web: Client, org_a: Any) -> None:
    pool = factories.pool(gpus=8, price="2.50")
    assert (
        alice_web.post(
            f"/cockpit/pools/{pool.public_id}/price/", {"price_per_gpu_hour": "0"}
        ).status_code
        == 404
    )
    assert (
        alice_web.post(
            "/cockpit/quotas/",
            {"organization": org_a.public_id, "flavor": "h100-80g", "max_gpus": 99},
        ).status_code
        == 404
    )
    pool.refresh_from_db()
    assert pool.price_per_gpu_hour == Decimal("2.5000")
    assert not QuotaAuditEntry.objects.exists()


def test_usage_chart_counts_metered_gpu_hours(
    alice_web: Client, org_a: Any, django_capture_on_commit_callbacks: Any
) -> None:
    job = make_job(org_a, django_capture_on_commit_callbacks)
    now = timezone.now()
    attempt = JobAttempt.objects.create(
        job=job,
        number=1,
        executor="local",
        name="a1",
        training_started_at=now - timedelta(hours=2),
        ended_at=now,
        gpu_seconds=Decimal("5400"),
    )
    attempt_meter(attempt=attempt)
    response = alice_web.get("/usage/")
    bars = response.context["hours_chart"].bars
    assert bars[-1].value == Decimal("1.50") and sum(b.value for b in bars) == Decimal("1.50")
    assert response.context["hours_total"] == Decimal("1.50")
    assert 'id="hours-total">1.50 h' in response.content.decode()


def test_finalized_invoices_download_for_their_org_only(
    alice_web: Client, bob_web: Client, org_a: Any
) -> None:
    start, end = month_bounds(2026, 1)
    invoice = invoice_finalize(
        invoice=invoice_draft(organization=org_a, period_start=start, period_end=end)
    )
    page = alice_web.get("/usage/").content.decode()
    assert invoice.number in page
    pdf = alice_web.get(f"/invoices/{invoice.public_id}/")
    assert pdf.status_code == 200 and pdf["Content-Type"] == "application/pdf"
    assert pdf.content.startswith(b"%PDF")
    csv = alice_web.get(f"/invoices/{invoice.public_id}/?format=csv")
    assert csv["Content-Type"].startswith("text/csv") and invoice.number in csv.content.decode()
    assert bob_web.get(f"/invoices/{invoice.public_id}/").status_code == 404


def test_cockpit_shows_each_pool_s_queue_and_running_jobs(
    carol_web: Client, org_a: Any, org_b: Any
) -> None:
    pool = factories.pool(gpus=8, name="Paris H100")
    waiting = factories.job(org_a, gpus=2, status="queued")
    FineTuningJob.objects.filter(pk=waiting.pk).update(pending_reason="waiting: quota of org-a")
    running = factories.running_on(pool, org_b, gpus=3)
    response = carol_web.get("/cockpit/")
    body = response.content.decode()
    assert waiting.id in body and "waiting: quota of org-a" in body
    row = next(r for r in response.context["pools"] if r["pool"].pk == pool.pk)
    assert [j.id for j in row["running"]] == [running.id]
    assert row["usage"].free == 5
