"""Prepaid top-ups, behind a PaymentProvider interface (manual today; a card or SEPA integration
implements the same protocol later), and the org's credit line."""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from typing import Protocol

from django.db import transaction

from marketplace.accounts.models import Organization
from marketplace.billing.models import Account, BillingAccount, JournalEntry
from marketplace.billing.money import amount_parse
from marketplace.billing.services.alerts import balance_low_check
from marketplace.billing.services.ledger import Leg, account_lock, entry_post
from marketplace.errors import InvalidInput


@dataclass(frozen=True)
class PaymentConfirmation:
    reference: str
    amount: Decimal


class PaymentProvider(Protocol):
    """Confirms that money arrived. `name` is part of the top-up's idempotency key."""

    name: str

    def confirm(self, *, reference: str, amount: Decimal) -> PaymentConfirmation: ...


class ManualPaymentProvider:
    """Staff record a bank transfer they have seen arrive; the staff member is the confirmation."""

    name = "manual"

    def confirm(self, *, reference: str, amount: Decimal) -> PaymentConfirmation:
        return PaymentConfirmation(reference=reference, amount=amount)


def money_parse(value: object, *, param: str) -> Decimal:
    """A positive EUR amount with at most two decimals, or InvalidInput saying what is wrong.

    Digits only ("100", "99.50"): "1e3", "-5", "NaN" or "Infinity" are refused, not read as
    numbers (topups.amount_parse)."""
    amount = amount_parse(value, param=param)
    if amount >= Decimal("1000000000"):
        raise InvalidInput(f"{param} is too large ({value!r}).", param=param)
    return amount


def topup_record(
    *,
    organization: Organization,
    amount: Decimal,
    reference: str,
    provider: PaymentProvider | None = None,
    created_by: str = "",
) -> JournalEntry:
    """Credit the org's prepaid balance. The same (provider, reference) twice is one top-up."""
    provider = provider or ManualPaymentProvider()
    amount = money_parse(amount, param="amount")
    reference = reference.strip()
    if not reference or len(reference) > 100:
        raise InvalidInput(
            "reference must name the payment (e.g. the bank transfer id), 1 to 100 characters.",
            param="reference",
        )
    confirmation = provider.confirm(reference=reference, amount=amount)
    with transaction.atomic():
        account = account_lock(organization_id=organization.pk)
        entry = entry_post(
            key=f"topup:{provider.name}:{confirmation.reference}",
            kind=JournalEntry.Kind.TOPUP,
            organization_id=organization.pk,
            memo=f"Top-up via {provider.name}: {confirmation.reference}",
            created_by=created_by,
            legs=[
                Leg(Account.CASH, confirmation.amount),
                Leg(Account.CUSTOMER_BALANCE, -confirmation.amount, organization.pk),
            ],
        )
        balance_low_check(accounts={organization.pk: account}, rearm=True)
    return entry


def credit_limit_set(*, organization: Organization, credit_limit: Decimal) -> BillingAccount:
    """Grant (or remove, with 0) an explicit credit line: how far the balance may go below zero."""
    if credit_limit != 0:
        credit_limit = money_parse(credit_limit, param="credit_limit")
    with transaction.atomic():
        account = account_lock(organization_id=organization.pk)
        account.credit_limit = credit_limit
        account.save(update_fields=["credit_limit"])
    return account
