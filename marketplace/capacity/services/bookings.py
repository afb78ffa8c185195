"""Writes for bookings: validate, pick the cheapest pool that fits under its lock, quote, cancel.

No pool is ever overbooked (REFERENCE §5 invariant 3): the pool row is locked (FOR NO KEY
UPDATE), the peak of overlapping bookings and maintenance computed, and the booking written
only if the peak plus the new GPUs fits; otherwise CapacityUnavailable names the earliest
window that would.

Money is billing's: a booking is charged (amount + VAT) in the transaction that confirms it, and
refused with InsufficientFunds (nothing written) when the balance can't cover it; a cancellation
refunds, in the same transaction as the cancellation, exactly the quote's refund_amount (+ VAT). See docs/billing.md.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from django.db import transaction
from django.utils import timezone

from marketplace.accounts.guards import content_add_check
from marketplace.accounts.models import ApiKey, Organization, User
from marketplace.capacity import policies, selectors
from marketplace.capacity.models import (
    Booking,
    GpuFlavor,
    Pool,
)
from marketplace.capacity.payments import booking_payments
from marketplace.capacity.services.common import (
    MAX_BOOKING,
    START_GRACE,
    CapacityUnavailable,
    lock_pool,
    new_id,
    unix,
    window_check,
)
from marketplace.capacity.timeline import peak
from marketplace.errors import InvalidInput, InvalidTransition, NotFound


@dataclass(frozen=True)
class BookingRequest:
    organization: Organization
    flavor: GpuFlavor
    gpu_count: int
    start: datetime
    end: datetime
    pool_id: str | None
    region: str | None

    @property
    def duration(self) -> timedelta:
        return self.end - self.start


def booking_request(
    *,
    organization: Organization,
    flavor: str,
    gpu_count: int,
    start: datetime,
    end: datetime,
    pool_id: str | None = None,
    region: str | None = None,
    at: datetime | None = None,
) -> BookingRequest:
    """Validate a booking request; every problem says which field and how to fix it."""
    now = at or timezone.now()
    gpu_flavor = GpuFlavor.objects.filter(slug=flavor).first()
    if gpu_flavor is None:
        known = ", ".join(GpuFlavor.objects.values_list("slug", flat=True)) or "none yet"
        raise InvalidInput(
            f"Unknown GPU flavor {flavor!r}; known flavors: {known}.", param="flavor"
        )
    if isinstance(gpu_count, bool) or not isinstance(gpu_count, int) or gpu_count < 1:
        raise InvalidInput("gpus must be a positive integer.", param="gpus")
    window_check(start, end)
    if start < now - START_GRACE:
        raise InvalidInput("start is in the past; book from now on.", param="start")
    if start > now + selectors.SEARCH_HORIZON:
        raise InvalidInput(
            "start is more than a year ahead; book closer to the date.", param="start"
        )
    if end - start > MAX_BOOKING:
        raise InvalidInput(
            f"A booking lasts at most {MAX_BOOKING.days} days; split longer needs.", param="end"
        )
    return BookingRequest(organization, gpu_flavor, gpu_count, start, end, pool_id, region)


def booking_candidates(request: BookingRequest) -> list[Pool]:
    """Pools that could hold the booking, cheapest first (ties: oldest pool)."""
    residency = selectors.residency_for_org(request.organization)
    pools = selectors.placeable_pools().filter(flavor=request.flavor)
    if request.pool_id:
        pool = Pool.objects.filter(public_id=request.pool_id).first()
        if pool is None or not pools.filter(pk=pool.pk).exists():
            raise InvalidInput(
                f"Pool {request.pool_id!r} is not an active {request.flavor.slug} offer; "
                "GET /v1/offers lists them.",
                param="pool",
            )
        if not residency.allows(pool.country):
            raise InvalidInput(
                f"Pool {pool.public_id} is in {pool.country}; your organization's data-residency "
                f"policy ({residency.describe()}) forbids it.",
                param="pool",
            )
        pools = pools.filter(pk=pool.pk)
    if request.region:
        pools = pools.filter(region=request.region)
    candidates = [
        p for p in pools.order_by("price_per_gpu_hour", "pk") if residency.allows(p.country)
    ]
    candidates = [p for p in candidates if p.gpu_count >= request.gpu_count]
    if not candidates:
        where = f" in region {request.region}" if request.region else ""
        raise InvalidInput(
            f"No active pool offers {request.gpu_count} {request.flavor.slug} GPUs{where} within "
            f"your residency policy ({residency.describe()}). GET /v1/offers lists what exists.",
            param="gpus",
        )
    return candidates


@dataclass(frozen=True)
class EarliestWindow:
    pool: Pool
    start: datetime
    end: datetime


def earliest_window(request: BookingRequest, candidates: list[Pool]) -> EarliestWindow | None:
    best: EarliestWindow | None = None
    for pool in candidates:
        start = selectors.earliest_booking_window(
            pool, gpus=request.gpu_count, duration=request.duration, not_before=request.start
        )
        if start is not None and (best is None or start < best.start):
            best = EarliestWindow(pool, start, start + request.duration)
    return best


def _unavailable(request: BookingRequest, candidates: list[Pool]) -> CapacityUnavailable:
    window = earliest_window(request, candidates)
    wanted = (
        f"{request.gpu_count} {request.flavor.slug} GPUs for "
        f"[{request.start:%Y-%m-%d %H:%M}, {request.end:%Y-%m-%d %H:%M}) UTC"
    )
    if window is None:
        return CapacityUnavailable(
            f"No pool can hold {wanted} within a year.", param="start", details={"earliest": None}
        )
    return CapacityUnavailable(
        f"No pool has {wanted}. The earliest window that fits is "
        f"[{window.start:%Y-%m-%d %H:%M}, {window.end:%Y-%m-%d %H:%M}) UTC on pool "
        f"{window.pool.public_id}; book that window or choose another time.",
        param="start",
        details={
            "earliest": {
                "pool": window.pool.public_id,
                "start": unix(window.start),
                "end": unix(window.end),
            }
        },
    )


def _book_on(pool: Pool, request: BookingRequest, **audit: Any) -> Booking | None:
    """Lock the pool, check the peak, write and charge. None when it does not fit (nothing
    written); InsufficientFunds (nothing written either) when the balance can't pay for it."""
    with transaction.atomic():
        locked = lock_pool(pool.pk)
        if locked.status != Pool.Status.ACTIVE:
            return None
        loads = selectors.reserved_loads([locked.pk], request.start, request.end)[locked.pk]
        if peak(loads, request.start, request.end) + request.gpu_count > locked.gpu_count:
            return None
        booking = Booking.objects.create(
            public_id=new_id("bk"),
            organization=request.organization,
            pool=locked,
            flavor=request.flavor,
            gpu_count=request.gpu_count,
            start=request.start,
            end=request.end,
            price_per_gpu_hour=locked.price_per_gpu_hour,
            amount=booking_payments().net(
                gpus=request.gpu_count,
                start=request.start,
                end=request.end,
                price=locked.price_per_gpu_hour,
            ),
            cancellation_policy=policies.CANCELLATION_POLICY,
            **audit,
        )
        booking_payments().charge(booking=booking)  # org balance locked last: pool → balance
        return booking


