"""/v1 billing responses against the OpenAPI schema, with real invoices, usage and statements.

The fuzz test (tests/api/test_schemathesis.py) mostly meets empty lists and 404s here; this one
checks successful bodies with schemathesis' checks, and that every object carries exactly the
documented fields (the schema does not forbid extra ones, so a field added to a view but not to
serializers_billing.py would otherwise pass unnoticed).
"""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest

from marketplace.accounts.services import api_key_create
from marketplace.billing import services as billing
from marketplace.capacity import services as capacity
from tests.api.schema_checks import (
    CHECKS,
    assert_exact_fields,
    documented,
    schema,
)
from tests.billing.conftest import book, job_new, run_job, topup
from tests.capacity import factories

pytestmark = pytest.mark.django_db


@pytest.fixture
def billed(
    org_a: Any, key_a: str, provider_org: Any, pool: Any, clock: Any, wsgi_calls: None
) -> dict[str, str]:
    """Org A ran two jobs in November (invoiced) and one in December (not yet), and booked GPUs
    in November then cancelled them for half back (a booking charge line and a refund line on
    its November invoice), and asked a fine-tuned model (an inference line); the provider's
    November statement is paid by a SEPA payout."""
    from marketplace.capacity.services import booking_cancel
    from marketplace.inference.services import price_set, usage_record
    from tests.inference.conftest import fine_tuned

    topup(org_a, "50.00", "a1")
    job_1 = job_new(org_a)
    run_job(job_1, pool, clock, 3600)
    run_job(job_new(org_a, gpus=2), pool, clock, 600)
    # 2 GPUs x 2 h at 2.50 = 10.00 + VAT; starts within 48 h: cancelling refunds half.
    booking = book(org_a, pool, gpus=2, start=datetime(2026, 11, 5, 0, 0, tzinfo=UTC), hours=2)
    booking_cancel(organization=org_a, booking_id=booking.public_id)
    price_set(
        base_model="partage/tiny-llama",
        prompt_per_million=Decimal("2"),
        completion_per_million=Decimal("8"),
    )
    asked = fine_tuned(org_a)
    usage_record(
        organization=org_a,
        job=asked,
        model=asked.fine_tuned_model,
        completion_id="chatcmpl-schema",
        prompt_tokens=20_000,
        completion_tokens=5_000,
    )
    clock.move_to(datetime(2026, 12, 1, 0, 0, 1, tzinfo=UTC))
    nov = billing.month_bounds(2026, 11)
    [invoice] = billing.invoices_finalize(period_start=nov[0], period_end=nov[1])
    statement = billing.statement_build(
        provider=provider_org, period_start=nov[0], period_end=nov[1]
    )
    statement = billing.statement_finalize(statement=statement)
    capacity.provider_payout_details_set(
        organization=provider_org, name="GPU Provider SAS", iban="FR1420041010050500013M02606"
    )
    batch = billing.payout_batch_create(period_end=nov[1])
    assert batch is not None
    billing.payout_batch_mark_sent(batch=batch, actor=factories.staff())
    billing.payout_batch_mark_paid(batch=batch, actor=factories.staff())
    run_job(job_new(org_a), pool, clock, 60)
    pending = billing.topup_start(organization=org_a, amount="40", method="bank_transfer")
    credited = billing.topup_start(organization=org_a, amount="60", method="bank_transfer")
    billing.topup_bank_received(topup_id=credited.public_id, actor="carol")
    billing.low_balance_threshold_set(organization=org_a, threshold=Decimal("20.00"))
    return {
        "topup_id": pending.public_id,
        "customer_key": key_a,
        "provider_key": api_key_create(organization=provider_org, name="provider-key").secret,
        "invoice_id": invoice.public_id,
        "statement_id": statement.public_id,
        "job_id": job_1.id,
        "pool_id": pool.public_id,
        "booking_id": booking.public_id,
    }


JSON_GETS = [
    ("/v1/billing/balance", {}, {}, "customer_key"),
    ("/v1/billing/settings", {}, {}, "customer_key"),
    ("/v1/billing/topups", {}, {}, "customer_key"),
    ("/v1/billing/topups/{topup_id}", {"topup_id": "topup_id"}, {}, "customer_key"),
    ("/v1/billing/usage", {}, {}, "customer_key"),
    ("/v1/billing/usage", {}, {"job": "job_id", "pool": "pool_id"}, "customer_key"),
    ("/v1/billing/invoices", {}, {}, "customer_key"),
    ("/v1/billing/invoices/{invoice_id}", {"invoice_id": "invoice_id"}, {}, "customer_key"),
    ("/v1/billing/statements", {}, {}, "provider_key"),
    ("/v1/billing/payouts", {}, {}, "provider_key"),
    (
        "/v1/billing/statements/{statement_id}",
        {"statement_id": "statement_id"},
        {},
        "provider_key",
    ),
]


