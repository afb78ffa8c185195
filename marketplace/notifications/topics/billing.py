"""Billing e-mails: a finalized invoice (or credit note) goes to the organization's billing
contact (BillingAccount.billing_email; else its owners), with the PDF attached."""

from __future__ import annotations

from typing import TYPE_CHECKING

from django.conf import settings
from django.core.mail import EmailMessage

from marketplace.notifications.emails import email_renderer_register

if TYPE_CHECKING:
    from marketplace.events.models import DomainEvent


def billing_recipients(organization_id: int) -> list[str]:
    from marketplace.accounts.models import Membership
    from marketplace.billing.models import BillingAccount

    contact = (
        BillingAccount.objects.filter(organization_id=organization_id)
        .values_list("billing_email", flat=True)
        .first()
    )
    if contact:
        return [contact]
    owners = (
        Membership.objects.filter(
            organization_id=organization_id, role=Membership.Role.OWNER, user__is_active=True
        )
        .exclude(user__email__isnull=True)
        .exclude(user__email="")
    )
    return sorted(email for email in owners.values_list("user__email", flat=True) if email)


def invoice_finalized_mail(event: DomainEvent) -> list[EmailMessage]:
    from marketplace.billing.exports import invoice_pdf
    from marketplace.billing.models import Invoice

    invoice = (
        Invoice.objects.select_related("organization").filter(public_id=event.subject_id).first()
    )
    if invoice is None or invoice.number is None or event.organization_id is None:
        return []
    recipients = billing_recipients(event.organization_id)
    if not recipients:
        return []
    document = "Credit note" if invoice.kind == Invoice.Kind.CREDIT_NOTE else "Invoice"
    period = f"{invoice.period_start:%Y-%m-%d} to {invoice.period_end:%Y-%m-%d}"
    body = (
        f"Hello,\n\n{document} {invoice.number} for {invoice.organization.name} "
        f"({period}, UTC) is attached: {invoice.total} {invoice.currency} "
        f"including {invoice.vat} VAT.\n"
    )
    if invoice.credits_id is not None:
        body += f"It credits invoice {invoice.credits}.\n"
    body += "\nYou can also download it from the portal (Usage) or the API.\n\n— Partage\n"
    message = EmailMessage(
        subject=f"{document} {invoice.number} from {settings.PARTAGE_PLATFORM_LEGAL_NAME}",
        body=body,
        to=recipients,
    )
    message.attach(f"{invoice.number}.pdf", invoice_pdf(invoice), "application/pdf")
    return [message]


email_renderer_register("invoice.finalized", invoice_finalized_mail)
