"""A provider leaving: its pools stop taking work, finish what runs on them, then retire.

Used when a provider organization's deletion is scheduled (marketplace/privacy). A `retiring`
pool is not active: placement and booking skip it (they only use active pools), while the work
already running on it goes on to its end. The customers' bookings on it that have not ended are
cancelled and refunded for the part not yet begun (all of it before it starts): the provider is
leaving, so the customer pays nothing for capacity it will not get. Once nothing runs on a
retiring pool any more it is retired.
"""

from __future__ import annotations

import logging
from decimal import ROUND_DOWN, Decimal

from django.db import transaction
from django.utils import timezone

from marketplace.accounts.models import Organization
from marketplace.capacity import selectors
from marketplace.capacity.models import Booking, Pool
from marketplace.capacity.payments import booking_payments
from marketplace.capacity.services.common import lock_pool

logger = logging.getLogger("partage.capacity")

CENT = Decimal("0.01")


def _unused_part(booking: Booking) -> tuple[Decimal, Decimal]:
    """(fraction, amount) of the booking not yet begun: all of it before its start."""
    now = timezone.now()
    if booking.start >= now:
        return Decimal(1), booking.amount
    left = Decimal((booking.end - now).total_seconds())
    whole = Decimal((booking.end - booking.start).total_seconds())
    fraction = (left / whole).quantize(Decimal("0.0001"), rounding=ROUND_DOWN)
    return fraction, (booking.amount * left / whole).quantize(CENT, rounding=ROUND_DOWN)


def _bookings_cancel(pool: Pool) -> int:
    """Cancel and refund the confirmed bookings of the (locked) pool that have not ended."""
    cancelled = 0
    for booking in Booking.objects.select_for_update().filter(
        pool=pool, status=Booking.Status.CONFIRMED, end__gt=timezone.now()
    ):
        fraction, amount = _unused_part(booking)
        booking.status = Booking.Status.CANCELLED
        booking.cancelled_at = timezone.now()
        booking.refund_fraction = fraction
        booking.refund_amount = amount
        booking.save(update_fields=["status", "cancelled_at", "refund_fraction", "refund_amount"])
        if amount > 0:
            booking_payments().refund(booking=booking, refund_amount=amount)
        cancelled += 1
    return cancelled


def provider_pools_retiring(*, provider: Organization) -> dict[str, list[str] | int]:
    """The provider's active pools stop taking work; their bookings not yet ended are cancelled
    and refunded. Returns the pools it changed (pools_resume puts back exactly those)."""
    changed: list[str] = []
    bookings = 0
    for pool_id in Pool.objects.filter(provider=provider, status=Pool.Status.ACTIVE).values_list(
        "pk", flat=True
    ):
        with transaction.atomic():
            pool = lock_pool(pool_id)
            if pool.status != Pool.Status.ACTIVE:
                continue
            pool.status = Pool.Status.RETIRING
            pool.save(update_fields=["status", "updated_at"])
            bookings += _bookings_cancel(pool)
            changed.append(pool.public_id)
    if changed:
        logger.info(
            "provider pools retiring",
            extra={"org_id": provider.pk, "pools": changed, "bookings_cancelled": bookings},
        )
    return {"pools": changed, "bookings_cancelled": bookings}


def provider_pools_resume(*, provider: Organization, pool_ids: list[str]) -> int:
    """Retiring pools taken out of service by provider_pools_retiring go back to active."""
    return Pool.objects.filter(
        provider=provider, public_id__in=pool_ids, status=Pool.Status.RETIRING
    ).update(status=Pool.Status.ACTIVE, updated_at=timezone.now())


def provider_pools_retire(*, provider: Organization) -> int:
    """Retire each of the provider's pools on which nothing runs any more; returns how many
    still have work running (retire them on a later call)."""
    busy = 0
    now = timezone.now()
    for pool_id in (
        Pool.objects.filter(provider=provider)
        .exclude(status__in=[Pool.Status.RETIRED, Pool.Status.REJECTED])
        .values_list("pk", flat=True)
    ):
        with transaction.atomic():
            pool = lock_pool(pool_id)
            usage = selectors.pools_usage([pool], now)[pool.pk]
            if usage.on_demand or any(usage.used_in_booking.values()):
                busy += 1
                continue
            _bookings_cancel(pool)  # none in practice: none are taken once it is retiring
            pool.status = Pool.Status.RETIRED
            pool.save(update_fields=["status", "updated_at"])
    return busy
