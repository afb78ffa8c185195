"""Top-ups under real concurrency, on PostgreSQL with real threads: duplicate Stripe webhook
deliveries and double clicks in the cockpit arriving at the same instant credit once."""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

import pytest
from django.db import connection
from django.test import Client

from marketplace.billing import services as billing
from marketplace.billing.models import JournalEntry, Topup
from tests.billing.conftest import assert_invariants
from tests.billing.test_races_pg import _together
from tests.billing.test_topups import WEBHOOK_SECRET, stripe_fake_start
from tests.fakes.stripe_api import signature_header

pytestmark = [pytest.mark.pg, pytest.mark.django_db(transaction=True)]


@pytest.fixture(autouse=True)
def _needs_postgres() -> None:
    if connection.vendor != "postgresql":
        pytest.skip("row locks need PostgreSQL: run with DATABASE_URL=postgres://…")


def test_concurrent_duplicate_webhook_deliveries_credit_once(settings: Any, org_a: Any) -> None:
    fake = stripe_fake_start(settings, "http://127.0.0.1:9")
    try:
        topup = billing.topup_start(organization=org_a, amount="75.25", method="card")
    finally:
        fake.stop()
    session = fake.sessions[topup.reference]
    event = {
        "id": "evt_race",
        "object": "event",
        "type": "checkout.session.completed",
        "data": {"object": {**session, "status": "complete", "payment_status": "paid"}},
    }
    payload = json.dumps(event)

    def deliver(_: int) -> tuple[int, str]:
        response = Client().post(
            "/webhooks/stripe",
            payload,
            content_type="application/json",
            HTTP_STRIPE_SIGNATURE=signature_header(payload, WEBHOOK_SECRET),
        )
        return response.status_code, response.json()["outcome"]

    results = _together(8, deliver)
    assert all(status == 200 for status, _ in results), results
    assert sorted(outcome for _, outcome in results) == ["already credited"] * 7 + ["credited"]
    assert billing.balance_available(organization=org_a) == Decimal("75.25")
    assert JournalEntry.objects.filter(kind="topup", organization=org_a).count() == 1
    assert Topup.objects.get(pk=topup.pk).status == "credited"
    assert_invariants()


def test_concurrent_clicks_on_mark_received_credit_once(org_a: Any) -> None:
    topup = billing.topup_start(organization=org_a, amount="500", method="bank_transfer")
    results = _together(
        6, lambda i: billing.topup_bank_received(topup_id=topup.public_id, actor=f"staff-{i}")[1]
    )
    assert sorted(results) == [False] * 5 + [True]
    assert billing.balance_available(organization=org_a) == Decimal("500.00")
    assert JournalEntry.objects.filter(kind="topup", organization=org_a).count() == 1
