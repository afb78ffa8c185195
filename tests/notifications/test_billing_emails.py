"""invoice.finalized → an e-mail to the billing contact (else the owners) with the PDF."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from django.core import mail

from marketplace.billing import services as billing
from marketplace.billing.models import BillingAccount, Invoice
from marketplace.events.models import DomainEvent

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def eager_celery(settings: Any) -> Iterator[None]:
    from workers.celery import app

    previous = app.conf.task_always_eager
    settings.CELERY_TASK_ALWAYS_EAGER = True
    app.conf.task_always_eager = True
    yield
    app.conf.task_always_eager = previous


def _finalize_november(org: Any) -> Invoice:
    start, end = billing.month_bounds(2026, 11)
    draft = billing.invoice_draft(organization=org, period_start=start, period_end=end)
    return billing.invoice_finalize(invoice=draft)


def test_a_finalized_invoice_is_mailed_to_the_owners_with_its_pdf(
    org_a: Any, alice: Any, bob: Any, eager_celery: None
) -> None:
    invoice = _finalize_november(org_a)
    assert (
        DomainEvent.objects.filter(
            event_type="invoice.finalized", subject_id=invoice.public_id
        ).count()
        == 1
    )
    [message] = mail.outbox
    assert message.to == [alice.email]  # bob is in org B: nothing for him
    assert invoice.number in message.subject
    [(name, content, mimetype)] = message.attachments
    assert (name, mimetype) == (f"{invoice.number}.pdf", "application/pdf")
    assert content.startswith(b"%PDF")


def test_the_billing_contact_gets_it_instead(org_a: Any, alice: Any, eager_celery: None) -> None:
    BillingAccount.objects.create(organization=org_a, billing_email="ap@a.example")
    _finalize_november(org_a)
    assert [m.to for m in mail.outbox] == [["ap@a.example"]]
