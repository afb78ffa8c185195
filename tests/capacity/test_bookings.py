"""Bookings through the services: fit, 409 with the earliest window, maintenance, cancellation."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

import pytest
import time_machine
from django.utils import timezone

from marketplace.capacity import selectors, services
from marketplace.capacity.models import Booking
from marketplace.capacity.services import CapacityUnavailable
from marketplace.errors import Conflict, InvalidInput, InvalidTransition
from tests.capacity import factories

pytestmark = pytest.mark.django_db

H = timedelta(hours=1)


def hours_from_now(n: float) -> timezone.datetime:
    base = timezone.now().replace(minute=0, second=0, microsecond=0) + timedelta(days=10)
    return base + n * H


def book(org, gpus, start, end, **kw):
    return services.booking_create(
        organization=org, flavor="h100-80g", gpu_count=gpus, start=start, end=end, **kw
    )


def test_booking_reserves_and_prices(org_a) -> None:
    pool = factories.pool(gpus=8, price="2.5000")
    start, end = hours_from_now(0), hours_from_now(3)
    booking = book(org_a, 4, start, end)
    assert booking.pool == pool
    assert booking.amount == Decimal("30.00")  # 4 GPUs x 3 h x 2.50
    assert booking.cancellation_policy == "standard-v1"
    assert selectors.booked_gpus(pool, start) == 4
    assert selectors.booked_gpus(pool, end) == 0  # half-open
    assert selectors.pool_free_gpus(pool, start + H) == 4


def test_overbooking_is_refused_with_the_earliest_window(org_a, org_b) -> None:
    pool = factories.pool(gpus=8)
    book(org_a, 6, hours_from_now(0), hours_from_now(4))
    book(org_a, 2, hours_from_now(2), hours_from_now(6))
    with pytest.raises(CapacityUnavailable) as caught:
        book(org_b, 4, hours_from_now(1), hours_from_now(3))
    earliest = caught.value.details["earliest"]
    # 6 GPUs are taken until +4h, then 2 until +6h: 4 more fit from +4h.
    assert earliest == {
        "pool": pool.public_id,
        "start": int(hours_from_now(4).timestamp()),
        "end": int(hours_from_now(6).timestamp()),
    }
    assert caught.value.http_status == 409
    assert Booking.objects.filter(organization=org_b).count() == 0
    # The named window really is bookable.
    assert book(org_b, 4, hours_from_now(4), hours_from_now(6)).pool == pool


def test_back_to_back_full_bookings_fit(org_a, org_b) -> None:
    factories.pool(gpus=8)
    book(org_a, 8, hours_from_now(0), hours_from_now(2))
    book(org_b, 8, hours_from_now(2), hours_from_now(4))
    with pytest.raises(CapacityUnavailable):
        book(org_b, 1, hours_from_now(1), hours_from_now(3))


def test_cheapest_pool_first_then_overflow_to_the_next(org_a) -> None:
    cheap = factories.pool(gpus=4, price="1.00")
    dear = factories.pool(gpus=4, price="3.00")
    first = book(org_a, 4, hours_from_now(0), hours_from_now(1))
    second = book(org_a, 4, hours_from_now(0), hours_from_now(1))
    assert (first.pool, second.pool) == (cheap, dear)
    assert second.price_per_gpu_hour == Decimal("3.0000")


def test_specific_pool_and_region(org_a) -> None:
    paris = factories.pool(gpus=4, price="1.00", region="eu-west-paris")
    berlin = factories.pool(gpus=4, price="2.00", region="eu-central-berlin", country="DE")
    assert (
        book(org_a, 1, hours_from_now(0), hours_from_now(1), pool_id=berlin.public_id).pool
        == berlin
    )
    assert (
        book(org_a, 1, hours_from_now(0), hours_from_now(1), region="eu-central-berlin").pool
        == berlin
    )
    assert book(org_a, 1, hours_from_now(0), hours_from_now(1)).pool == paris


def test_residency_policy_applies_to_bookings(org_a) -> None:
    us = factories.pool(gpus=4, price="0.50", country="US", region="us-east")
    fr = factories.pool(gpus=4, price="3.00")
    services.residency_policy_set(organization=org_a, eu_only=True, countries=[])
    assert book(org_a, 1, hours_from_now(0), hours_from_now(1)).pool == fr
    with pytest.raises(InvalidInput, match="residency"):
        book(org_a, 1, hours_from_now(0), hours_from_now(1), pool_id=us.public_id)


@pytest.mark.parametrize(
    ("gpus", "start", "end", "param"),
    [
        (0, 0, 1, "gpus"),
        (1, 2, 1, "end"),
        (1, -24 * 20, -24 * 19, "start"),
        (1, 0, 24 * 100, "end"),
        (9, 0, 1, "gpus"),  # larger than any pool
    ],
)
def test_bad_requests_say_what_is_wrong(org_a, gpus, start, end, param) -> None:
    factories.pool(gpus=8)
    with pytest.raises(InvalidInput) as caught:
        book(org_a, gpus, hours_from_now(start), hours_from_now(end))
    assert caught.value.param == param
    assert Booking.objects.count() == 0


def test_unknown_flavor_lists_known_ones(org_a) -> None:
    factories.pool()
    with pytest.raises(InvalidInput, match="known flavors: h100-80g"):
        services.booking_create(
            organization=org_a,
            flavor="a100",
            gpu_count=1,
            start=hours_from_now(0),
            end=hours_from_now(1),
        )


def test_pending_or_unapproved_pools_take_no_bookings(org_a) -> None:
    factories.pool(approve=False)
    factories.pool(factories.provider(approved=False), approve=False)
    with pytest.raises(InvalidInput, match="No active pool"):
        book(org_a, 1, hours_from_now(0), hours_from_now(1))


def test_maintenance_takes_capacity_and_cannot_overlap_bookings(org_a) -> None:
    pool = factories.pool(gpus=8)
    services.maintenance_window_create(
        pool=pool, start=hours_from_now(0), end=hours_from_now(2), gpu_count=6
    )
    with pytest.raises(CapacityUnavailable) as caught:
        book(org_a, 4, hours_from_now(1), hours_from_now(3))
    assert caught.value.details["earliest"]["start"] == int(hours_from_now(2).timestamp())
    book(org_a, 2, hours_from_now(0), hours_from_now(2))
    with pytest.raises(Conflict, match="overbook"):
        services.maintenance_window_create(
            pool=pool, start=hours_from_now(1), end=hours_from_now(5)
        )
    assert pool.maintenance_windows.count() == 1


def test_pool_cannot_shrink_below_its_bookings(org_a) -> None:
    pool = factories.pool(gpus=8)
    book(org_a, 6, hours_from_now(0), hours_from_now(2))
    with pytest.raises(Conflict, match="cannot shrink"):
        services.pool_update(
            provider=pool.provider, pool_id=pool.public_id, changes={"gpu_count": 4}
        )
    updated = services.pool_update(
        provider=pool.provider, pool_id=pool.public_id, changes={"gpu_count": 6}
    )
    assert updated.gpu_count == 6


def test_cancellation_refunds_follow_the_written_tiers(org_a) -> None:
    factories.pool(gpus=8, price="1.00")
    start = hours_from_now(0)
    booking = book(org_a, 2, start, start + 10 * H)  # 20.00 EUR
    cases = [
        (start - 72 * H, True, Decimal("1"), Decimal("20.00")),
        (start - 48 * H, True, Decimal("1"), Decimal("20.00")),
        (start - 47 * H, True, Decimal("0.5"), Decimal("10.00")),
        (start - 24 * H, True, Decimal("0.5"), Decimal("10.00")),
        (start - 23 * H, True, Decimal("0"), Decimal("0.00")),
        (start, False, Decimal("0"), Decimal("0.00")),
    ]
    for moment, cancellable, fraction, refund in cases:
        quote = services.booking_cancellation_quote(booking=booking, at=moment)
        assert (quote.cancellable, quote.refund_fraction, quote.refund_amount) == (
            cancellable,
            fraction,
            refund,
        ), moment
    with time_machine.travel(start - 30 * H, tick=False):
        cancelled = services.booking_cancel(organization=org_a, booking_id=booking.public_id)
    assert cancelled.status == Booking.Status.CANCELLED
    assert (cancelled.refund_fraction, cancelled.refund_amount) == (
        Decimal("0.5"),
        Decimal("10.00"),
    )
    # Its GPUs are free again.
    assert selectors.booked_gpus(booking.pool, start) == 0
    with pytest.raises(InvalidTransition, match="already cancelled"):
        services.booking_cancel(organization=org_a, booking_id=booking.public_id)


def test_started_bookings_cannot_be_cancelled(org_a) -> None:
    factories.pool(gpus=8)
    start = hours_from_now(0)
    booking = book(org_a, 2, start, start + 2 * H)
    with (
        time_machine.travel(start + H, tick=False),
        pytest.raises(InvalidTransition, match="started"),
    ):
        services.booking_cancel(organization=org_a, booking_id=booking.public_id)
    booking.refresh_from_db()
    assert booking.status == Booking.Status.CONFIRMED


def test_quote_shows_price_and_refunds_before_confirming(org_a) -> None:
    pool = factories.pool(gpus=8, price="2.00")
    start = hours_from_now(0)
    quote = services.booking_quote(
        organization=org_a, flavor="h100-80g", gpu_count=8, start=start, end=start + 2 * H
    )
    assert quote.fits and quote.pool == pool and quote.amount == Decimal("32.00")
    assert [row["refund_amount"] for row in quote.refund_schedule] == [
        Decimal("32.00"),
        Decimal("16.00"),
        Decimal("0.00"),
    ]
    assert quote.refund_schedule[0]["cancel_before"] == start - 48 * H
    assert Booking.objects.count() == 0
    book(org_a, 8, start, start + 2 * H)
    later = services.booking_quote(
        organization=org_a, flavor="h100-80g", gpu_count=1, start=start, end=start + H
    )
    assert not later.fits and later.earliest is not None and later.earliest.start == start + 2 * H
