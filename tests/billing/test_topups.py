"""Money in: self-serve top-ups by card (the real `stripe` SDK against a fake of Stripe's HTTP
API, tests/fakes/stripe_api.py) and by bank transfer, amount validation, low-balance alerts."""

from __future__ import annotations

import json
import time
import urllib.request
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import pytest
from django.db import transaction
from django.test import Client
from rest_framework.test import APIClient

from marketplace.billing import services as billing
from marketplace.billing.models import BillingAccount, JournalEntry, Topup
from marketplace.billing.selectors import balance_for_org
from marketplace.errors import InsufficientFunds
from marketplace.events.models import DomainEvent
from tests.billing.conftest import admit, assert_invariants, job_new, topup
from tests.fakes.stripe_api import FakeStripe, signature_header

SECRET_KEY = "sk_test_fake_partage"
WEBHOOK_SECRET = "whsec_fake_partage_endpoint"


def stripe_fake_start(settings: Any, webhook_base_url: str, *, deliveries: int = 1) -> FakeStripe:
    fake = FakeStripe(
        secret_key=SECRET_KEY,
        webhook_secret=WEBHOOK_SECRET,
        webhook_url=f"{webhook_base_url}/webhooks/stripe",
        deliveries_per_event=deliveries,
    ).serve()
    settings.PARTAGE_STRIPE_ENABLED = True
    settings.PARTAGE_STRIPE_SECRET_KEY = SECRET_KEY
    settings.PARTAGE_STRIPE_WEBHOOK_SECRET = WEBHOOK_SECRET
    settings.PARTAGE_STRIPE_API_BASE = fake.base_url
    settings.PARTAGE_STRIPE_CHECKOUT_ORIGIN = fake.base_url
    return fake


@pytest.fixture
def stripe_fake(settings: Any, live_server: Any) -> Iterator[FakeStripe]:
    fake = stripe_fake_start(settings, live_server.url, deliveries=3)
    yield fake
    fake.stop()


def pay(fake: FakeStripe, checkout_url: str) -> None:
    """The customer presses Pay on the hosted checkout page (no redirect followed)."""

    class NoRedirect(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *args: Any, **kwargs: Any) -> None:
            return None

    opener = urllib.request.build_opener(NoRedirect)
    request = urllib.request.Request(checkout_url, data=b"", method="POST")
    try:
        opener.open(request, timeout=60)
    except urllib.error.HTTPError as e:
        assert e.code == 303, e.read()


def available(org: Any) -> Decimal:
    return balance_for_org(org)["available"]


# ---------------------------------------------------------------- amounts


@pytest.mark.django_db
@pytest.mark.parametrize(
    "amount",
    ["1e3", "10.001", "-5", "abc", "NaN", "Infinity", "-Infinity", "0", "0.00", "", " ", "1,000"],
)
def test_bad_amounts_are_refused_naming_the_field(client_a: APIClient, amount: str) -> None:
    response = client_a.post(
        "/v1/billing/topups", {"amount": amount, "method": "bank_transfer"}, format="json"
    )
    assert response.status_code == 400, response.content
    assert response.json()["error"]["param"] == "amount"
    assert not Topup.objects.exists()


@pytest.mark.django_db
@pytest.mark.parametrize("amount", ["9.99", "10000.01", "1000000"])
def test_amounts_outside_the_bounds_are_refused(client_a: APIClient, amount: str) -> None:
    response = client_a.post(
        "/v1/billing/topups", {"amount": amount, "method": "bank_transfer"}, format="json"
    )
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["param"] == "amount"
    assert "€10.00" in error["message"] and "€10000.00" in error["message"]


@pytest.mark.django_db
def test_a_json_number_in_exponent_form_that_is_not_whole_cents_is_refused(
    client_a: APIClient,
) -> None:
    body = '{"amount": 1.0e-3, "method": "bank_transfer"}'
    response = client_a.post("/v1/billing/topups", body, content_type="application/json")
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "amount"


@pytest.mark.django_db
def test_the_staff_manual_top_up_refuses_exponents_too(org_a: Any) -> None:
    from marketplace.errors import InvalidInput

    with pytest.raises(InvalidInput) as refused:
        billing.topup_record(organization=org_a, amount="1e3", reference="r")
    assert refused.value.param == "amount"
    assert available(org_a) == 0


# ---------------------------------------------------------------- bank transfer


