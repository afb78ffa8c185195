"""Money for GPU bookings: a booking is paid in full when it is confirmed, and a cancellation
refunds exactly what the cancellation quote promised.

capacity owns bookings and calls these inside its own transactions:

booking_net    - the booking's price before VAT, by the one line rule (money.stream_split).
booking_charge - at confirmation, in the booking's transaction, after the pool lock: lock the
                 org's balance, refuse (InsufficientFunds) when balance + credit line can't cover
                 net + VAT, else post `booking:<id>:charge`.
booking_refund - at cancellation: post `booking:<id>:refund` for the promised refund (before
                 VAT) and the VAT on it, reversing the provider's and the platform's shares.
booking_price, booking_charged, booking_refund_quote, booking_refunded - read-only: the VAT and
                 totals the booking API and portal show, by the same rules as the writes above.

Work that runs on a booking is not charged again for the GPU-seconds inside the booking's window
(usage.attempt_meter records them as covered_gpu_seconds); what runs outside it is usage.
"""

from __future__ import annotations

import logging
from decimal import Decimal
from typing import Any

from django.db import IntegrityError, transaction
from django.utils import timezone

from marketplace.billing.models import Account, BookingCharge, JournalEntry
from marketplace.billing.money import (
    CENT,
    NO_SPLIT,
    ZERO,
    Split,
    cents,
    exact_seconds,
    fee_percent,
    org_vat_rate,
    stream_split,
)
from marketplace.billing.services.alerts import balance_low_check
from marketplace.billing.services.ledger import Leg, account_lock, balance_available, entry_post
from marketplace.billing.services.usage import metering_lock
from marketplace.errors import InsufficientFunds, InvalidInput

logger = logging.getLogger("partage.billing")


def booking_gpu_seconds(*, gpus: int, start: Any, end: Any) -> Decimal:
    return exact_seconds(Decimal(gpus) * Decimal(int((end - start).total_seconds())))


def booking_net(*, gpus: int, start: Any, end: Any, price: Decimal) -> Decimal:
    """The booking's price before VAT: round_half_even(GPUs x seconds x price / 3600)."""
    seconds = booking_gpu_seconds(gpus=gpus, start=start, end=end)
    return stream_split(
        gpu_seconds=seconds, price_per_gpu_hour=Decimal(price), vat_rate=ZERO, fee_percent=ZERO
    ).net


def _split_of_net(net: Decimal, vat_rate: Decimal) -> Split:
    """The money rule applied to a net amount: VAT and fee half-even, provider the remainder."""
    fee = cents(net * fee_percent() / Decimal(100))
    return Split(net=net, vat=cents(net * vat_rate), fee=fee, provider=net - fee)


def _refund_delta(charged: Split, vat_rate: Decimal, refund_amount: Decimal) -> Split:
    """kept - charged (negative amounts): the cumulative amounts of what the booking keeps
    (amount - refund) less what it was charged, so a full refund reverses the charge exactly."""
    return _split_of_net(charged.net - refund_amount, vat_rate) - charged


def _charge_row(booking: Any, kind: str) -> BookingCharge | None:
    # Through the relation, so a prefetch_related("billing_charges") serves it.
    return next((row for row in booking.billing_charges.all() if row.kind == kind), None)


def _split_of_row(row: BookingCharge) -> Split:
    return Split(net=row.net, vat=row.vat, fee=row.fee, provider=row.provider_amount)


def booking_price(*, organization: Any, amount: Decimal) -> Split:
    """What booking_charge charges for a booking of `amount` (before VAT) confirmed now by this
    organization: `.vat` and `.customer_total` are what a quote shows. Writes nothing."""
    return _split_of_net(Decimal(amount), org_vat_rate(organization))


def booking_charged(*, booking: Any) -> Split:
    """What the booking was charged (its `booking:<id>:charge`); for a booking the ledger never
    charged, what booking_charge would charge it now. Writes nothing."""
    row = _charge_row(booking, BookingCharge.Kind.CHARGE)
    if row is not None:
        return _split_of_row(row)
    return booking_price(organization=booking.organization, amount=booking.amount)


def booking_refund_quote(*, booking: Any, refund_amount: Decimal) -> Split:
    """What booking_refund(refund_amount) refunds (positive amounts): `.net` is refund_amount,
    `.vat` the VAT given back (the cumulative rule, at the charged rate), `.customer_total` the
    total the customer gets back. Writes nothing."""
    refund_amount = Decimal(refund_amount)
    row = _charge_row(booking, BookingCharge.Kind.CHARGE)
    if row is not None:
        charged, rate = _split_of_row(row), row.vat_rate
    else:
        rate = org_vat_rate(booking.organization)
        charged = _split_of_net(booking.amount, rate)
    if refund_amount == 0:
        return NO_SPLIT  # booking_refund writes nothing
    return NO_SPLIT - _refund_delta(charged, rate, refund_amount)


def booking_refunded(*, booking: Any) -> Split | None:
    """What a cancelled booking was refunded (positive amounts; its `booking:<id>:refund`, zero
    for a zero refund); None while it is not cancelled with a refund amount. Writes nothing."""
    row = _charge_row(booking, BookingCharge.Kind.REFUND)
    if row is not None:
        return NO_SPLIT - _split_of_row(row)
    if booking.refund_amount is None:
        return None
    return booking_refund_quote(booking=booking, refund_amount=booking.refund_amount)


