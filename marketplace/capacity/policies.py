"""Written rules of the capacity market: data residency and the booking cancellation policy."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

from marketplace.capacity.models import EU_COUNTRIES
from marketplace.errors import InvalidInput

CENT = Decimal("0.01")


def money(amount: Decimal) -> Decimal:
    """Amounts are rounded to the cent, half up, only where an amount is shown or stored."""
    return amount.quantize(CENT, rounding=ROUND_HALF_UP)


# ---------------------------------------------------------------- residency


@dataclass(frozen=True)
class Residency:
    """Where work may run. `countries` empty means no country list; both rules must hold."""

    eu_only: bool = False
    countries: frozenset[str] = field(default_factory=frozenset)

    def allows(self, country: str) -> bool:
        country = country.upper()
        if self.eu_only and country not in EU_COUNTRIES:
            return False
        return not self.countries or country in self.countries

    def why_not(self, country: str) -> str:
        if self.eu_only and country.upper() not in EU_COUNTRIES:
            return f"residency: {country} is outside the EU and the policy is EU-only"
        return f"residency: {country} is not in the allowed countries {sorted(self.countries)}"

    def describe(self) -> str:
        parts = []
        if self.eu_only:
            parts.append("EU only")
        if self.countries:
            parts.append("countries " + ", ".join(sorted(self.countries)))
        return " and ".join(parts) or "anywhere"

    def narrowed(self, other: Residency) -> Residency:
        """Both policies at once (an org's floor and a job's own request)."""
        if self.countries and other.countries:
            countries = self.countries & other.countries
            if not countries:
                # Disjoint lists allow nothing; keep a sentinel so nothing matches.
                countries = frozenset({"--"})
        else:
            countries = self.countries or other.countries
        return Residency(eu_only=self.eu_only or other.eu_only, countries=countries)


def residency_parse(raw: Mapping[str, Any] | None, *, param: str = "residency") -> Residency:
    """Validate {"eu_only": bool, "countries": ["FR", ...]}; bad input raises InvalidInput."""
    raw = dict(raw or {})
    unknown = set(raw) - {"eu_only", "countries"}
    if unknown:
        raise InvalidInput(
            f"Unknown residency option(s): {', '.join(sorted(unknown))}. Known: eu_only, countries.",
            param=param,
        )
    eu_only = raw.get("eu_only", False)
    if not isinstance(eu_only, bool):
        raise InvalidInput(f"{param}.eu_only must be true or false.", param=f"{param}.eu_only")
    countries = raw.get("countries") or []
    if not isinstance(countries, list):
        raise InvalidInput(
            f"{param}.countries must be a list of ISO 3166-1 alpha-2 codes, e.g. ['FR', 'DE'].",
            param=f"{param}.countries",
        )
    return Residency(
        eu_only=eu_only, countries=frozenset(country_code(c, param) for c in countries)
    )


def country_code(value: Any, param: str = "country") -> str:
    if not isinstance(value, str) or len(value) != 2 or not value.isalpha() or not value.isascii():
        raise InvalidInput(
            f"{value!r} is not a country code; use ISO 3166-1 alpha-2 such as 'FR'.", param=param
        )
    return value.upper()


# ---------------------------------------------------------------- cancellation

CANCELLATION_POLICY = "standard-v1"


@dataclass(frozen=True)
class RefundTier:
    """Cancelling at least `notice` before the start refunds `fraction` of the amount."""

    notice: timedelta
    fraction: Decimal


# Checked in order; the first tier whose notice is met applies. Less than 24 h: no refund.
# Once the booking has started it cannot be cancelled (its GPUs were held for you).
REFUND_TIERS: tuple[RefundTier, ...] = (
    RefundTier(notice=timedelta(hours=48), fraction=Decimal("1")),
    RefundTier(notice=timedelta(hours=24), fraction=Decimal("0.5")),
    RefundTier(notice=timedelta(0), fraction=Decimal("0")),
)
POLICY_TEXT = (
    "Cancel 48 hours or more before the start: full refund. 24 to 48 hours before: 50% refund. "
    "Less than 24 hours before: no refund. Started bookings cannot be cancelled."
)


@dataclass(frozen=True)
class CancellationQuote:
    cancellable: bool
    refund_fraction: Decimal
    refund_amount: Decimal
    reason: str


def refund_fraction_at(*, start: datetime, at: datetime) -> Decimal | None:
    """The fraction refunded when cancelling at `at`; None once the booking has started."""
    if at >= start:
        return None
    notice = start - at
    for tier in REFUND_TIERS:
        if notice >= tier.notice:
            return tier.fraction
    return Decimal("0")


def cancellation_quote(*, amount: Decimal, start: datetime, at: datetime) -> CancellationQuote:
    fraction = refund_fraction_at(start=start, at=at)
    if fraction is None:
        return CancellationQuote(
            cancellable=False,
            refund_fraction=Decimal("0"),
            refund_amount=Decimal("0.00"),
            reason="The booking has started; started bookings cannot be cancelled.",
        )
    refund = money(amount * fraction)
    return CancellationQuote(
        cancellable=True,
        refund_fraction=fraction,
        refund_amount=refund,
        reason=f"Cancelling now refunds {fraction:.0%} ({refund} EUR): {POLICY_TEXT}",
    )


def refund_schedule(*, amount: Decimal, start: datetime) -> list[dict[str, Any]]:
    """What cancelling refunds, by deadline, shown before a booking is confirmed."""
    return [
        {
            "cancel_before": start - tier.notice,
            "refund_fraction": tier.fraction,
            "refund_amount": money(amount * tier.fraction),
        }
        for tier in REFUND_TIERS
    ]


def gpu_hours(*, gpus: int, start: datetime, end: datetime) -> Decimal:
    seconds = Decimal(int((end - start).total_seconds()))
    return Decimal(gpus) * seconds / Decimal(3600)


def booking_amount(*, gpus: int, start: datetime, end: datetime, price: Decimal) -> Decimal:
    return money(gpu_hours(gpus=gpus, start=start, end=end) * price)