@pytest.mark.django_db
def test_bank_transfer_gives_a_unique_reference_and_a_proforma_and_credits_once(
    client_a: APIClient, org_a: Any, carol: Any
) -> None:
    first = client_a.post(
        "/v1/billing/topups", {"amount": "250.50", "method": "bank_transfer"}, format="json"
    )
    second = client_a.post(
        "/v1/billing/topups", {"amount": "100", "method": "bank_transfer"}, format="json"
    )
    assert first.status_code == second.status_code == 201
    body = first.json()
    assert body["status"] == "pending" and body["amount"] == "250.50"
    reference = body["bank_transfer"]["reference"]
    assert reference.startswith("PTG-") and reference != second.json()["bank_transfer"]["reference"]
    proforma = client_a.get(body["bank_transfer"]["proforma"])
    assert proforma.status_code == 200
    assert proforma["Content-Type"] == "application/pdf"
    assert proforma.content.startswith(b"%PDF")
    assert available(org_a) == 0  # nothing before staff see the money

    _first, credited = billing.topup_bank_received(topup_id=body["id"], actor="carol")
    again, credited_again = billing.topup_bank_received(topup_id=body["id"], actor="carol")
    assert (credited, credited_again) == (True, False)
    assert again.status == "credited" and again.credited_by == "carol"
    assert available(org_a) == Decimal("250.50")
    assert JournalEntry.objects.filter(kind="topup").count() == 1
    listed = client_a.get("/v1/billing/topups").json()["data"]
    assert [(t["id"], t["status"]) for t in listed] == [
        (second.json()["id"], "pending"),
        (body["id"], "credited"),
    ]
    assert_invariants()


@pytest.mark.django_db
def test_card_is_refused_when_stripe_is_not_enabled(client_a: APIClient, settings: Any) -> None:
    settings.PARTAGE_STRIPE_ENABLED = False
    response = client_a.post(
        "/v1/billing/topups", {"amount": "50", "method": "card"}, format="json"
    )
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "method"
    assert client_a.get("/v1/billing/settings").json()["topup_methods"] == ["bank_transfer"]


@pytest.mark.django_db
def test_top_ups_are_scoped_to_the_organization(
    client_a: APIClient, client_b: APIClient, org_b: Any
) -> None:
    created = client_a.post(
        "/v1/billing/topups", {"amount": "50", "method": "bank_transfer"}, format="json"
    ).json()
    assert client_b.get(f"/v1/billing/topups/{created['id']}").status_code == 404
    assert client_b.get(f"/v1/billing/topups/{created['id']}/proforma").status_code == 404
    assert client_b.get("/v1/billing/topups").json()["data"] == []
    assert client_a.get(f"/v1/billing/topups/{created['id']}").json()["id"] == created["id"]


# ---------------------------------------------------------------- card, through the fake Stripe


@pytest.mark.django_db(transaction=True)
def test_card_top_up_credits_once_although_the_webhook_comes_three_times(
    stripe_fake: FakeStripe, client_a: APIClient, org_a: Any
) -> None:
    response = client_a.post(
        "/v1/billing/topups", {"amount": "120.00", "method": "card"}, format="json"
    )
    assert response.status_code == 201, response.content
    body = response.json()
    assert body["checkout_url"].startswith(stripe_fake.base_url + "/pay/cs_test_")
    [session] = stripe_fake.sessions.values()
    # What the SDK sent, as Stripe reads it.
    assert session["amount_total"] == 12000 and session["currency"] == "eur"
    assert session["client_reference_id"] == body["id"]
    assert session["metadata"]["organization_id"] == org_a.public_id
    assert available(org_a) == 0

    pay(stripe_fake, body["checkout_url"])

    assert [d.status for d in stripe_fake.deliveries] == [200, 200, 200]
    assert len({d.event_id for d in stripe_fake.deliveries}) == 1
    assert available(org_a) == Decimal("120.00")
    assert JournalEntry.objects.filter(kind="topup", organization=org_a).count() == 1
    assert client_a.get(f"/v1/billing/topups/{body['id']}").json()["status"] == "credited"
    # A late redelivery, and an out-of-order "expired", change nothing.
    assert stripe_fake.deliver(stripe_fake.events[0]) == 200
    stripe_fake.event_send("checkout.session.expired", {**session, "status": "expired"})
    assert available(org_a) == Decimal("120.00")
    assert Topup.objects.get(public_id=body["id"]).status == "credited"
    assert_invariants()