def booking_create(
    *,
    organization: Organization,
    flavor: str,
    gpu_count: int,
    start: datetime,
    end: datetime,
    pool_id: str | None = None,
    region: str | None = None,
    created_by: User | None = None,
    created_by_key: ApiKey | None = None,
) -> Booking:
    """Book on the cheapest candidate pool that fits; CapacityUnavailable names the earliest fit.

    Each candidate is tried in its own short transaction holding one pool lock, so locks are
    never stacked and the lock order stays pool → quota → balance.
    """
    content_add_check(organization=organization, action="book GPUs")
    request = booking_request(
        organization=organization,
        flavor=flavor,
        gpu_count=gpu_count,
        start=start,
        end=end,
        pool_id=pool_id,
        region=region,
    )
    candidates = booking_candidates(request)
    for pool in candidates:
        booking = _book_on(pool, request, created_by=created_by, created_by_key=created_by_key)
        if booking is not None:
            return booking
    raise _unavailable(request, candidates)


@dataclass(frozen=True)
class BookingQuote:
    pool: Pool | None
    gpu_count: int
    start: datetime
    end: datetime
    price_per_gpu_hour: Decimal | None
    amount: Decimal | None
    refund_schedule: list[dict[str, Any]]
    earliest: EarliestWindow | None
    fits: bool


