"""The end of the legal retention of an erased organization's accounting records.

Code de commerce L123-22 keeps accounting documents and their supporting records 10 years
(PARTAGE_ACCOUNTING_RETENTION_YEARS), counted from the close of the financial year they belong
to. Partage's financial year is the calendar year in UTC, the year of the invoice numbering
series and of the billing periods: a record dated in year Y may go from 1 January Y+1+N.

Only an erased organization's records are purged (the privacy app decides which). Deleting its
journal entries outright would change balances the ledger still carries: an entry of the
organization also credits a provider's payable, the platform's revenue and VAT. So the entries
are replaced by ONE carried-forward entry holding, per account and organization, the sum of the
lines removed: every balance (the erased organization's pseudonymous one included) stays exactly
what it was, and the new entry sums to zero like the ones it replaces. The purge checks this
before it commits, and writes nothing if it does not hold.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from datetime import UTC, datetime
from decimal import Decimal

from django.conf import settings
from django.db import models, transaction
from django.db.models import Sum
from django.db.models.functions import Coalesce

from marketplace.billing.models import (
    BookingCharge,
    Charge,
    Invoice,
    JournalEntry,
    LedgerLine,
    Payout,
    PayoutBatch,
    ProviderStatement,
    Topup,
    UsageRecord,
)
from marketplace.billing.services.ledger import Leg, NewEntry, accounts_lock, entries_write
from marketplace.errors import Conflict

logger = logging.getLogger("partage.billing")

CARRY_FORWARD_PREFIX = "carry-forward:"

BalanceKey = tuple[str, int | None, str]  # account, organization id, currency


def accounting_retention_cutoff(*, now: datetime) -> datetime:
    """Records dated before this instant are past the legal retention period: their financial
    year (the calendar year, UTC) closed PARTAGE_ACCOUNTING_RETENTION_YEARS years ago or more."""
    years = settings.PARTAGE_ACCOUNTING_RETENTION_YEARS
    return datetime(now.astimezone(UTC).year - years, 1, 1, tzinfo=UTC)


def _raw(model: type[models.Model]) -> models.QuerySet:
    # Append-only tables refuse delete() on their own queryset: only this purge deletes them.
    return models.QuerySet(model)


def _invoices(organization_id: int, before: datetime) -> list[int]:
    """The organization's invoices issued before the cutoff, except one a later credit note
    still refers to (it justifies that credit note, kept until its own period ends)."""
    dated = Invoice.objects.annotate(dated=Coalesce("finalized_at", "created_at")).filter(
        organization_id=organization_id, dated__lt=before
    )
    ids = set(dated.values_list("pk", flat=True))
    credited_later = (
        Invoice.objects.filter(credits_id__in=ids)
        .exclude(pk__in=ids)
        .values_list("credits_id", flat=True)
    )
    return sorted(ids - set(credited_later))


def _statements(organization_id: int, before: datetime) -> tuple[list[int], list[int]]:
    """The provider's settled statements (paid, or nothing due) and their payouts, whose last
    date is before the cutoff. A statement with money still owed is never purged."""
    statements: list[int] = []
    for statement in ProviderStatement.objects.filter(provider_id=organization_id).exclude(
        status=ProviderStatement.Status.DRAFT
    ):
        payout = Payout.objects.filter(statement=statement).select_related("batch").first()
        owed = statement.status != ProviderStatement.Status.PAID and statement.due > 0
        if owed or (payout is not None and payout.batch.status != PayoutBatch.Status.PAID):
            continue
        dates = [statement.created_at, statement.finalized_at, statement.paid_at]
        if payout is not None:
            dates += [payout.batch.sent_at, payout.batch.paid_at]
        if max(d for d in dates if d is not None) < before:
            statements.append(statement.pk)
    # An earlier statement's holdback released by a statement that stays: keep the earlier too.
    kept_releasers = ProviderStatement.objects.filter(provider_id=organization_id).exclude(
        pk__in=statements
    )
    released = set(
        ProviderStatement.objects.filter(
            pk__in=statements, holdback_released_by__in=kept_releasers
        ).values_list("pk", flat=True)
    )
    statements = [pk for pk in statements if pk not in released]
    payouts = list(Payout.objects.filter(statement_id__in=statements).values_list("pk", flat=True))
    return statements, payouts


def _referenced_elsewhere(entry_ids: set[int], purged: dict[type, set[int]]) -> set[int]:
    """Entries some row outside the purge still refers to (any table, any app): they stay."""
    kept: set[int] = set()
    for relation in JournalEntry._meta.related_objects:
        model = relation.related_model
        if model is LedgerLine:
            continue
        field = relation.field.name
        rows = _raw(model).filter(**{f"{field}__in": entry_ids})
        if model in purged:
            rows = rows.exclude(pk__in=purged[model])
        kept |= set(rows.values_list(f"{field}_id", flat=True))
    return kept


def _balances(keys: set[BalanceKey]) -> dict[BalanceKey, Decimal]:
    accounts = {key[0] for key in keys}
    orgs = {key[1] for key in keys if key[1] is not None}
    rows = (
        LedgerLine.objects.filter(account__in=accounts)
        .filter(models.Q(organization_id__in=orgs) | models.Q(organization_id__isnull=True))
        .values("account", "organization_id", "currency")
        .annotate(total=Sum("amount"))
    )
    sums: dict[BalanceKey, Decimal] = {
        (r["account"], r["organization_id"], r["currency"]): r["total"] for r in rows
    }
    return {key: sums.get(key) or Decimal(0) for key in keys}


def _carry_forward(organization_id: int, entry_ids: list[int], before: datetime) -> int | None:
    """Replace the entries by one entry of their summed lines; its id, None if nothing is left
    to carry (every sum was zero)."""
    totals: dict[BalanceKey, Decimal] = defaultdict(Decimal)
    for account, org_id, currency, amount in LedgerLine.objects.filter(
        entry_id__in=entry_ids
    ).values_list("account", "organization_id", "currency", "amount"):
        totals[(account, org_id, currency)] += amount
    balances_before = _balances(set(totals))
    _raw(LedgerLine).filter(entry_id__in=entry_ids).delete()
    _raw(JournalEntry).filter(pk__in=entry_ids).delete()
    legs = [
        Leg(account=account, amount=amount, organization_id=org_id)
        for (account, org_id, _), amount in sorted(totals.items(), key=str)
        if amount != 0
    ]
    carried = None
    if legs:
        earlier = JournalEntry.objects.filter(
            organization_id=organization_id, key__startswith=CARRY_FORWARD_PREFIX
        ).count()
        [carried] = entries_write(
            entries=[
                NewEntry(
                    key=f"{CARRY_FORWARD_PREFIX}{organization_id}:{before:%Y}:{earlier + 1}",
                    kind=JournalEntry.Kind.ADJUSTMENT,
                    legs=legs,
                    organization_id=organization_id,
                    memo=(
                        f"Carried forward: {len(entry_ids)} entries of financial years before "
                        f"{before:%Y}, deleted at the end of their legal retention."
                    ),
                )
            ]
        )
    if _balances(set(totals)) != balances_before:
        raise Conflict(
            "The accounting purge would change a ledger balance; nothing was deleted.",
            code="purge_unbalanced",
        )
    return carried.pk if carried else None


def organization_accounting_purge(*, organization_id: int, before: datetime) -> dict[str, int]:
    """Delete the organization's accounting records dated before `before` (see the module's
    docstring); the caller makes sure the organization was erased. Safe to run twice."""
    with transaction.atomic():
        accounts_lock(organization_ids=[organization_id])
        invoices = _invoices(organization_id, before)
        statements, payouts = _statements(organization_id, before)
        purged: dict[type, set[int]] = {
            Invoice: set(invoices),
            ProviderStatement: set(statements),
            Payout: set(payouts),
            UsageRecord: set(
                UsageRecord.objects.filter(
                    organization_id=organization_id, recorded_at__lt=before
                ).values_list("pk", flat=True)
            ),
        }
        for model in (Charge, BookingCharge, Topup):
            purged[model] = set(
                model.objects.filter(organization_id=organization_id, created_at__lt=before)
                .values_list("pk", flat=True)
                .order_by()
            )
        candidates = set(
            JournalEntry.objects.filter(organization_id=organization_id, created_at__lt=before)
            .exclude(key__startswith=CARRY_FORWARD_PREFIX)
            .values_list("pk", flat=True)
            .order_by()
        )
        entries = sorted(candidates - _referenced_elsewhere(candidates, purged))
        # A row whose entry stays, stays too (its entry must keep justifying it).
        for model in (Charge, BookingCharge, Topup):
            purged[model] -= set(
                _raw(model)
                .filter(pk__in=purged[model])
                .exclude(entry_id__in=entries)
                .exclude(entry_id=None)
                .values_list("pk", flat=True)
            )
        report = {"invoices": _invoices_delete(purged[Invoice])}
        names: dict[str, type[models.Model]] = {
            "payouts": Payout,
            "usage_records": UsageRecord,
            "charges": Charge,
            "booking_charges": BookingCharge,
            "topups": Topup,
        }
        for name, row_model in names.items():
            report[name] = _raw(row_model).filter(pk__in=purged[row_model]).delete()[0]
        report["provider_statements"] = _statements_delete(statements)
        report["journal_entries"] = len(entries)
        carried = _carry_forward(organization_id, entries, before) if entries else None
        report["carried_forward"] = 1 if carried else 0
    if entries or any(report.values()):
        logger.info("accounting records purged", extra={"org_id": organization_id, **report})
    return report


def _invoices_delete(invoice_ids: set[int]) -> int:
    """Credit notes first: they refer to the invoices they correct (PROTECT)."""
    rows = Invoice.objects.filter(pk__in=invoice_ids)
    notes = rows.filter(kind=Invoice.Kind.CREDIT_NOTE).delete()[1].get(Invoice._meta.label, 0)
    return notes + rows.delete()[1].get(Invoice._meta.label, 0)


def _statements_delete(statement_ids: list[int]) -> int:
    """Statements refer to one another (a holdback released by a later one): the releasers
    are unlinked first, within the set being deleted."""
    _raw(ProviderStatement).filter(pk__in=statement_ids).update(holdback_released_by=None)
    return _raw(ProviderStatement).filter(pk__in=statement_ids).delete()[0]
