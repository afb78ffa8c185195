"""Provider statements and payouts: gross usage on the provider's pools, minus the platform fee.

Only finalized statements are paid: a payout (payouts.py) pays a statement's `due`, its payable
less the holdback for disputes plus earlier holdbacks released. A statement sums the charges (captures and refunds) booked on the provider's streams, and the
booking charges and refunds on the provider's pools, during the period; charges are always booked "now", so a finalized past period never changes.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from decimal import Decimal

from django.conf import settings
from django.db import transaction
from django.db.models import F, Sum
from django.utils import timezone

from marketplace.accounts.models import Organization
from marketplace.billing.models import (
    Account,
    BookingCharge,
    Charge,
    JournalEntry,
    ProviderStatement,
    UsageRecord,
)
from marketplace.billing.money import ZERO, cents, exact_cents, exact_seconds, fee_percent
from marketplace.billing.periods import period_advance
from marketplace.billing.services.ledger import Leg, entry_post
from marketplace.billing.services.usage import WAIVED_FAILURES
from marketplace.errors import InvalidInput, InvalidTransition
from marketplace.finetuning.models import JobStatus


def _totals(provider_id: int, start: datetime, end: datetime) -> dict[str, Decimal]:
    """Gross = job charges + booking charges (less refunds) on the provider's pools in the period.

    GPU-seconds are the ones sold: usage not covered by a booking, plus booked GPU-seconds
    (a refunded part counts negative).
    """
    window = {"provider_id": provider_id, "created_at__gte": start, "created_at__lt": end}
    money = {"gross": Sum("net"), "fee": Sum("fee"), "payable": Sum("provider_amount")}
    usage = Charge.objects.filter(**window).aggregate(**money)
    booked = BookingCharge.objects.filter(**window).aggregate(
        **money, gpu_seconds=Sum("gpu_seconds")
    )
    # Sold GPU-seconds only: a job failed through the platform's or the provider's fault is
    # waived (its charges are refunded), so its seconds were never sold.
    seconds = (
        UsageRecord.objects.filter(
            provider_id=provider_id, recorded_at__gte=start, recorded_at__lt=end
        )
        .exclude(job__status=JobStatus.FAILED, job__failure_class__in=WAIVED_FAILURES)
        .aggregate(total=Sum(F("gpu_seconds") - F("covered_gpu_seconds")))["total"]
    )
    return {
        "gross": exact_cents(usage["gross"]) + exact_cents(booked["gross"]),
        "fee": exact_cents(usage["fee"]) + exact_cents(booked["fee"]),
        "payable": exact_cents(usage["payable"]) + exact_cents(booked["payable"]),
        "gpu_seconds": exact_seconds(seconds) + exact_seconds(booked["gpu_seconds"]),
    }


def statement_build(
    *, provider: Organization, period_start: datetime, period_end: datetime
) -> ProviderStatement:
    """Create or refresh the provider's draft statement for the period."""
    with transaction.atomic():
        statement = (
            ProviderStatement.objects.select_for_update()
            .filter(provider=provider, period_start=period_start)
            .first()
        )
        if statement is not None and statement.status != ProviderStatement.Status.DRAFT:
            return statement
        if statement is None:
            statement = ProviderStatement(
                provider=provider,
                period_start=period_start,
                period_end=period_end,
                public_id=f"stmt-{uuid.uuid4().hex[:24]}",
            )
        for name, value in _totals(provider.pk, period_start, period_end).items():
            setattr(statement, name, value)
        statement.fee_percent = fee_percent()
        statement.due = statement.payable  # a draft holds nothing back yet
        statement.save()
    return statement


def _providers_with_sales(period_start: datetime, period_end: datetime) -> set[int]:
    provider_ids: set[int] = set()
    for model in (Charge, BookingCharge):
        provider_ids |= set(
            model.objects.filter(
                created_at__gte=period_start, created_at__lt=period_end, provider__isnull=False
            )
            .values_list("provider_id", flat=True)
            .distinct()
            .order_by()
        )
    return provider_ids


def statements_build(*, period_start: datetime, period_end: datetime) -> list[ProviderStatement]:
    provider_ids = _providers_with_sales(period_start, period_end)
    return [
        statement_build(provider=provider, period_start=period_start, period_end=period_end)
        for provider in Organization.objects.filter(pk__in=list(provider_ids))
    ]


def _holdback(payable: Decimal) -> Decimal:
    percent = settings.PARTAGE_PAYOUT_HOLDBACK_PERCENT
    if payable <= 0 or not percent:
        return ZERO
    return cents(payable * percent / 100)


