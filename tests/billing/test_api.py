"""/v1 billing routes: shapes, filters, exports, tenancy, staff-only top-ups, query counts."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest
from rest_framework.test import APIClient

from marketplace.billing import services as billing
from marketplace.billing.money import REVERSE_CHARGE_NOTE
from tests.billing.conftest import job_new, run_job, topup

pytestmark = pytest.mark.django_db


@pytest.fixture
def invoiced(org_a: Any, org_b: Any, pool: Any, clock: Any) -> dict[str, Any]:
    """org A (FR) and org B (DE, with a VAT id) each ran jobs in November; invoices finalized."""
    org_b.vat_id = "DE123456789"
    org_b.save()
    topup(org_a, "50.00", "a1")
    topup(org_b, "50.00", "b1")
    job_a1 = job_new(org_a)
    run_job(job_a1, pool, clock, 3600)
    job_a2 = job_new(org_a, gpus=2)
    run_job(job_a2, pool, clock, 600)
    job_b = job_new(org_b)
    run_job(job_b, pool, clock, 7200)
    clock.move_to(datetime(2026, 12, 1, 0, 0, 1, tzinfo=UTC))
    start, end = billing.month_bounds(2026, 11)
    invoices = {
        inv.organization_id: inv
        for inv in billing.invoices_finalize(period_start=start, period_end=end)
    }
    return {
        "a": invoices[org_a.pk],
        "b": invoices[org_b.pk],
        "job_a1": job_a1,
        "job_a2": job_a2,
        "job_b": job_b,
    }


def test_balance(client_a: APIClient, org_a: Any, invoiced: dict[str, Any]) -> None:
    body = client_a.get("/v1/billing/balance").json()
    # 3600 GPU-s and 1200 GPU-s at €2.50/GPU-hour: 2.50 + 0.83 = 3.33 net, VAT 0.50 + 0.17
    assert body == {
        "object": "billing.balance",
        "organization_id": org_a.public_id,
        "currency": "EUR",
        "available": "46.00",
        "held": "0.00",
        "credit_limit": "0.00",
        "low_balance_threshold": None,
    }


def test_invoice_list_and_detail(
    client_a: APIClient, invoiced: dict[str, Any], django_assert_max_num_queries: Any
) -> None:
    with django_assert_max_num_queries(6):
        listed = client_a.get("/v1/billing/invoices").json()
    assert listed["object"] == "list" and listed["has_more"] is False
    [item] = listed["data"]
    assert item["id"] == invoiced["a"].public_id and item["status"] == "finalized"
    assert (item["subtotal"], item["vat"], item["total"]) == ("3.33", "0.67", "4.00")
    detail = client_a.get(f"/v1/billing/invoices/{item['id']}").json()
    amounts = sorted(line["amount"] for line in detail["lines"])
    assert amounts == ["0.83", "2.50"]
    assert {line["gpu_seconds"] for line in detail["lines"]} == {"3600.000", "1200.000"}


def test_invoice_downloads(
    client_a: APIClient, client_b: APIClient, invoiced: dict[str, Any], settings: Any
) -> None:
    settings.PARTAGE_PLATFORM_VAT_ID = "FR40123456824"
    inv_a, inv_b = invoiced["a"], invoiced["b"]
    pdf = client_a.get(f"/v1/billing/invoices/{inv_a.public_id}/download/pdf")
    assert pdf.status_code == 200 and pdf["Content-Type"] == "application/pdf"
    assert pdf.content.startswith(b"%PDF")
    csv_text = client_a.get(f"/v1/billing/invoices/{inv_a.public_id}/download/csv").content.decode()
    assert invoiced["job_a1"].id in csv_text and ",total," in csv_text and "4.00" in csv_text
    html_b = client_b.get(f"/v1/billing/invoices/{inv_b.public_id}/download/html").content.decode()
    # The EU B2B reverse-charge mention, with both parties' VAT ids.
    assert REVERSE_CHARGE_NOTE in html_b and "DE123456789" in html_b and "FR40123456824" in html_b
    assert inv_b.vat == 0 and inv_b.reverse_charge
    html_a = client_a.get(f"/v1/billing/invoices/{inv_a.public_id}/download/html").content.decode()
    assert "Reverse charge" not in html_a
    bad = client_a.get(f"/v1/billing/invoices/{inv_a.public_id}/download/docx")
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "format"


def test_tenancy_on_every_route(
    client_a: APIClient, client_b: APIClient, invoiced: dict[str, Any]
) -> None:
    inv_a = invoiced["a"]
    assert client_b.get(f"/v1/billing/invoices/{inv_a.public_id}").status_code == 404
    assert client_b.get(f"/v1/billing/invoices/{inv_a.public_id}/download/pdf").status_code == 404
    ids_b = {i["id"] for i in client_b.get("/v1/billing/invoices").json()["data"]}
    assert inv_a.public_id not in ids_b
    usage_b = client_b.get("/v1/billing/usage").json()["data"]
    assert {u["job_id"] for u in usage_b} == {invoiced["job_b"].id}
    assert client_b.get(f"/v1/billing/usage?job={invoiced['job_a1'].id}").json()["data"] == []
    assert client_b.get("/v1/billing/statements").json()["data"] == []
    assert APIClient().get("/v1/billing/balance").status_code == 401


def test_usage_filters_and_pagination(
    client_a: APIClient, invoiced: dict[str, Any], pool: Any, django_assert_max_num_queries: Any
) -> None:
    with django_assert_max_num_queries(6):
        first = client_a.get("/v1/billing/usage?limit=1").json()
    assert first["has_more"] is True and len(first["data"]) == 1
    second = client_a.get(f"/v1/billing/usage?limit=1&after={first['last_id']}").json()
    assert second["has_more"] is False and second["data"][0]["id"] != first["data"][0]["id"]
    by_job = client_a.get(f"/v1/billing/usage?job={invoiced['job_a2'].id}").json()["data"]
    assert [u["gpu_seconds"] for u in by_job] == ["1200.000"]
    assert len(client_a.get(f"/v1/billing/usage?pool={pool.public_id}").json()["data"]) == 2
    assert client_a.get("/v1/billing/usage?period=2026-11").json()["data"]
    assert client_a.get("/v1/billing/usage?period=2026-10").json()["data"] == []
    bad = client_a.get("/v1/billing/usage?period=November").json()["error"]
    assert bad["param"] == "period" and "YYYY-MM" in bad["message"]


def test_cost_estimate_uses_cheapest_feasible_pool(client_a: APIClient, provider_org: Any) -> None:
    from tests.capacity import factories

    factories.pool(provider_org, price="3.10", gpus=8)
    cheap = factories.pool(provider_org, price="1.90", gpus=2)
    body = client_a.post(
        "/v1/billing/cost_estimate",
        {"gpu_flavor": "h100-80g", "gpu_count": 2, "estimated_duration_seconds": 5400},
        format="json",
    ).json()
    assert body["pool"] == cheap.public_id
    assert body["amount"] == "5.70" and body["vat"] == "1.14" and body["total"] == "6.84"
    # 4 GPUs do not fit the cheap pool: the next cheapest feasible one is used.
    body4 = client_a.post(
        "/v1/billing/cost_estimate",
        {"gpu_flavor": "h100-80g", "gpu_count": 4, "estimated_duration_seconds": 3600},
        format="json",
    ).json()
    assert body4["price_per_gpu_hour"] == "3.1000" and body4["amount"] == "12.40"
    missing = client_a.post("/v1/billing/cost_estimate", {"gpu_count": 2}, format="json")
    assert missing.status_code == 400
    assert missing.json()["error"]["param"] == "estimated_duration_seconds"


def test_a_topup_request_never_credits_by_itself(client_a: APIClient, org_a: Any) -> None:
    """POST /v1/billing/topups starts a payment; only its confirmation credits (test_topups)."""
    created = client_a.post(
        "/v1/billing/topups", {"amount": "10.00", "method": "bank_transfer"}, format="json"
    )
    assert created.status_code == 201 and created.json()["status"] == "pending"
    # The old staff-only body (organization + reference) does not credit anything either.
    legacy = client_a.post(
        "/v1/billing/topups",
        {"organization": "org-a", "amount": "10.00", "reference": "x"},
        format="json",
    )
    assert legacy.status_code == 400 and legacy.json()["error"]["param"] == "method"
    assert billing.balance_available(organization=org_a) == Decimal("0.00")
    # The staff's manual record (Django admin) is idempotent on its reference.
    billing.topup_record(organization=org_a, amount="10.00", reference="wire-1")
    billing.topup_record(organization=org_a, amount="10.00", reference="wire-1")
    assert billing.balance_available(organization=org_a) == Decimal("10.00")