def booking_quote(
    *,
    organization: Organization,
    flavor: str,
    gpu_count: int,
    start: datetime,
    end: datetime,
    pool_id: str | None = None,
    region: str | None = None,
) -> BookingQuote:
    """What booking would cost and refund, before confirming. Writes nothing, locks nothing."""
    request = booking_request(
        organization=organization,
        flavor=flavor,
        gpu_count=gpu_count,
        start=start,
        end=end,
        pool_id=pool_id,
        region=region,
    )
    candidates = booking_candidates(request)
    fitting = next(
        (
            p
            for p in candidates
            if selectors.pool_peak_reserved(p, request.start, request.end) + gpu_count
            <= p.gpu_count
        ),
        None,
    )
    earliest = None if fitting else earliest_window(request, candidates)
    pool = fitting or (earliest.pool if earliest else None)
    amount = (
        booking_payments().net(gpus=gpu_count, start=start, end=end, price=pool.price_per_gpu_hour)
        if pool
        else None
    )
    return BookingQuote(
        pool=pool,
        gpu_count=gpu_count,
        start=start,
        end=end,
        price_per_gpu_hour=pool.price_per_gpu_hour if pool else None,
        amount=amount,
        refund_schedule=policies.refund_schedule(amount=amount, start=start) if amount else [],
        earliest=earliest,
        fits=fitting is not None,
    )


def booking_cancellation_quote(
    *, booking: Booking, at: datetime | None = None
) -> policies.CancellationQuote:
    if booking.status == Booking.Status.CANCELLED:
        return policies.CancellationQuote(
            cancellable=False,
            refund_fraction=booking.refund_fraction or Decimal("0"),
            refund_amount=booking.refund_amount or Decimal("0.00"),
            reason="The booking is already cancelled.",
        )
    return policies.cancellation_quote(
        amount=booking.amount, start=booking.start, at=at or timezone.now()
    )


def booking_cancel(
    *, organization: Organization, booking_id: str, by: User | None = None
) -> Booking:
    """Cancel before the start; the refund follows the policy shown in the quote."""
    with transaction.atomic():
        booking = (
            Booking.objects.select_for_update()
            .filter(organization=organization, public_id=booking_id)
            .first()
        )
        if booking is None:
            raise NotFound(f"No booking {booking_id!r}.", param="booking_id")
        if booking.status == Booking.Status.CANCELLED:
            raise InvalidTransition(
                f"Booking {booking_id} is already cancelled.", param="booking_id"
            )
        now = timezone.now()
        quote = policies.cancellation_quote(amount=booking.amount, start=booking.start, at=now)
        if not quote.cancellable:
            raise InvalidTransition(
                f"Booking {booking_id} started at {booking.start:%Y-%m-%d %H:%M} UTC; "
                f"{quote.reason}",
                param="booking_id",
            )
        booking.status = Booking.Status.CANCELLED
        booking.cancelled_at = now
        booking.cancelled_by = by
        booking.refund_fraction = quote.refund_fraction
        booking.refund_amount = quote.refund_amount
        booking.save(
            update_fields=[
                "status",
                "cancelled_at",
                "cancelled_by",
                "refund_fraction",
                "refund_amount",
            ]
        )
        booking_payments().refund(booking=booking, refund_amount=quote.refund_amount)
    return booking
