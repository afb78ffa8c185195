"""/v1 capacity API: offers, pools (providers), bookings (409 with the earliest window, quotes,
cancellation), residency policy, tenancy on every route, query counts on lists."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

import pytest
import time_machine
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone
from rest_framework.test import APIClient

from marketplace.accounts.services import api_key_create
from marketplace.capacity.models import Booking, Pool
from tests.capacity import factories

pytestmark = pytest.mark.django_db

H = 3600


def later(hours: float) -> int:
    base = timezone.now().replace(minute=0, second=0, microsecond=0) + timedelta(days=10)
    return int(base.timestamp() + hours * H)


@pytest.fixture
def provider_client(db: None) -> tuple[APIClient, object]:
    owner = factories.provider("gpu-cloud")
    client = APIClient()
    client.credentials(
        HTTP_AUTHORIZATION=f"Bearer {api_key_create(organization=owner, name='ops').secret}"
    )
    return client, owner


def assert_error(response, status: int, code: str, param: str | None = None) -> dict:
    assert response.status_code == status, response.content
    error = response.json()["error"]
    assert set(error) >= {"message", "type", "param", "code"}
    assert error["code"] == code
    if param is not None:
        assert error["param"] == param
    return error


# ---------------------------------------------------------------- offers


def test_offers_need_a_key(client) -> None:
    assert APIClient().get("/v1/offers").status_code == 401


def test_offers_search_and_live_free_capacity(client_a, org_b) -> None:
    fr = factories.pool(gpus=8, price="2.00", country="FR", region="eu-west-paris")
    de = factories.pool(gpus=4, price="3.00", country="DE", region="eu-central")
    a100 = factories.pool(gpus=4, price="1.00", flavor_slug="a100-40g", region="eu-west-lyon")
    a100.flavor.model_name, a100.flavor.memory_gb = "NVIDIA A100", 40
    a100.flavor.save()
    factories.pool(approve=False)  # pending: never offered
    factories.running_on(fr, org_b, gpus=3)

    def ids(**params) -> list[str]:
        response = client_a.get("/v1/offers", params)
        assert response.status_code == 200, response.content
        return sorted(o["id"] for o in response.json()["data"])

    body = client_a.get("/v1/offers").json()
    assert body["object"] == "list" and body["has_more"] is False
    by_id = {o["id"]: o for o in body["data"]}
    assert set(by_id) == {fr.public_id, de.public_id, a100.public_id}
    assert by_id[fr.public_id]["free_gpus"] == 5
    assert by_id[fr.public_id]["price_per_gpu_hour"] == "2.0000"
    assert by_id[fr.public_id]["flavor"]["id"] == "h100-80g"
    assert ids(gpu_model="a100") == [a100.public_id]
    assert ids(min_memory_gb=80) == sorted([fr.public_id, de.public_id])
    assert ids(country="de") == [de.public_id]
    assert ids(region="eu-west-paris") == [fr.public_id]
    assert ids(max_price="2.00") == sorted([fr.public_id, a100.public_id])
    assert ids(gpus=5) == [fr.public_id]
    assert ids(gpus=6) == []


def test_offers_available_at_counts_bookings_then(client_a, org_b) -> None:
    pool = factories.pool(gpus=8)
    from marketplace.capacity import services

    start = timezone.now() + timedelta(days=2)
    services.booking_create(
        organization=org_b,
        flavor="h100-80g",
        gpu_count=6,
        start=start,
        end=start + timedelta(hours=2),
    )
    during = int((start + timedelta(hours=1)).timestamp())
    offer = client_a.get("/v1/offers", {"available_at": during}).json()["data"][0]
    assert (offer["id"], offer["free_gpus"]) == (pool.public_id, 2)
    assert client_a.get("/v1/offers", {"available_at": during, "gpus": 3}).json()["data"] == []
    assert client_a.get("/v1/offers").json()["data"][0]["free_gpus"] == 8
    # A maintenance window takes its GPUs out of the offer for its duration.
    services.maintenance_window_create(
        pool=pool, start=start, end=start + timedelta(minutes=90), gpu_count=1
    )
    offer = client_a.get("/v1/offers", {"available_at": during}).json()["data"][0]
    assert offer["free_gpus"] == 1
    after = int((start + timedelta(minutes=100)).timestamp())
    assert client_a.get("/v1/offers", {"available_at": after}).json()["data"][0]["free_gpus"] == 2


def test_offers_bad_filters_are_explained(client_a) -> None:
    assert_error(client_a.get("/v1/offers", {"gpus": 0}), 400, "invalid_request", "gpus")
    assert_error(
        client_a.get("/v1/offers", {"max_price": "cheap"}), 400, "invalid_request", "max_price"
    )


def test_offers_paginate_with_a_cursor_and_constant_queries(client_a) -> None:
    pools = [factories.pool() for _ in range(5)]
    first = client_a.get("/v1/offers", {"limit": 2}).json()
    assert first["has_more"] is True and len(first["data"]) == 2
    second = client_a.get("/v1/offers", {"limit": 2, "after": first["last_id"]}).json()
    third = client_a.get("/v1/offers", {"limit": 2, "after": second["last_id"]}).json()
    seen = [o["id"] for o in first["data"] + second["data"] + third["data"]]
    assert seen == [p.public_id for p in reversed(pools)]  # newest first
    assert third["has_more"] is False
    with CaptureQueriesContext(connection) as few:
        client_a.get("/v1/offers")
    for _ in range(5):
        factories.pool()
    with CaptureQueriesContext(connection) as many:
        client_a.get("/v1/offers")
    assert len(many) == len(few)


def test_flavors_are_listed(client_a) -> None:
    factories.flavor("h100-80g")
    data = client_a.get("/v1/gpu_flavors").json()["data"]
    assert data == [
        {
            "id": "h100-80g",
            "object": "gpu_flavor",
            "model": "NVIDIA H100",
            "memory_gb": 80,
            "interconnect": "sxm",
        }
    ]


# ---------------------------------------------------------------- pools


def test_provider_creates_a_pending_pool_and_updates_it(provider_client) -> None:
    client, owner = provider_client
    factories.flavor("h100-80g")
    response = client.post(
        "/v1/pools",
        {
            "name": "Paris H100",
            "flavor": "h100-80g",
            "gpu_count": 16,
            "region": "eu-west-paris",
            "country": "fr",
            "certifications": ["ISO27001", "hds"],
            "price_per_gpu_hour": "2.35",
            "node_selector": {"partage.eu/pool": "paris-h100"},
            "tolerations": [
                {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
            ],
        },
        format="json",
    )
    assert response.status_code == 201, response.content
    pool = response.json()
    assert pool["status"] == "pending_approval" and pool["country"] == "FR"
    assert pool["certifications"] == ["hds", "iso27001"]
    assert pool["price_per_gpu_hour"] == "2.3500"
    patched = client.patch(f"/v1/pools/{pool['id']}", {"price_per_gpu_hour": "2.10"}, format="json")
    assert patched.status_code == 200 and patched.json()["price_per_gpu_hour"] == "2.1000"
    assert_error(
        client.patch(f"/v1/pools/{pool['id']}", {"country": "US"}, format="json"),
        400,
        "invalid_request",
        "country",
    )
    assert_error(
        client.patch(f"/v1/pools/{pool['id']}", {"price_per_gpu_hour": "-1"}, format="json"),
        400,
        "invalid_request",
        "price_per_gpu_hour",
    )
    listed = client.get("/v1/pools").json()["data"]
    assert [p["id"] for p in listed] == [pool["id"]]
    assert Pool.objects.get(public_id=pool["id"]).provider == owner


def test_pool_creation_errors(provider_client, client_a) -> None:
    client, _owner = provider_client
    factories.flavor("h100-80g")
    body = {
        "name": "x",
        "flavor": "h100-80g",
        "gpu_count": 4,
        "region": "r",
        "country": "FR",
        "price_per_gpu_hour": "1",
    }
    # A startup's key cannot offer pools.
    assert_error(client_a.post("/v1/pools", body, format="json"), 403, "permission_denied")
    assert_error(
        client.post("/v1/pools", {**body, "flavor": "tpu"}, format="json"),
        400,
        "invalid_request",
        "flavor",
    )
    assert_error(
        client.post("/v1/pools", {**body, "gpu_count": 0}, format="json"),
        400,
        "invalid_request",
        "gpu_count",
    )
    assert_error(
        client.post("/v1/pools", {**body, "country": "France"}, format="json"),
        400,
        "invalid_request",
    )
    assert_error(
        client.post("/v1/pools", {**body, "colour": "red"}, format="json"),
        400,
        "invalid_request",
        "colour",
    )
    assert Pool.objects.count() == 0


def test_pools_are_scoped_to_their_provider(provider_client, client_a) -> None:
    client, _owner = provider_client
    other = factories.pool()  # another provider's pool
    assert_error(client.get(f"/v1/pools/{other.public_id}"), 404, "not_found")
    assert_error(
        client.patch(f"/v1/pools/{other.public_id}", {"name": "mine"}, format="json"),
        404,
        "not_found",
    )
    assert_error(client.delete(f"/v1/pools/{other.public_id}"), 404, "not_found")
    assert_error(client_a.get(f"/v1/pools/{other.public_id}"), 404, "not_found")
    assert client.get("/v1/pools").json()["data"] == []
    other.refresh_from_db()
    assert other.name != "mine"


def test_provider_schedules_maintenance_that_respects_bookings(provider_client, org_a) -> None:
    client, owner = provider_client
    pool = factories.pool(owner, gpus=4)
    from marketplace.capacity import services

    start = timezone.now() + timedelta(days=5)
    services.booking_create(
        organization=org_a,
        flavor="h100-80g",
        gpu_count=3,
        start=start,
        end=start + timedelta(hours=2),
    )
    url = f"/v1/pools/{pool.public_id}/maintenance_windows"
    window = {"start": int(start.timestamp()), "end": int((start + timedelta(hours=1)).timestamp())}
    assert_error(client.post(url, window, format="json"), 409, "conflict", "start")
    response = client.post(url, {**window, "gpu_count": 1, "reason": "fan swap"}, format="json")
    assert response.status_code == 201, response.content
    assert client.get(url).json()["data"][0]["reason"] == "fan swap"


# ---------------------------------------------------------------- bookings


def test_booking_flow_quote_book_409_cancel(client_a, client_b) -> None:
    pool = factories.pool(gpus=8, price="2.00")
    request = {"flavor": "h100-80g", "gpus": 6, "start": later(0), "end": later(2)}
    quote = client_a.post("/v1/bookings/quote", request, format="json").json()
    assert quote["fits"] is True and quote["amount"] == "24.00" and quote["pool"] == pool.public_id
    assert [row["refund_amount"] for row in quote["refund_schedule"]] == ["24.00", "12.00", "0.00"]
    assert "48 hours" in quote["cancellation_rules"]
    assert Booking.objects.count() == 0

    created = client_a.post("/v1/bookings", request, format="json")
    assert created.status_code == 201, created.content
    booking = created.json()
    assert booking["id"].startswith("bk-") and booking["status"] == "confirmed"
    assert (booking["start"], booking["end"], booking["amount"]) == (later(0), later(2), "24.00")

    clash = client_b.post(
        "/v1/bookings", {**request, "gpus": 4, "start": later(1), "end": later(3)}, format="json"
    )
    error = assert_error(clash, 409, "capacity_unavailable", "start")
    assert error["details"]["earliest"] == {
        "pool": pool.public_id,
        "start": later(2),
        "end": later(4),
    }
    assert "earliest window" in error["message"]

    cancellation = client_a.get(f"/v1/bookings/{booking['id']}/cancellation_quote").json()
    assert cancellation["cancellable"] is True and cancellation["refund_amount"] == "24.00"
    cancelled = client_a.post(f"/v1/bookings/{booking['id']}/cancel").json()
    assert cancelled["status"] == "cancelled" and cancelled["refund_amount"] == "24.00"
    assert (
        client_b.post(
            "/v1/bookings", {**request, "start": later(1), "end": later(3)}, format="json"
        ).status_code
        == 201
    )


def _available(client) -> Decimal:
    return Decimal(client.get("/v1/billing/balance").json()["available"])


def test_booking_vat_and_totals_are_what_billing_charges_and_refunds(client_a, org_a) -> None:
    """Org A (FR) pays 20 % VAT. 1 GPU x 1 h at 24.13: 24.13 + 4.83 VAT = 28.96. Cancelled 30 h
    before its start, half is refunded: 12.07 (half up) + 2.42 VAT (the cumulative rule: 4.83
    charged less 2.41 on the 12.06 kept; 12.07 x 20 % alone would round to 2.41) = 14.49."""
    from marketplace.billing.models import BookingCharge

    factories.pool(gpus=8, price="24.13")
    request = {"flavor": "h100-80g", "gpus": 1, "start": later(0), "end": later(1)}
    quote = client_a.post("/v1/bookings/quote", request, format="json").json()
    assert (quote["amount"], quote["vat"], quote["total"]) == ("24.13", "4.83", "28.96")

    before = _available(client_a)
    created = client_a.post("/v1/bookings", request, format="json")
    assert created.status_code == 201, created.content
    booking = created.json()
    assert (booking["amount"], booking["vat"], booking["total"]) == ("24.13", "4.83", "28.96")
    assert (booking["refund_vat"], booking["refund_total"]) == (None, None)
    charge = BookingCharge.objects.get(booking__public_id=booking["id"], kind="charge")
    assert (str(charge.net), str(charge.vat)) == (booking["amount"], booking["vat"])
    assert before - _available(client_a) == Decimal(booking["total"])
    assert client_a.get(f"/v1/bookings/{booking['id']}").json() == booking
    assert client_a.get("/v1/bookings").json()["data"] == [booking]

    with time_machine.travel(timezone.now() + timedelta(days=10, hours=-30), tick=False):
        quoted = client_a.get(f"/v1/bookings/{booking['id']}/cancellation_quote").json()
        assert (quoted["refund_amount"], quoted["refund_vat"], quoted["refund_total"]) == (
            "12.07",
            "2.42",
            "14.49",
        )
        before = _available(client_a)
        cancelled = client_a.post(f"/v1/bookings/{booking['id']}/cancel").json()
    refund = BookingCharge.objects.get(booking__public_id=booking["id"], kind="refund")
    assert (str(-refund.net), str(-refund.vat)) == (quoted["refund_amount"], quoted["refund_vat"])
    assert _available(client_a) - before == Decimal(quoted["refund_total"])
    assert (cancelled["refund_amount"], cancelled["refund_vat"], cancelled["refund_total"]) == (
        "12.07",
        "2.42",
        "14.49",
    )
    assert (cancelled["vat"], cancelled["total"]) == ("4.83", "28.96")  # what was charged


def test_booking_vat_follows_the_org_s_vat_treatment(client_b, org_b) -> None:
    """Org B (DE) with a VAT id: EU B2B reverse charge, no VAT charged or refunded."""
    org_b.vat_id = "DE123456789"
    org_b.save(update_fields=["vat_id"])
    factories.pool(gpus=8, price="24.13")
    request = {"flavor": "h100-80g", "gpus": 2, "start": later(0), "end": later(1)}
    quote = client_b.post("/v1/bookings/quote", request, format="json").json()
    assert (quote["amount"], quote["vat"], quote["total"]) == ("48.26", "0.00", "48.26")
    booking = client_b.post("/v1/bookings", request, format="json").json()
    assert (booking["vat"], booking["total"]) == ("0.00", "48.26")
    quoted = client_b.get(f"/v1/bookings/{booking['id']}/cancellation_quote").json()
    assert (quoted["refund_amount"], quoted["refund_vat"], quoted["refund_total"]) == (
        "48.26",
        "0.00",
        "48.26",
    )


def test_booking_create_is_idempotent(client_a) -> None:
    factories.pool(gpus=8)
    request = {"flavor": "h100-80g", "gpus": 2, "start": later(0), "end": later(1)}
    first = client_a.post("/v1/bookings", request, format="json", HTTP_IDEMPOTENCY_KEY="bk-1")
    again = client_a.post("/v1/bookings", request, format="json", HTTP_IDEMPOTENCY_KEY="bk-1")
    assert first.status_code == again.status_code == 201
    assert again.json() == first.json() and again["Idempotent-Replayed"] == "true"
    assert Booking.objects.count() == 1
    other = client_a.post(
        "/v1/bookings", {**request, "gpus": 3}, format="json", HTTP_IDEMPOTENCY_KEY="bk-1"
    )
    assert_error(other, 409, "idempotency_key_reused", "Idempotency-Key")
    assert Booking.objects.count() == 1


def test_booking_validation_errors(client_a) -> None:
    factories.pool(gpus=8)
    base = {"flavor": "h100-80g", "gpus": 1, "start": later(0), "end": later(1)}
    assert_error(
        client_a.post("/v1/bookings", {**base, "gpus": 0}, format="json"),
        400,
        "invalid_request",
        "gpus",
    )
    assert_error(
        client_a.post("/v1/bookings", {**base, "end": later(-1)}, format="json"),
        400,
        "invalid_request",
        "end",
    )
    assert_error(
        client_a.post("/v1/bookings", {**base, "start": "soon"}, format="json"),
        400,
        "invalid_request",
        "start",
    )
    assert_error(
        client_a.post("/v1/bookings", {**base, "pool": "pool-nope"}, format="json"),
        400,
        "invalid_request",
        "pool",
    )
    assert Booking.objects.count() == 0


def test_bookings_are_scoped_to_their_organization(client_a, client_b) -> None:
    factories.pool(gpus=8)
    booking = client_a.post(
        "/v1/bookings",
        {"flavor": "h100-80g", "gpus": 1, "start": later(0), "end": later(1)},
        format="json",
    ).json()
    for path in ("", "/cancellation_quote"):
        assert_error(client_b.get(f"/v1/bookings/{booking['id']}{path}"), 404, "not_found")
    assert_error(client_b.post(f"/v1/bookings/{booking['id']}/cancel"), 404, "not_found")
    assert client_b.get("/v1/bookings").json()["data"] == []
    assert [b["id"] for b in client_a.get("/v1/bookings").json()["data"]] == [booking["id"]]
    assert Booking.objects.get(public_id=booking["id"]).status == "confirmed"


def test_booking_list_paginates_with_constant_queries(client_a) -> None:
    factories.pool(gpus=64)
    body = {"flavor": "h100-80g", "gpus": 1, "start": later(0), "end": later(1)}
    ids = [client_a.post("/v1/bookings", body, format="json").json()["id"] for _ in range(3)]
    page = client_a.get("/v1/bookings", {"limit": 2}).json()
    assert [b["id"] for b in page["data"]] == ids[::-1][:2] and page["has_more"] is True
    rest = client_a.get("/v1/bookings", {"limit": 2, "after": page["last_id"]}).json()
    assert [b["id"] for b in rest["data"]] == [ids[0]]
    with CaptureQueriesContext(connection) as few:
        client_a.get("/v1/bookings")
    for _ in range(4):
        client_a.post("/v1/bookings", body, format="json")
    with CaptureQueriesContext(connection) as many:
        client_a.get("/v1/bookings")
    assert len(many) == len(few)


# ---------------------------------------------------------------- estimate before submitting


def test_estimate_before_submitting_gives_cost_and_start(client_a, org_b) -> None:
    from marketplace.capacity import services

    pool = factories.pool(gpus=4, price="2.00")
    now = timezone.now().replace(microsecond=0)
    body = {"gpu_flavor": "h100-80g", "gpu_count": 2, "estimated_duration_seconds": 5400}
    with time_machine.travel(now, tick=False):
        free = client_a.post("/v1/placement_estimate", body, format="json")
        assert free.status_code == 200, free.content
        assert free.json() | {"reason": ""} == {
            "object": "placement_estimate",
            "gpu_flavor": "h100-80g",
            "gpu_count": 2,
            "estimated_duration_seconds": 5400,
            "pool": pool.public_id,
            "price_per_gpu_hour": "2.0000",
            "estimated_start": int(now.timestamp()),
            "estimated_cost": "6.00",  # 2.00 EUR x 2 GPUs x 1.5 h
            "currency": "EUR",
            "reason": "",
        }
        assert pool.public_id in free.json()["reason"]
        services.booking_create(
            organization=org_b,
            flavor="h100-80g",
            gpu_count=4,
            start=now,
            end=now + timedelta(hours=3),
        )
        busy = client_a.post("/v1/placement_estimate", body, format="json").json()
        assert busy["pool"] == pool.public_id and busy["estimated_cost"] == "6.00"
        assert busy["estimated_start"] == int((now + timedelta(hours=3)).timestamp())
        nowhere = client_a.post(
            "/v1/placement_estimate", {**body, "residency": {"countries": ["US"]}}, format="json"
        ).json()
        assert (nowhere["pool"], nowhere["estimated_start"], nowhere["estimated_cost"]) == (
            None,
            None,
            None,
        )
        assert "hard constraints" in nowhere["reason"]
    assert_error(
        client_a.post("/v1/placement_estimate", {**body, "gpu_flavor": "tpu"}, format="json"),
        400,
        "invalid_request",
        "gpu_flavor",
    )
    assert_error(
        client_a.post(
            "/v1/placement_estimate",
            {**body, "residency": {"countries": ["France"]}},
            format="json",
        ),
        400,
        "invalid_request",
    )
    assert Booking.objects.count() == 1


# ---------------------------------------------------------------- residency


def test_residency_policy_is_per_organization(client_a, client_b) -> None:
    response = client_a.put(
        "/v1/residency_policy", {"eu_only": True, "countries": ["fr", "de"]}, format="json"
    )
    assert response.status_code == 200
    assert response.json()["countries"] == ["DE", "FR"] and response.json()["eu_only"] is True
    assert client_b.get("/v1/residency_policy").json()["eu_only"] is False
    assert_error(
        client_a.put(
            "/v1/residency_policy", {"eu_only": True, "countries": ["Europe"]}, format="json"
        ),
        400,
        "invalid_request",
    )
    assert client_a.get("/v1/residency_policy").json()["countries"] == ["DE", "FR"]
