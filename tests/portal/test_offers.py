"""Offers and bookings in the portal: filters, the availability timeline, quote, book, cancel."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal
from typing import Any

import pytest
from django.test import Client
from django.utils import timezone

from marketplace.billing.models import BookingCharge
from marketplace.capacity.models import Booking
from marketplace.capacity.services import booking_create
from tests.capacity import factories

pytestmark = pytest.mark.django_db


@pytest.fixture
def pools(db: None, org_a: Any, org_b: Any) -> dict[str, Any]:
    factories.fund(org_a)  # bookings are paid when confirmed
    factories.fund(org_b)
    return {
        "paris": factories.pool(gpus=8, price="2.50", region="eu-west-paris", name="Paris H100"),
        "berlin": factories.pool(
            gpus=4,
            price="1.20",
            region="eu-central-berlin",
            country="DE",
            name="Berlin L40S",
            flavor_slug="l40s-48g",
        ),
    }


def test_offers_are_filtered_by_gpu_region_and_price(alice_web: Client, pools: Any) -> None:
    factories.flavor("l40s-48g", model_name="NVIDIA L40S", memory_gb=48)
    names = lambda r: [row["pool"].name for row in r.context["rows"]]  # noqa: E731
    assert names(alice_web.get("/offers/")) == ["Berlin L40S", "Paris H100"]
    assert names(alice_web.get("/offers/?flavor=h100-80g")) == ["Paris H100"]
    assert names(alice_web.get("/offers/?region=eu-central-berlin")) == ["Berlin L40S"]
    assert names(alice_web.get("/offers/?max_price=2.00")) == ["Berlin L40S"]
    assert names(alice_web.get("/offers/?gpus=5")) == ["Paris H100"]


def test_the_timeline_shows_booked_days(alice_web: Client, org_b: Any, pools: Any) -> None:
    paris = pools["paris"]
    day = timezone.now().replace(hour=0, minute=0, second=0, microsecond=0) + timedelta(days=2)
    booking_create(
        organization=org_b,
        flavor="h100-80g",
        gpu_count=8,
        start=day + timedelta(hours=10),
        end=day + timedelta(hours=12),
        pool_id=paris.public_id,
    )
    booking_create(
        organization=org_b,
        flavor="h100-80g",
        gpu_count=3,
        start=day + timedelta(days=1, hours=1),
        end=day + timedelta(days=1, hours=5),
        pool_id=paris.public_id,
    )
    rows = alice_web.get("/offers/").context["rows"]
    days = next(r for r in rows if r["pool"].pk == paris.pk)["days"]
    assert [d["free"] for d in days[:5]] == [8, 8, 0, 5, 8]
    assert [d["level"] for d in days[1:4]] == ["all", "none", "some"]
    # Another org's booking shows as load, never as its details.
    assert org_b.name not in alice_web.get("/offers/").content.decode()


def test_quote_then_book_then_cancel(alice_web: Client, org_a: Any, pools: Any) -> None:
    paris = pools["paris"]
    start = (timezone.now() + timedelta(days=5)).replace(minute=0, second=0, microsecond=0)
    form = {
        "pool": paris.public_id,
        "gpu_count": 2,
        "hours": 10,
        "start": start.strftime("%Y-%m-%dT%H:%M"),
    }
    quote = alice_web.post("/offers/book/", {**form, "action": "quote"})
    assert quote.status_code == 200
    assert quote.context["quote"].amount == Decimal("50.00") and quote.context["quote"].fits
    # Org A (FR) pays 20 % VAT: the page shows what confirming charges, VAT included.
    price = quote.context["quote_price"]
    assert (price.net, price.vat, price.customer_total) == (
        Decimal("50.00"),
        Decimal("10.00"),
        Decimal("60.00"),
    )
    assert "€60.00" in quote.content.decode() and "€50.00 + €10.00 VAT" in quote.content.decode()
    assert "Confirm booking" in quote.content.decode()
    assert not Booking.objects.exists()
    alice_web.post("/offers/book/", {**form, "action": "confirm"})
    booking = Booking.objects.get()
    assert (booking.organization, booking.gpu_count, booking.start) == (org_a, 2, start)
    assert booking.end - booking.start == timedelta(hours=10)
    charged = BookingCharge.objects.get(booking=booking, kind="charge")
    assert (charged.net, charged.vat) == (price.net, price.vat)  # the quote was what it charged
    listed = alice_web.get("/offers/")
    assert [(r["booking"], r["charged"]) for r in listed.context["bookings"]] == [(booking, price)]
    assert '<td class="num">€10.00</td><td class="num">€60.00</td>' in listed.content.decode()
    page = alice_web.post(f"/bookings/{booking.public_id}/cancel/", follow=True)
    booking.refresh_from_db()
    assert booking.status == "cancelled" and booking.refund_amount == Decimal("50.00")
    refund = BookingCharge.objects.get(booking=booking, kind="refund")
    assert (refund.net, refund.vat) == (Decimal("-50.00"), Decimal("-10.00"))
    html = page.content.decode()
    assert "refund €60.00 (€50.00 + €10.00 VAT) to your prepaid balance" in html
    assert "refunded €60.00 (€50.00 + €10.00 VAT)" in html


def test_a_full_window_is_explained(alice_web: Client, org_b: Any, pools: Any) -> None:
    paris = pools["paris"]
    start = (timezone.now() + timedelta(days=5)).replace(minute=0, second=0, microsecond=0)
    booking_create(
        organization=org_b,
        flavor="h100-80g",
        gpu_count=8,
        start=start,
        end=start + timedelta(hours=4),
        pool_id=paris.public_id,
    )
    form = {
        "pool": paris.public_id,
        "gpu_count": 2,
        "hours": 2,
        "start": start.strftime("%Y-%m-%dT%H:%M"),
        "action": "confirm",
    }
    response = alice_web.post("/offers/book/", form)
    assert response.status_code == 400
    assert "The earliest window that fits" in response.content.decode()
    assert Booking.objects.count() == 1


def test_bob_cannot_cancel_alice_s_booking(
    alice_web: Client, bob_web: Client, org_a: Any, pools: Any
) -> None:
    start = timezone.now() + timedelta(days=5)
    booking = booking_create(
        organization=org_a,
        flavor="h100-80g",
        gpu_count=1,
        start=start,
        end=start + timedelta(hours=1),
        pool_id=pools["paris"].public_id,
    )
    response = bob_web.post(f"/bookings/{booking.public_id}/cancel/", follow=True)
    assert "No booking" in response.content.decode()
    booking.refresh_from_db()
    assert booking.status == "confirmed"
    assert booking.public_id not in bob_web.get("/offers/").content.decode()


def test_an_empty_marketplace_says_what_to_do_not_that_filters_match_nothing(
    alice_web: Client, carol: Any, org_a: Any
) -> None:
    from marketplace.accounts.models import Membership
    from marketplace.accounts.services import membership_set

    body = alice_web.get("/offers/").content.decode()
    assert "No GPU pool is offered yet" in body and "No offer matches these filters" not in body
    assert "Providers propose pools through the API" in body
    membership_set(organization=org_a, user=carol, role=Membership.Role.MEMBER)
    staff = Client()
    staff.force_login(carol)
    assert "approve pending pools in the" in staff.get("/offers/").content.decode()


def test_filters_that_match_nothing_offer_a_reset(alice_web: Client, pools: Any) -> None:
    body = alice_web.get("/offers/?max_price=0.10").content.decode()
    assert "No offer matches these filters" in body and "Reset the filters" in body
