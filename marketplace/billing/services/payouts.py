"""Payouts: the amounts due on finalized provider statements, batched per period into one SEPA
credit-transfer file (pain.001.001.09, written and validated against its XSD by `sepaxml`).

A batch is created → sent (staff uploaded the file to the bank) → paid (the bank executed it).
Sent moves each provider's due from provider payable to payout clearing; paid moves the batch
total from payout clearing to cash. Each step is a ledger entry with an idempotency key and an
audit record (Django admin's change log) naming the staff member.
"""

from __future__ import annotations

import uuid
from datetime import datetime

from django.conf import settings
from django.contrib.admin.models import CHANGE, LogEntry
from django.db import transaction
from django.utils import timezone
from schwifty import IBAN
from sepaxml import SepaTransfer

from marketplace.accounts.models import User
from marketplace.billing.models import (
    Account,
    JournalEntry,
    Payout,
    PayoutBatch,
    ProviderStatement,
)
from marketplace.billing.money import ZERO
from marketplace.billing.services.ledger import Leg, entry_post
from marketplace.errors import InvalidTransition

SEPA_SCHEMA = "pain.001.001.09"


def audit_log(*, actor: User | None, obj: PayoutBatch, message: str) -> None:
    """One line in Django admin's change log (who did what to the batch)."""
    if actor is None:
        return
    LogEntry.objects.log_actions(
        user_id=actor.pk,
        queryset=PayoutBatch.objects.filter(pk=obj.pk),
        action_flag=CHANGE,
        change_message=message,
        single_object=True,
    )


def _payable_statements(period_end: datetime) -> list[ProviderStatement]:
    """Finalized statements up to the period's end with something due and no payout yet, whose
    provider has payout details (the others wait for a later batch)."""
    rows = (
        ProviderStatement.objects.select_for_update(of=("self",))
        .select_related("provider__provider_profile")
        .filter(
            status=ProviderStatement.Status.FINALIZED,
            period_end__lte=period_end,
            due__gt=0,
            payout__isnull=True,
        )
        .exclude(provider__provider_profile__payout_iban="")
        .order_by("period_start", "provider_id")
    )
    return list(rows)


def _sepa_file(payouts: list[Payout], execution: datetime) -> tuple[bytes, str]:
    """The pain.001.001.09 file and its message id; sepaxml validates it against the XSD."""
    debtor = {
        "name": settings.PARTAGE_PAYOUT_DEBTOR_NAME,
        "IBAN": IBAN(settings.PARTAGE_PAYOUT_DEBTOR_IBAN).compact,
        "BIC": settings.PARTAGE_PAYOUT_DEBTOR_BIC,
        "batch": True,
        "currency": "EUR",
    }
    transfer = SepaTransfer(debtor, schema=SEPA_SCHEMA, clean=True)
    for payout in payouts:
        payment = {
            "name": payout.creditor_name,
            "IBAN": payout.iban,
            "amount": int(payout.amount * 100),
            "execution_date": execution.date(),
            "description": f"Partage payout {payout.statement.public_id}",
            "endtoend_id": payout.public_id,
        }
        if payout.bic:
            payment["BIC"] = payout.bic
        transfer.add_payment(payment)
    return transfer.export(validate=True), transfer.msg_id


def payout_batch_create(*, period_end: datetime) -> PayoutBatch | None:
    """Batch every payable statement up to period_end into one SEPA file; None if nothing is due.

    Idempotent: a statement is in one payout at most (Payout.statement is one-to-one).
    """
    with transaction.atomic():
        statements = _payable_statements(period_end)
        if not statements:
            return None
        batch = PayoutBatch(
            public_id=f"pob-{uuid.uuid4().hex[:24]}",
            period_start=min(s.period_start for s in statements),
            period_end=period_end,
        )
        payouts = []
        for statement in statements:
            profile = statement.provider.provider_profile
            payouts.append(
                Payout(
                    public_id=f"po-{uuid.uuid4().hex[:24]}",
                    statement=statement,
                    provider_id=statement.provider_id,
                    amount=statement.due,
                    creditor_name=profile.payout_name or statement.provider.name,
                    iban=profile.payout_iban,
                    bic=profile.payout_bic,
                )
            )
        batch.total = sum((p.amount for p in payouts), ZERO)
        batch.payout_count = len(payouts)
        sepa_xml, batch.message_id = _sepa_file(payouts, timezone.now())
        batch.sepa_xml = sepa_xml.decode()
        batch.save()
        for payout in payouts:
            payout.batch = batch
        Payout.objects.bulk_create(payouts)
    return batch


