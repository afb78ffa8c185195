"""What capacity needs from billing for a booking: its price, and the charge and refund that
commit with it. Billing depends on capacity (it invoices bookings), not the reverse: it
provides this interface at start-up (`BillingConfig.ready`)."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import TYPE_CHECKING, Any, Protocol

from django.core.exceptions import ImproperlyConfigured

if TYPE_CHECKING:
    from marketplace.capacity.models import Booking


class BookingPayments(Protocol):
    def net(self, *, gpus: int, start: datetime, end: datetime, price: Decimal) -> Decimal:
        """The booking's price before VAT."""
        ...

    def charge(self, *, booking: Booking) -> Any:
        """Charge the organization for a new booking, in the caller's transaction (raises
        InsufficientFunds)."""
        ...

    def refund(self, *, booking: Booking, refund_amount: Decimal) -> Any:
        """Refund a cancelled booking, in the caller's transaction."""
        ...


_provider: BookingPayments | None = None


def booking_payments_provide(provider: BookingPayments) -> None:
    global _provider
    _provider = provider


def booking_payments() -> BookingPayments:
    if _provider is None:
        raise ImproperlyConfigured(
            "No booking payments: add 'marketplace.billing' to INSTALLED_APPS "
            "(its AppConfig.ready registers them)."
        )
    return _provider
