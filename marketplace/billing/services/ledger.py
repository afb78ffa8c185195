"""The double-entry ledger: post balanced, idempotent journal entries; read account balances.

Amounts are signed (debit positive, credit negative); every entry sums to zero. An entry's key is
UNIQUE: posting the same key twice (entry_post) returns the first entry and writes nothing.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import TypeVar

from django.db import IntegrityError, transaction
from django.db.models import Sum

from marketplace.accounts.models import Organization
from marketplace.billing.models import Account, BillingAccount, JournalEntry, LedgerLine
from marketplace.billing.money import CENT, CURRENCY, ZERO, exact_cents
from marketplace.errors import InvalidInput

K = TypeVar("K")


@dataclass(frozen=True)
class Leg:
    account: str
    amount: Decimal
    organization_id: int | None = None


@dataclass(frozen=True)
class NewEntry:
    """A journal entry to write (entries_write): balanced legs of whole cents."""

    key: str
    kind: str
    legs: Sequence[Leg]
    organization_id: int | None = None
    job_id: str | None = None
    memo: str = ""
    created_by: str = ""


def legs_checked(*, key: str, legs: Iterable[Leg]) -> list[Leg]:
    """The entry's legs without the zero ones; InvalidInput unless whole cents that balance."""
    legs = [leg for leg in legs if leg.amount != 0]
    for leg in legs:
        if leg.amount != leg.amount.quantize(CENT):
            raise InvalidInput(
                f"Ledger amounts are whole cents; got {leg.amount} on {leg.account}."
            )
    total = sum((leg.amount for leg in legs), ZERO)
    if total != 0:
        raise InvalidInput(f"Journal entry {key!r} does not balance: its legs sum to {total}.")
    return legs


def entries_write(*, entries: Sequence[NewEntry]) -> list[JournalEntry]:
    """Insert new entries and all their lines: two statements however many entries.

    No replay check: a key already written raises IntegrityError, which rolls back the caller's
    transaction. Every entry is checked (legs_checked) before anything is written.
    """
    checked = [(entry, legs_checked(key=entry.key, legs=entry.legs)) for entry in entries]
    rows = JournalEntry.objects.bulk_create(
        JournalEntry(
            key=entry.key,
            kind=entry.kind,
            organization_id=entry.organization_id,
            job_id=entry.job_id,
            memo=entry.memo[:300],
            created_by=entry.created_by[:150],
        )
        for entry, _ in checked
    )
    LedgerLine.objects.bulk_create(
        LedgerLine(
            entry=row,
            account=leg.account,
            organization_id=leg.organization_id,
            amount=leg.amount,
            currency=CURRENCY,
        )
        for row, (_, legs) in zip(rows, checked, strict=True)
        for leg in legs
    )
    return rows


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
    entry = NewEntry(
        key=key,
        kind=kind,
        legs=legs_checked(key=key, legs=legs),
        organization_id=organization_id,
        job_id=job_id,
        memo=memo,
        created_by=created_by,
    )
    existing = JournalEntry.objects.filter(key=key).first()
    if existing is not None:
        return existing
    try:
        with transaction.atomic():
            [written] = entries_write(entries=[entry])
    except IntegrityError:
        # The same key committed concurrently: that entry wins, ours is a replay.
        return JournalEntry.objects.get(key=key)
    return written


def accounts_lock(*, organization_ids: Collection[int]) -> dict[int, BillingAccount]:
    """Lock the orgs' balance rows in one statement, in organization order (last in the lock
    order: pool → org quota → org balance). An org's first hold or payment creates its row."""
    wanted = sorted(set(organization_ids))
    locked = _accounts_locked(wanted)  # one statement when the rows exist (they nearly always do)
    if len(locked) < len(wanted):
        BillingAccount.objects.bulk_create(
            [BillingAccount(organization_id=org_id) for org_id in wanted if org_id not in locked],
            ignore_conflicts=True,
        )
        locked = _accounts_locked(wanted)
    return locked


def _accounts_locked(organization_ids: list[int]) -> dict[int, BillingAccount]:
    rows = (
        BillingAccount.objects.select_for_update()
        .filter(organization_id__in=organization_ids)
        .order_by("organization_id")
    )
    return {row.organization_id: row for row in rows}


def account_lock(*, organization_id: int) -> BillingAccount:
    """Lock the org's balance row (last in the lock order: pool → org quota → org balance)."""
    return accounts_lock(organization_ids=[organization_id])[organization_id]


def _sum(**filters: object) -> Decimal:
    value = LedgerLine.objects.filter(**filters).aggregate(total=Sum("amount"))["total"]
    return exact_cents(value)


def _sums(group_by: str, keys: Collection[K], **filters: object) -> dict[K, Decimal]:
    """Sum of the lines per value of `group_by`, for each of `keys` (zero without lines)."""
    rows = (
        LedgerLine.objects.filter(**{f"{group_by}__in": keys}, **filters)
        .values(group_by)
        .annotate(total=Sum("amount"))
    )
    sums = {row[group_by]: exact_cents(row["total"]) for row in rows}
    return {key: sums.get(key, ZERO) for key in keys}


def balance_available(*, organization: Organization | int) -> Decimal:
    """Prepaid funds not on hold (may be negative only within the org's credit line)."""
    org_id = organization if isinstance(organization, int) else organization.pk
    return balances_available(organization_ids=[org_id])[org_id]


def balances_available(*, organization_ids: Collection[int]) -> dict[int, Decimal]:
    """balance_available of each organization, in one statement."""
    sums = _sums("organization_id", organization_ids, account=Account.CUSTOMER_BALANCE)
    return {org_id: -total for org_id, total in sums.items()}


def balance_held(*, organization: Organization | int) -> Decimal:
    org_id = organization if isinstance(organization, int) else organization.pk
    return -_sum(account=Account.CUSTOMER_HELD, organization_id=org_id)


def job_held(*, job_id: str) -> Decimal:
    return jobs_held(job_ids=[job_id])[job_id]


def jobs_held(*, job_ids: Collection[str]) -> dict[str, Decimal]:
    """What is on hold for each job, in one statement."""
    sums = _sums("entry__job_id", job_ids, account=Account.CUSTOMER_HELD)
    return {job_id: -total for job_id, total in sums.items()}


def provider_payable(*, provider: Organization | int) -> Decimal:
    org_id = provider if isinstance(provider, int) else provider.pk
    return -_sum(account=Account.PROVIDER_PAYABLE, organization_id=org_id)
