"""Add credit in the portal, the cockpit's bank transfers, and quotes that tell the truth about
the balance before anything is confirmed."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal
from typing import Any

import pytest
from django.contrib.admin.models import LogEntry
from django.test import Client
from django.utils import timezone

from marketplace.billing.models import Topup
from marketplace.billing.selectors import balance_for_org
from marketplace.capacity.models import Booking
from tests.capacity import factories
from tests.portal.conftest import make_file

pytestmark = pytest.mark.django_db


def test_a_bank_transfer_top_up_from_the_portal(
    alice_web: Client, bob_web: Client, org_a: Any
) -> None:
    page = alice_web.get("/billing/credit/")
    assert page.status_code == 200 and "Add credit" in page.content.decode()
    response = alice_web.post(
        "/billing/credit/", {"amount": "150.00", "method": "bank_transfer"}, follow=True
    )
    topup = Topup.objects.get()
    html = response.content.decode()
    assert topup.organization == org_a and topup.amount == Decimal("150.00")
    assert topup.reference in html and "awaiting transfer" in html
    proforma = alice_web.get(f"/billing/topups/{topup.public_id}/proforma/")
    assert proforma.status_code == 200 and proforma.content.startswith(b"%PDF")
    assert bob_web.get(f"/billing/topups/{topup.public_id}/proforma/").status_code == 404
    assert topup.public_id not in bob_web.get("/billing/credit/").content.decode()
    assert balance_for_org(org_a)["available"] == 0


@pytest.mark.parametrize("amount", ["1e3", "10.001", "-5", "NaN", "Infinity", "abc", "5"])
def test_the_portal_form_refuses_bad_amounts_next_to_the_field(
    alice_web: Client, amount: str
) -> None:
    response = alice_web.post("/billing/credit/", {"amount": amount, "method": "bank_transfer"})
    assert response.status_code == 400
    assert response.context["form"].errors["amount"]
    assert not Topup.objects.exists()


def test_staff_mark_a_transfer_received_once_and_it_is_logged(
    alice_web: Client, carol_web: Client, org_a: Any
) -> None:
    alice_web.post("/billing/credit/", {"amount": "75", "method": "bank_transfer"})
    topup = Topup.objects.get()
    cockpit = carol_web.get("/cockpit/").content.decode()
    assert topup.reference in cockpit
    url = f"/cockpit/topups/{topup.public_id}/received/"
    first = carol_web.post(url, follow=True)
    second = carol_web.post(url, follow=True)
    assert "€75.00 credited" in first.content.decode()
    assert "already credited" in second.content.decode()
    assert balance_for_org(org_a)["available"] == Decimal("75.00")
    [entry] = LogEntry.objects.filter(object_id=str(topup.pk))
    assert entry.user.username == "carol" and topup.reference in entry.get_change_message()
    assert topup.reference in carol_web.get("/cockpit/").content.decode()  # in the change log
    assert alice_web.post(url).status_code == 404  # not staff


def test_the_alert_threshold_is_set_by_owners(alice_web: Client, org_a: Any) -> None:
    response = alice_web.post(
        "/billing/credit/alert/", {"low_balance_threshold": "25"}, follow=True
    )
    assert "€25.00" in response.content.decode()
    bad = alice_web.post("/billing/credit/alert/", {"low_balance_threshold": "1e3"})
    assert bad.status_code == 400
    assert bad.context["threshold_form"].errors["low_balance_threshold"]


def _booking_form(pool: Any) -> dict[str, Any]:
    start = (timezone.now() + timedelta(days=5)).replace(minute=0, second=0, microsecond=0)
    return {
        "pool": pool.public_id,
        "gpu_count": 2,
        "hours": 10,
        "start": start.strftime("%Y-%m-%dT%H:%M"),
    }


def test_a_booking_quote_the_balance_cannot_cover_says_so(alice_web: Client, org_a: Any) -> None:
    pool = factories.pool(gpus=8, price="2.50", name="Paris H100")
    factories.fund(org_a, "45.50")
    quote = alice_web.post("/offers/book/", {**_booking_form(pool), "action": "quote"})
    html = quote.content.decode()
    # 2 GPUs x 10 h x €2.50 = €50.00 + €10.00 VAT = €60.00; €45.50 available.
    assert quote.context["coverage"].shortfall == Decimal("14.50")
    assert "does not cover this booking" in html and "€14.50" in html
    assert "/billing/credit/?amount=14.50" in html
    assert "Confirm booking" not in html
    factories.fund(org_a, "14.50")
    quote = alice_web.post("/offers/book/", {**_booking_form(pool), "action": "quote"})
    assert "Confirm booking" in quote.content.decode()
    assert "does not cover" not in quote.content.decode()
    assert not Booking.objects.exists()


def test_the_api_booking_quote_carries_the_shortfall(client_a: Any, org_a: Any) -> None:
    pool = factories.pool(gpus=8, price="2.50", name="Paris H100")
    start = timezone.now() + timedelta(days=5)
    body = {
        "flavor": "h100-80g",
        "gpus": 2,
        "start": int(start.timestamp()),
        "end": int((start + timedelta(hours=10)).timestamp()),
        "pool": pool.public_id,
    }
    quote = client_a.post("/v1/bookings/quote", body, format="json").json()
    assert quote["balance"] == {
        "covered": False,
        "needed": "60.00",
        "available": "0.00",
        "shortfall": "60.00",
        "currency": "EUR",
    }
    estimate = client_a.post(
        "/v1/billing/cost_estimate",
        {"gpu_flavor": "h100-80g", "gpu_count": 1, "estimated_duration_seconds": 3600},
        format="json",
    ).json()
    assert estimate["balance"]["shortfall"] == "3.00" and not estimate["balance"]["covered"]


def test_the_job_review_says_when_the_balance_cannot_cover_the_hold(
    alice_web: Client, org_a: Any
) -> None:
    from tests.portal.test_jobs import LAUNCH

    factories.pool(gpus=8, price="2.50", name="Paris H100")
    file = make_file(org_a)
    form = {**LAUNCH, "training_file": file.id, "gpu_flavor": "h100-80g", "gpu_count": 1}
    review = alice_web.post("/jobs/new/", {**form, "action": "review"})
    estimate = review.context["estimate"]
    html = review.content.decode()
    assert estimate.coverage.shortfall == estimate.cost > 0
    assert "does not cover this job" in html and f"€{estimate.cost}" in html
    assert "Confirm and launch" not in html and "Add credit" in html
    factories.fund(org_a, str(estimate.cost))
    review = alice_web.post("/jobs/new/", {**form, "action": "review"})
    assert "Confirm and launch" in review.content.decode()
    assert "does not cover" not in review.content.decode()


def test_the_credit_page_lets_its_form_redirect_to_stripe_checkout_only(
    alice_web: Client, settings: Any
) -> None:
    settings.PARTAGE_STRIPE_ENABLED = False
    policy = alice_web.get("/billing/credit/")["Content-Security-Policy"]
    assert "form-action 'self';" in policy
    settings.PARTAGE_STRIPE_ENABLED = True
    policy = alice_web.get("/billing/credit/")["Content-Security-Policy"]
    assert "form-action 'self' https://checkout.stripe.com;" in policy
    assert "form-action 'self';" in alice_web.get("/usage/")["Content-Security-Policy"]