@pytest.mark.django_db(transaction=True)
def test_a_bad_signature_is_refused_and_changes_nothing(
    stripe_fake: FakeStripe, client_a: APIClient, org_a: Any
) -> None:
    body = client_a.post(
        "/v1/billing/topups", {"amount": "80", "method": "card"}, format="json"
    ).json()
    [session] = stripe_fake.sessions.values()
    forged = {
        "id": "evt_forged",
        "object": "event",
        "type": "checkout.session.completed",
        "created": int(time.time()),
        "data": {"object": {**session, "status": "complete", "payment_status": "paid"}},
    }
    assert stripe_fake.deliver(forged, secret="whsec_someone_else") == 400
    payload = json.dumps(forged)
    stale = signature_header(payload, WEBHOOK_SECRET, timestamp=int(time.time()) - 301)
    client = Client()
    response = client.post(
        "/webhooks/stripe", payload, content_type="application/json", HTTP_STRIPE_SIGNATURE=stale
    )
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "Stripe-Signature"
    tampered = payload.replace('"amount_total": 8000', '"amount_total": 800000')
    header = signature_header(payload, WEBHOOK_SECRET)
    response = client.post(
        "/webhooks/stripe", tampered, content_type="application/json", HTTP_STRIPE_SIGNATURE=header
    )
    assert response.status_code == 400
    unsigned = client.post("/webhooks/stripe", payload, content_type="application/json")
    assert unsigned.status_code == 400
    assert available(org_a) == 0
    assert Topup.objects.get(public_id=body["id"]).status == "pending"
    assert not JournalEntry.objects.filter(kind="topup").exists()


@pytest.mark.django_db(transaction=True)
def test_an_expired_session_is_shown_expired_and_a_late_payment_still_credits_once(
    stripe_fake: FakeStripe, client_a: APIClient, org_a: Any
) -> None:
    body = client_a.post(
        "/v1/billing/topups", {"amount": "30", "method": "card"}, format="json"
    ).json()
    [session] = stripe_fake.sessions.values()
    stripe_fake.event_send("checkout.session.expired", {**session, "status": "expired"})
    assert client_a.get(f"/v1/billing/topups/{body['id']}").json()["status"] == "expired"
    # Out of order: the completion arrives after the expiry; the money did arrive.
    stripe_fake.pay(session["id"])
    assert client_a.get(f"/v1/billing/topups/{body['id']}").json()["status"] == "credited"
    assert available(org_a) == Decimal("30.00")


@pytest.mark.django_db
def test_the_stripe_outage_is_a_clear_error_and_the_top_up_is_kept_failed(
    client_a: APIClient, settings: Any
) -> None:
    settings.PARTAGE_STRIPE_ENABLED = True
    settings.PARTAGE_STRIPE_API_BASE = "http://127.0.0.1:9"  # nothing listens there
    response = client_a.post(
        "/v1/billing/topups", {"amount": "50", "method": "card"}, format="json"
    )
    assert response.status_code == 502
    error = response.json()["error"]
    assert error["code"] == "payment_provider_unavailable" and "bank transfer" in error["message"]
    assert Topup.objects.get().status == "failed"


@pytest.mark.django_db
def test_a_session_paid_with_another_amount_is_not_credited(
    settings: Any, client_a: APIClient, org_a: Any
) -> None:
    settings.PARTAGE_STRIPE_ENABLED = True
    fake = stripe_fake_start(settings, "http://127.0.0.1:9")
    try:
        body = client_a.post(
            "/v1/billing/topups", {"amount": "40", "method": "card"}, format="json"
        ).json()
    finally:
        fake.stop()
    [session] = fake.sessions.values()
    event = {
        "id": "evt_1",
        "object": "event",
        "type": "checkout.session.completed",
        "data": {"object": {**session, "payment_status": "paid", "amount_total": 400}},
    }
    payload = json.dumps(event)
    response = Client().post(
        "/webhooks/stripe",
        payload,
        content_type="application/json",
        HTTP_STRIPE_SIGNATURE=signature_header(payload, WEBHOOK_SECRET),
    )
    assert response.status_code == 200 and response.json()["outcome"] == "amount mismatch"
    assert Topup.objects.get(public_id=body["id"]).status == "failed"
    assert available(org_a) == 0


# ---------------------------------------------------------------- low balance


def _alerts() -> list[DomainEvent]:
    return list(DomainEvent.objects.filter(event_type="billing.balance_low").order_by("id"))


