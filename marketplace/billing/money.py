"""The money rules, in one place: rounding, VAT treatment, the platform-fee split.

THE ROUNDING RULE. Amounts are Decimal EUR. Usage is priced per *stream* (one job on one pool at
one price snapshot). For a stream with C cumulative billable GPU-seconds at price P per GPU-hour:

    net(C)      = round_half_even(C x P / 3600, 0.01)
    vat(C)      = round_half_even(net(C) x VAT rate, 0.01)
    fee(C)      = round_half_even(net(C) x platform fee %, 0.01)
    provider(C) = net(C) - fee(C)                 (the provider takes the remainder)

Every ledger capture and every invoice line carries the *difference* between the stream's
cumulative amounts after and before it. So rounding happens once per line, a stream billed in one
piece costs exactly round_half_even(GPU-seconds x price / 3600), and however a stream is split
(pauses, late records, several invoices) its pieces add up to the same cents.
Customer charge = net + VAT = provider payable + platform fee + VAT, exactly.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from decimal import ROUND_CEILING, ROUND_HALF_EVEN, Decimal
from typing import Any

from django.conf import settings

from marketplace.errors import InvalidInput

CENT = Decimal("0.01")
ZERO = Decimal("0.00")
SECONDS_PER_HOUR = Decimal(3600)
CURRENCY = "EUR"

# Member states of the European Union, for the reverse-charge rule.
EU_COUNTRIES = frozenset(
    {
        "AT", "BE", "BG", "HR", "CY", "CZ", "DK", "EE", "FI", "FR", "DE", "GR", "HU", "IE",
        "IT", "LV", "LT", "LU", "MT", "NL", "PL", "PT", "RO", "SK", "SI", "ES", "SE",
    }
)  # fmt: skip

REVERSE_CHARGE_NOTE = (
    "Reverse charge: VAT to be accounted for by the recipient "
    "(Article 196, Council Directive 2006/112/EC)."
)
OUTSIDE_EU_NOTE = "Service outside the scope of EU VAT (customer established outside the EU)."


MILLI = Decimal("0.001")


def exact_cents(value: object) -> Decimal:
    """A database sum of cents, made exact again (SQLite sums decimals as floats)."""
    return Decimal(str(value or 0)).quantize(CENT)


def exact_seconds(value: object) -> Decimal:
    """A database sum of GPU-seconds (3 decimals), made exact again."""
    return Decimal(str(value or 0)).quantize(MILLI)


def cents(amount: Decimal) -> Decimal:
    """THE line-level rounding: half-even to the cent."""
    return amount.quantize(CENT, rounding=ROUND_HALF_EVEN)


def cents_up(amount: Decimal) -> Decimal:
    """Holds round up, so that a hold always covers the worst case it stands for."""
    return amount.quantize(CENT, rounding=ROUND_CEILING)


def usage_cost(gpu_seconds: Decimal, price_per_gpu_hour: Decimal) -> Decimal:
    """Unrounded cost of GPU-seconds at a price per GPU-hour."""
    return Decimal(gpu_seconds) * Decimal(price_per_gpu_hour) / SECONDS_PER_HOUR


@dataclass(frozen=True)
class VatTreatment:
    rate: Decimal
    reverse_charge: bool
    note: str


def vat_treatment(*, country: str, vat_id: str) -> VatTreatment:
    """How VAT applies to a customer of the platform (established in PARTAGE_PLATFORM_COUNTRY).

    EU B2B with a VAT id in another member state: reverse charge, 0 %. Outside the EU: 0 %.
    Otherwise (same country, EU without a VAT id, unknown country): the platform's rate.
    """
    home = settings.PARTAGE_PLATFORM_COUNTRY
    country = (country or "").upper()
    if country and country != home and country in EU_COUNTRIES and vat_id.strip():
        return VatTreatment(rate=ZERO, reverse_charge=True, note=REVERSE_CHARGE_NOTE)
    if country and country not in EU_COUNTRIES:
        return VatTreatment(rate=ZERO, reverse_charge=False, note=OUTSIDE_EU_NOTE)
    return VatTreatment(rate=settings.PARTAGE_VAT_RATE, reverse_charge=False, note="")


def org_vat_rate(organization: Any) -> Decimal:
    """The VAT rate an organization is charged at: its vat_treatment's."""
    return vat_treatment(country=organization.country, vat_id=organization.vat_id).rate


@dataclass(frozen=True)
class Split:
    """The parts of a charge: customer pays net + vat; provider gets provider; platform fee."""

    net: Decimal
    vat: Decimal
    fee: Decimal
    provider: Decimal

    @property
    def customer_total(self) -> Decimal:
        return self.net + self.vat

    def __sub__(self, other: Split) -> Split:
        return Split(
            net=self.net - other.net,
            vat=self.vat - other.vat,
            fee=self.fee - other.fee,
            provider=self.provider - other.provider,
        )


NO_SPLIT = Split(net=ZERO, vat=ZERO, fee=ZERO, provider=ZERO)


def stream_split(
    *, gpu_seconds: Decimal, price_per_gpu_hour: Decimal, vat_rate: Decimal, fee_percent: Decimal
) -> Split:
    """The cumulative amounts of a stream after `gpu_seconds` billable GPU-seconds."""
    net = cents(usage_cost(gpu_seconds, price_per_gpu_hour))
    vat = cents(net * vat_rate)
    fee = cents(net * fee_percent / Decimal(100))
    return Split(net=net, vat=vat, fee=fee, provider=net - fee)


def fee_percent() -> Decimal:
    return Decimal(settings.PARTAGE_PLATFORM_FEE_PERCENT)


# An amount as people write it: digits, optionally a point and one or two decimals. No sign,
# exponent, NaN, Infinity or separator: Decimal("1e3") would otherwise be €1,000.00.
AMOUNT_PATTERN = re.compile(r"\d{1,12}(\.\d{1,2})?")


def amount_parse(value: object, *, param: str = "amount") -> Decimal:
    """A positive EUR amount written as digits with at most two decimals ("100", "99.50"), or
    InvalidInput naming `param`. A Decimal or int is read as it prints (Decimal("1E+3") fails)."""
    text = str(value).strip() if isinstance(value, str | int | float | Decimal) else None
    if isinstance(value, bool) or text is None or not AMOUNT_PATTERN.fullmatch(text):
        raise InvalidInput(
            f"{param} must be an amount in EUR written as digits with at most two decimals, "
            f'such as "100" or "99.50"; got {value!r}.',
            param=param,
        )
    amount = Decimal(text)
    if amount <= 0:
        raise InvalidInput(f"{param} must be a positive amount in EUR; got {value!r}.", param=param)
    return amount.quantize(CENT)
