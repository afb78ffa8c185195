"""The double-entry ledger: post balanced, idempotent journal entries; read account balances.

Amounts are signed (debit positive, credit negative); every entry sums to zero. An entry's key is
UNIQUE: posting the same key twice returns the first entry and writes nothing.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from decimal import Decimal

from django.db import IntegrityError, transaction
from django.db.models import Sum

from marketplace.accounts.models import Organization
from marketplace.billing.models import Account, BillingAccount, JournalEntry, LedgerLine
from marketplace.billing.money import CENT, CURRENCY, ZERO, exact_cents
from marketplace.errors import InvalidInput


@dataclass(frozen=True)
class Leg:
    account: str
    amount: Decimal
    organization_id: int | None = None


def entry_post(
    *,
    key: str,
    kind: str,
    legs: Iterable[Leg],
    organization_id: int | None = None,
    job_id: str | None = None,
    memo: str = "",
    created_by: str = "",
) -> JournalEntry:
    """Write one balanced entry, or return the existing one with the same key (a replay)."""
    legs = [leg for leg in legs if leg.amount != 0]
    for leg in legs:
        if leg.amount != leg.amount.quantize(CENT):
            raise InvalidInput(
                f"Ledger amounts are whole cents; got {leg.amount} on {leg.account}."
            )
    total = sum((leg.amount for leg in legs), ZERO)
    if total != 0:
        raise InvalidInput(f"Journal entry {key!r} does not balance: its legs sum to {total}.")
    existing = JournalEntry.objects.filter(key=key).first()
    if existing is not None:
        return existing
    try:
        with transaction.atomic():
            entry = JournalEntry.objects.create(
                key=key,
                kind=kind,
                organization_id=organization_id,
                job_id=job_id,
                memo=memo[:300],
                created_by=created_by[:150],
            )
            LedgerLine.objects.bulk_create(
                LedgerLine(
                    entry=entry,
                    account=leg.account,
                    organization_id=leg.organization_id,
                    amount=leg.amount,
                    currency=CURRENCY,
                )
                for leg in legs
            )
    except IntegrityError:
        # The same key committed concurrently: that entry wins, ours is a replay.
        return JournalEntry.objects.get(key=key)
    return entry


def account_lock(*, organization_id: int) -> BillingAccount:
    """Lock the org's balance row (last in the lock order: pool → org quota → org balance)."""
    account = BillingAccount.objects.select_for_update().filter(organization_id=organization_id)
    locked = account.first()  # one statement when the row exists (it nearly always does)
    if locked is not None:
        return locked
    BillingAccount.objects.get_or_create(organization_id=organization_id)
    return BillingAccount.objects.select_for_update().get(organization_id=organization_id)


def _sum(**filters: object) -> Decimal:
    value = LedgerLine.objects.filter(**filters).aggregate(total=Sum("amount"))["total"]
    return exact_cents(value)


def balance_available(*, organization: Organization | int) -> Decimal:
    """Prepaid funds not on hold (may be negative only within the org's credit line)."""
    org_id = organization if isinstance(organization, int) else organization.pk
    return -_sum(account=Account.CUSTOMER_BALANCE, organization_id=org_id)


def balance_held(*, organization: Organization | int) -> Decimal:
    org_id = organization if isinstance(organization, int) else organization.pk
    return -_sum(account=Account.CUSTOMER_HELD, organization_id=org_id)


def job_held(*, job_id: str) -> Decimal:
    return -_sum(account=Account.CUSTOMER_HELD, entry__job_id=job_id)


def provider_payable(*, provider: Organization | int) -> Decimal:
    org_id = provider if isinstance(provider, int) else provider.pk
    return -_sum(account=Account.PROVIDER_PAYABLE, organization_id=org_id)