@pytest.mark.django_db
def test_low_balance_alerts_once_per_crossing(org_a: Any, pool: Any, client_a: APIClient) -> None:
    topup(org_a, "20.00")
    response = client_a.patch(
        "/v1/billing/settings", {"low_balance_threshold": "10.00"}, format="json"
    )
    assert response.status_code == 200 and response.json()["low_balance_threshold"] == "10.00"
    assert client_a.get("/v1/billing/balance").json()["low_balance_threshold"] == "10.00"
    # 1 GPU x 3600 s at €2.50 + 20 % VAT: €3.00 held; 17.00 left, above the threshold.
    admit(job_new(org_a), pool)
    assert _alerts() == []
    admit(job_new(org_a), pool)  # 14.00
    admit(job_new(org_a), pool)  # 11.00
    admit(job_new(org_a), pool)  # 8.00: below
    admit(job_new(org_a), pool)  # 5.00: still below, no second alert
    [first] = _alerts()
    assert first.data == {
        "available": "8.00",
        "threshold": "10.00",
        "currency": "EUR",
        "reason": "below_threshold",
    }
    assert BillingAccount.objects.get(organization=org_a).low_balance_since is not None
    # Money in re-arms it; the next crossing alerts again.
    topup(org_a, "20.00", "t2")  # 25.00
    assert BillingAccount.objects.get(organization=org_a).low_balance_since is None
    for _ in range(6):  # 22, 19, 16, 13, 10, then 7.00: below again
        admit(job_new(org_a), pool)
    assert len(_alerts()) == 2


@pytest.mark.django_db
def test_a_refused_hold_alerts_once(org_a: Any, pool: Any) -> None:
    topup(org_a, "1.00")
    for _ in range(3):
        # As the admission pass does: the refusal is an outcome, the transaction commits.
        job = job_new(org_a)
        with transaction.atomic():
            outcomes = billing.holds_place(
                [billing.HoldRequest(job=job, pool=pool, max_duration_seconds=3600)]
            )
        assert isinstance(outcomes[job.pk], InsufficientFunds)
    [alert] = _alerts()
    assert alert.data["reason"] == "hold_refused" and alert.organization_id == org_a.pk
    assert alert.subject_id == org_a.public_id and alert.data["available"] == "1.00"


@pytest.mark.django_db
@pytest.mark.parametrize("value", ["-1", "0", "1.001", "1e2", "lots"])
def test_bad_thresholds_are_refused(client_a: APIClient, value: str) -> None:
    response = client_a.patch(
        "/v1/billing/settings", {"low_balance_threshold": value}, format="json"
    )
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "low_balance_threshold"


@pytest.mark.django_db
def test_the_threshold_can_be_turned_off(client_a: APIClient) -> None:
    client_a.patch("/v1/billing/settings", {"low_balance_threshold": "5"}, format="json")
    response = client_a.patch(
        "/v1/billing/settings", {"low_balance_threshold": None}, format="json"
    )
    assert response.status_code == 200 and response.json()["low_balance_threshold"] is None


@pytest.mark.django_db
def test_the_balance_low_e_mail_goes_to_owners_and_admins(
    org_a: Any, alice: Any, pool: Any
) -> None:
    from marketplace.notifications.topics.balance import balance_low_render

    topup(org_a, "1.00")
    billing.low_balance_threshold_set(organization=org_a, threshold=Decimal("5.00"))
    [event] = _alerts()
    [message] = balance_low_render(event)
    assert message.to == [alice.email]
    assert "€1.00" in message.subject
    assert "below the alert threshold of €5.00" in message.body
    assert "/billing/credit/" in message.body


@pytest.mark.django_db(transaction=True)
def test_the_low_balance_e_mail_is_sent_once_through_the_outbox(
    org_a: Any, alice: Any, settings: Any
) -> None:
    from django.core import mail

    from workers.celery import app

    settings.CELERY_TASK_ALWAYS_EAGER = True
    app.conf.task_always_eager = True
    try:
        topup(org_a, "7.00")
        # Already below the new threshold: alerted at once.
        billing.low_balance_threshold_set(organization=org_a, threshold=Decimal("10.00"))
        topup(org_a, "1.00", "t2")  # 8.00: still below, not re-armed, no second e-mail
    finally:
        app.conf.task_always_eager = False
    [message] = mail.outbox
    assert message.to == ["alice@a.example"]
    assert "€7.00" in message.subject and "threshold of €10.00" in message.body


@pytest.mark.django_db
def test_a_retried_topup_request_with_the_same_idempotency_key_starts_one_top_up(
    client_a: APIClient,
) -> None:
    body = {"amount": "60", "method": "bank_transfer"}
    first = client_a.post("/v1/billing/topups", body, format="json", HTTP_IDEMPOTENCY_KEY="k-1")
    again = client_a.post("/v1/billing/topups", body, format="json", HTTP_IDEMPOTENCY_KEY="k-1")
    assert first.status_code == again.status_code == 201
    assert first.json()["id"] == again.json()["id"]
    assert Topup.objects.count() == 1