def _legs(org_id: int, provider_id: int, split: Split) -> list[Leg]:
    """Customer pays (balance debited) net + VAT; provider, platform and VAT credited."""
    return [
        Leg(Account.CUSTOMER_BALANCE, split.customer_total, org_id),
        Leg(Account.PROVIDER_PAYABLE, -split.provider, provider_id),
        Leg(Account.PLATFORM_REVENUE, -split.fee),
        Leg(Account.VAT_PAYABLE, -split.vat),
    ]


def _record(
    booking: Any, kind: str, split: Split, rate: Decimal, seconds: Decimal, memo: str
) -> BookingCharge:
    key = f"booking:{booking.public_id}:{kind}"
    existing = BookingCharge.objects.filter(key=key).first()
    if existing is not None:
        return existing  # a replay writes nothing
    provider_id = booking.pool.provider_id
    try:
        with transaction.atomic():
            # Stamped under the metering lock, like usage: an invoice cut sees every charge
            # stamped before it (invoices claim booking charges by created_at).
            metering_lock()
            entry = entry_post(
                key=key,
                kind=JournalEntry.Kind.CAPTURE if kind == "charge" else JournalEntry.Kind.REFUND,
                organization_id=booking.organization_id,
                memo=memo,
                legs=_legs(booking.organization_id, provider_id, split),
            )
            return BookingCharge.objects.create(
                key=key,
                kind=kind,
                organization_id=booking.organization_id,
                booking=booking,
                pool_id=booking.pool_id,
                provider_id=provider_id,
                price_per_gpu_hour=booking.price_per_gpu_hour,
                vat_rate=rate,
                gpu_seconds=seconds,
                net=split.net,
                vat=split.vat,
                fee=split.fee,
                provider_amount=split.provider,
                entry=entry,
                created_at=timezone.now(),
            )
    except IntegrityError:
        return BookingCharge.objects.get(key=key)


def booking_charge(*, booking: Any) -> BookingCharge:
    """Charge a just-confirmed booking: its amount + VAT from the org's balance. Idempotent.

    Call inside the transaction that creates the booking, after the pool lock (the org balance
    is locked here, last: pool → org balance). Raises InsufficientFunds when the available
    balance plus the credit line does not cover it; the caller's transaction then rolls back
    and no booking is left.
    """
    if booking.amount != booking.amount.quantize(CENT) or booking.amount < 0:
        raise InvalidInput(f"Booking {booking.public_id} has no valid amount.", param="amount")
    with transaction.atomic():
        account = account_lock(organization_id=booking.organization_id)
        existing = BookingCharge.objects.filter(key=f"booking:{booking.public_id}:charge").first()
        if existing is not None:
            return existing
        rate = org_vat_rate(booking.organization)
        split = _split_of_net(booking.amount, rate)
        available = balance_available(organization=booking.organization_id) + account.credit_limit
        if available < split.customer_total:
            raise InsufficientFunds(
                f"Booking {booking.gpu_count} GPU(s) on pool {booking.pool.public_id} for "
                f"[{booking.start:%Y-%m-%d %H:%M}, {booking.end:%Y-%m-%d %H:%M}) UTC costs "
                f"€{split.customer_total} (€{split.net} + €{split.vat} VAT), paid when the "
                f"booking is confirmed, but organization {booking.organization.slug} has "
                f"€{available} available. Top up the prepaid balance (portal: Usage → Add credit, or "
                "POST /v1/billing/topups), or book fewer GPUs or a shorter window.",
                param="balance",
                details={
                    "needed": str(split.customer_total),
                    "available": str(available),
                    "currency": "EUR",
                },
            )
        seconds = booking_gpu_seconds(gpus=booking.gpu_count, start=booking.start, end=booking.end)
        charge = _record(
            booking,
            "charge",
            split,
            rate,
            seconds,
            f"Booking {booking.public_id}: {booking.gpu_count} GPU(s) x "
            f"{int((booking.end - booking.start).total_seconds())} s at "
            f"€{booking.price_per_gpu_hour}/GPU-hour",
        )
        balance_low_check(accounts={account.organization_id: account})
        return charge


def booking_refund(*, booking: Any, refund_amount: Decimal) -> BookingCharge | None:
    """Refund a cancelled booking: `refund_amount` (before VAT, from the cancellation quote)
    plus the VAT on it, reversing the provider's payable and the platform fee. Idempotent.

    The refund is the difference of the booking's cumulative amounts (the rule of money.py)
    between what it was charged and what it keeps (amount - refund_amount): a full refund
    reverses the charge exactly. Nothing is written for a zero refund or an uncharged booking.
    """
    refund_amount = Decimal(refund_amount)
    if refund_amount != refund_amount.quantize(CENT) or refund_amount < ZERO:
        raise InvalidInput(
            f"A refund is a non-negative amount in cents; got {refund_amount}.", param="refund"
        )
    with transaction.atomic():
        account_lock(organization_id=booking.organization_id)
        charge = BookingCharge.objects.filter(key=f"booking:{booking.public_id}:charge").first()
        if charge is None or refund_amount == 0:
            return None
        if refund_amount > charge.net:
            raise InvalidInput(
                f"Booking {booking.public_id} was charged €{charge.net}; it cannot refund "
                f"€{refund_amount}.",
                param="refund",
            )
        delta = _refund_delta(_split_of_row(charge), charge.vat_rate, refund_amount)
        refunded_seconds = -charge.gpu_seconds * refund_amount / charge.net
        return _record(
            booking,
            "refund",
            delta,
            charge.vat_rate,
            exact_seconds(refunded_seconds),
            f"Refund of booking {booking.public_id} cancelled: €{refund_amount} + VAT",
        )