@pytest.mark.parametrize(("path", "path_params", "query", "key"), JSON_GETS)
def test_billing_reads_match_the_schema_exactly(
    path: str,
    path_params: dict[str, str],
    query: dict[str, str],
    key: str,
    billed: dict[str, str],
) -> None:
    case = schema[path]["GET"].Case(
        path_parameters={name: billed[ref] for name, ref in path_params.items()},
        query={name: billed[ref] for name, ref in query.items()},
    )
    response = case.call_and_validate(
        headers={"Authorization": f"Bearer {billed[key]}"}, checks=CHECKS
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert_exact_fields(documented(path, "GET", "200", "application/json"), body)
    if body.get("object") == "list":
        assert body["data"], f"{path} returned an empty list: nothing was checked"
    if path.endswith("{invoice_id}"):
        assert body["lines"], "the invoice has no lines: nothing was checked"
        kinds = {
            (line["job_id"] is not None, line["base_model"] is not None) for line in body["lines"]
        }
        assert kinds == {(True, False), (False, False), (False, True)}, "job, booking, inference"
        # Job lines and the booking's charge and refund lines, each naming what it bills.
        owners = [
            (line["job_id"], line["booking_id"], line["correction"])
            for line in body["lines"]
            if not line["base_model"]
        ]
        [asked] = [line for line in body["lines"] if line["base_model"]]
        assert (asked["prompt_tokens"], asked["completion_tokens"]) == (20_000, 5_000)
        assert asked["price_per_million_prompt_tokens"] == "2.0000"
        assert (asked["amount"], asked["vat"]) == ("0.08", "0.02")  # 0.04 + 0.04, 20 % VAT
        booking = billed["booking_id"]
        assert sorted(o for o in owners if o[1]) == [(None, booking, False), (None, booking, True)]
        assert [o for o in owners if not o[1]] and all(o[0] for o in owners if not o[1])
        by_kind = {line["correction"]: line for line in body["lines"] if line["booking_id"]}
        assert (by_kind[False]["amount"], by_kind[False]["vat"]) == ("10.00", "2.00")
        assert (by_kind[True]["amount"], by_kind[True]["vat"]) == ("-5.00", "-1.00")


def test_usage_period_filter_matches_the_schema(billed: dict[str, str]) -> None:
    case = schema["/v1/billing/usage"]["GET"].Case(query={"period": "2026-12", "limit": 1})
    response = case.call_and_validate(
        headers={"Authorization": f"Bearer {billed['customer_key']}"}, checks=CHECKS
    )
    [record] = response.json()["data"]
    assert record["invoiced"] is False and record["gpu_seconds"] == "60.000"


@pytest.mark.parametrize(
    ("export_format", "media_type", "magic"),
    [("pdf", "application/pdf", b"%PDF"), ("html", "text/html", b"<"), ("csv", "text/csv", b"")],
)
@pytest.mark.parametrize("accept", [None, "application/pdf", "*/*"])
def test_invoice_downloads_match_their_content_types(
    export_format: str, media_type: str, magic: bytes, accept: str | None, billed: dict[str, str]
) -> None:
    case = schema["/v1/billing/invoices/{invoice_id}/download/{export_format}"]["GET"].Case(
        path_parameters={"invoice_id": billed["invoice_id"], "export_format": export_format}
    )
    headers = {"Authorization": f"Bearer {billed['customer_key']}"}
    if accept:  # a download client asking for the file type gets it, not a 406
        headers["Accept"] = accept
    response = case.call_and_validate(headers=headers, checks=CHECKS)
    assert response.status_code == 200, response.text
    headers = {name.lower(): values for name, values in response.headers.items()}
    assert headers["content-type"][0].split(";")[0] == media_type
    assert response.content.startswith(magic) and len(response.content) > 100
    assert "attachment" in headers["content-disposition"][0]


def test_cost_estimate_matches_the_schema_exactly(billed: dict[str, str]) -> None:
    case = schema["/v1/billing/cost_estimate"]["POST"].Case(
        body={"gpu_flavor": "h100-80g", "gpu_count": 2, "estimated_duration_seconds": 5400},
        media_type="application/json",
    )
    response = case.call_and_validate(
        headers={"Authorization": f"Bearer {billed['customer_key']}"}, checks=CHECKS
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert_exact_fields(
        documented("/v1/billing/cost_estimate", "POST", "200", "application/json"), body
    )
    assert body["pool"] == billed["pool_id"] and body["amount"] == "7.50"


def test_topup_create_and_settings_update_match_the_schema_exactly(
    billed: dict[str, str],
) -> None:
    headers = {"Authorization": f"Bearer {billed['customer_key']}"}
    case = schema["/v1/billing/topups"]["POST"].Case(
        body={"amount": "25.00", "method": "bank_transfer"}, media_type="application/json"
    )
    response = case.call_and_validate(headers=headers, checks=CHECKS)
    assert response.status_code == 201, response.text
    body = response.json()
    assert_exact_fields(documented("/v1/billing/topups", "POST", "201", "application/json"), body)
    assert body["status"] == "pending" and body["bank_transfer"]["reference"].startswith("PTG-")
    case = schema["/v1/billing/settings"]["PATCH"].Case(
        body={"low_balance_threshold": "15.50"}, media_type="application/json"
    )
    response = case.call_and_validate(headers=headers, checks=CHECKS)
    assert response.status_code == 200, response.text
    body = response.json()
    assert_exact_fields(
        documented("/v1/billing/settings", "PATCH", "200", "application/json"), body
    )
    assert body["low_balance_threshold"] == "15.50"


@pytest.mark.parametrize("after", ["usage-²", "usage-99999999999999999999999", "usage-", "x"])
def test_usage_cursor_that_is_no_record_is_a_clear_404(
    after: str, billed: dict[str, str], client_a: Any
) -> None:
    """Any string is a cursor by the schema; one that names no record is not found."""
    response = client_a.get("/v1/billing/usage", {"after": after})
    assert response.status_code == 404, response.content
    assert response.json()["error"]["param"] == "after"