def payout_batch_mark_sent(*, batch: PayoutBatch, actor: User) -> PayoutBatch:
    """Staff uploaded the file: each provider's due leaves its payable for payout clearing."""
    who = actor.get_username()
    with transaction.atomic():
        batch = PayoutBatch.objects.select_for_update().get(pk=batch.pk)
        if batch.status == PayoutBatch.Status.SENT:
            return batch
        if batch.status != PayoutBatch.Status.CREATED:
            raise InvalidTransition(
                f"Payout batch {batch.public_id} is {batch.status}; only a created batch can be "
                "marked sent.",
                param="batch",
            )
        for payout in batch.payouts.select_related("statement"):
            payout.sent_entry = entry_post(
                key=f"payout-sent:{payout.public_id}",
                kind=JournalEntry.Kind.PAYOUT,
                organization_id=payout.provider_id,
                memo=f"Payout {payout.public_id} of {payout.statement.public_id} sent "
                f"(SEPA {batch.message_id})",
                created_by=who,
                legs=[
                    Leg(Account.PROVIDER_PAYABLE, payout.amount, payout.provider_id),
                    Leg(Account.PAYOUT_CLEARING, -payout.amount),
                ],
            )
            payout.save(update_fields=["sent_entry"])
            ProviderStatement.objects.filter(pk=payout.statement_id).update(
                payout_entry=payout.sent_entry
            )
        batch.status = PayoutBatch.Status.SENT
        batch.sent_at = timezone.now()
        batch.sent_by = who
        batch.save(update_fields=["status", "sent_at", "sent_by"])
        audit_log(
            actor=actor,
            obj=batch,
            message=f"Payout batch {batch.public_id} ({batch.payout_count} transfers, "
            f"€{batch.total}) marked sent",
        )
    return batch


def payout_batch_mark_paid(*, batch: PayoutBatch, actor: User) -> PayoutBatch:
    """The bank executed the file: payout clearing → cash; the statements are paid."""
    who = actor.get_username()
    with transaction.atomic():
        batch = PayoutBatch.objects.select_for_update().get(pk=batch.pk)
        if batch.status == PayoutBatch.Status.PAID:
            return batch
        if batch.status != PayoutBatch.Status.SENT:
            raise InvalidTransition(
                f"Payout batch {batch.public_id} is {batch.status}; mark it sent before paid.",
                param="batch",
            )
        now = timezone.now()
        batch.paid_entry = entry_post(
            key=f"payout-paid:{batch.public_id}",
            kind=JournalEntry.Kind.PAYOUT,
            memo=f"Payout batch {batch.public_id} paid (SEPA {batch.message_id})",
            created_by=who,
            legs=[
                Leg(Account.PAYOUT_CLEARING, batch.total),
                Leg(Account.CASH, -batch.total),
            ],
        )
        ProviderStatement.objects.filter(payout__batch=batch).update(
            status=ProviderStatement.Status.PAID, paid_at=now
        )
        batch.status = PayoutBatch.Status.PAID
        batch.paid_at = now
        batch.paid_by = who
        batch.save(update_fields=["status", "paid_at", "paid_by", "paid_entry"])
        audit_log(
            actor=actor,
            obj=batch,
            message=f"Payout batch {batch.public_id} (€{batch.total}) marked paid",
        )
    return batch
