"""Erasure's one exception to "a finalized invoice never changes": the names on accounting
records are replaced by a pseudonym. Amounts, numbers, dates, VAT and every ledger line stay as
they were, so the books still balance and the records are kept for the legal period
(Code de commerce L123-22: 10 years in France; docs/data-protection.md).
"""

from __future__ import annotations

from django.db import models, transaction

from marketplace.accounts.models import Organization
from marketplace.billing.models import Invoice, JournalEntry


def _entries() -> models.QuerySet[JournalEntry]:
    # The ledger's own queryset refuses update(); only these identifying text columns change.
    return models.QuerySet(JournalEntry)


def organization_billing_pseudonymise(
    *, organization: Organization, pseudonym: str
) -> dict[str, int]:
    with transaction.atomic():
        invoices = Invoice.objects.filter(organization=organization).update(customer_name=pseudonym)
        entries = (
            _entries()
            .filter(organization=organization)
            .exclude(created_by="")
            .update(created_by=pseudonym)
        )
    return {"invoices_pseudonymised": invoices, "journal_entries_pseudonymised": entries}


def user_billing_pseudonymise(*, username: str, pseudonym: str) -> int:
    """Entries a person wrote (top-ups, payouts) name them: replace the name."""
    if not username:
        return 0
    return _entries().filter(created_by=username).update(created_by=pseudonym)