def statement_finalize(*, statement: ProviderStatement) -> ProviderStatement:
    """Freeze the statement; hold back part of its payable for disputes, and release the
    holdbacks of earlier statements that are due back. Both moves are ledger entries
    (provider payable ⇄ provider holdback), keyed by the statement."""
    if statement.period_end > timezone.now():
        raise InvalidInput(
            "The statement's period is not over yet; finalize it after it ends.", param="period"
        )
    statement = statement_build(
        provider=statement.provider,
        period_start=statement.period_start,
        period_end=statement.period_end,
    )
    with transaction.atomic():
        statement = ProviderStatement.objects.select_for_update().get(pk=statement.pk)
        if statement.status != ProviderStatement.Status.DRAFT:
            raise InvalidTransition(
                f"Statement {statement.public_id} is already {statement.status}."
            )
        releasing = list(
            ProviderStatement.objects.select_for_update()
            .filter(
                provider_id=statement.provider_id,
                holdback__gt=0,
                holdback_released_by__isnull=True,
                holdback_release_after__lte=statement.period_start,
            )
            .exclude(pk=statement.pk)
        )
        statement.holdback = _holdback(statement.payable)
        statement.released = sum((s.holdback for s in releasing), ZERO)
        statement.due = statement.payable - statement.holdback + statement.released
        statement.holdback_release_after = period_advance(
            statement.period_end, settings.PARTAGE_PAYOUT_HOLDBACK_PERIODS - 1
        )
        _holdback_post(statement)
        statement.status = ProviderStatement.Status.FINALIZED
        statement.finalized_at = timezone.now()
        statement.save()
        ProviderStatement.objects.filter(pk__in=[s.pk for s in releasing]).update(
            holdback_released_by=statement
        )
    return statement


def _holdback_post(statement: ProviderStatement) -> None:
    provider = statement.provider_id
    if statement.holdback:
        entry_post(
            key=f"holdback:{statement.public_id}",
            kind=JournalEntry.Kind.ADJUSTMENT,
            organization_id=provider,
            memo=f"Held back for disputes from {statement.public_id}",
            legs=[
                Leg(Account.PROVIDER_PAYABLE, statement.holdback, provider),
                Leg(Account.PROVIDER_HOLDBACK, -statement.holdback, provider),
            ],
        )
    if statement.released:
        entry_post(
            key=f"holdback-release:{statement.public_id}",
            kind=JournalEntry.Kind.ADJUSTMENT,
            organization_id=provider,
            memo=f"Earlier holdbacks released on {statement.public_id}",
            legs=[
                Leg(Account.PROVIDER_HOLDBACK, statement.released, provider),
                Leg(Account.PROVIDER_PAYABLE, -statement.released, provider),
            ],
        )


def statements_close(*, period_start: datetime, period_end: datetime) -> list[ProviderStatement]:
    """Build and finalize the period's statement of every provider with sales in it, or with a
    holdback due back by then. Statements already finalized are left as they are."""
    provider_ids = _providers_with_sales(period_start, period_end)
    provider_ids |= set(
        ProviderStatement.objects.filter(
            holdback__gt=0,
            holdback_released_by__isnull=True,
            holdback_release_after__lte=period_start,
        ).values_list("provider_id", flat=True)
    )
    finalized = []
    for provider in Organization.objects.filter(pk__in=provider_ids).order_by("pk"):
        statement = statement_build(
            provider=provider, period_start=period_start, period_end=period_end
        )
        if statement.status == ProviderStatement.Status.DRAFT:
            finalized.append(statement_finalize(statement=statement))
    return finalized


def statement_pay(
    *, statement: ProviderStatement, reference: str, created_by: str = ""
) -> ProviderStatement:
    """Record the payout of a finalized statement: provider payable → cash. Idempotent."""
    with transaction.atomic():
        statement = ProviderStatement.objects.select_for_update().get(pk=statement.pk)
        if statement.status == ProviderStatement.Status.PAID:
            return statement
        if statement.status != ProviderStatement.Status.FINALIZED:
            raise InvalidTransition(
                f"Statement {statement.public_id} is {statement.status}; finalize it before paying.",
                param="statement",
            )
        entry = None
        if statement.due > 0:
            entry = entry_post(
                key=f"payout:{statement.public_id}",
                kind=JournalEntry.Kind.PAYOUT,
                organization_id=statement.provider_id,
                memo=f"Payout of {statement.public_id}: {reference}"[:300],
                created_by=created_by,
                legs=[
                    Leg(Account.PROVIDER_PAYABLE, statement.due, statement.provider_id),
                    Leg(Account.CASH, -statement.due),
                ],
            )
        statement.payout_entry = entry
        statement.status = ProviderStatement.Status.PAID
        statement.paid_at = timezone.now()
        statement.save(update_fields=["payout_entry", "status", "paid_at"])
    return statement
