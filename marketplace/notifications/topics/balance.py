"""E-mail for `billing.balance_low`: the organization's owners and admins are told their prepaid
balance is low (or too low for a job), with a link to add credit."""

from __future__ import annotations

from typing import TYPE_CHECKING

from django.conf import settings
from django.core.mail import EmailMessage

from marketplace.accounts.models import Membership, Organization
from marketplace.notifications.emails import email_renderer_register

if TYPE_CHECKING:
    from marketplace.events.models import DomainEvent


def _recipients(organization_id: int) -> list[str]:
    emails = Membership.objects.filter(
        organization_id=organization_id,
        role__in=[Membership.Role.OWNER, Membership.Role.ADMIN],
        user__is_active=True,
    ).values_list("user__email", flat=True)
    return sorted({email for email in emails if email})


def balance_low_render(event: DomainEvent) -> list[EmailMessage]:
    if event.organization_id is None:
        return []
    org = Organization.objects.filter(pk=event.organization_id).first()
    recipients = _recipients(event.organization_id)
    if org is None or not recipients:
        return []
    data = event.data
    if data.get("reason") == "hold_refused":
        why = (
            "A fine-tuning job could not start: the funds to hold for it are more than your "
            f"available balance of €{data.get('available')}. It stays queued until you add credit."
        )
    else:
        why = (
            f"Your available balance is €{data.get('available')}, below the alert threshold of "
            f"€{data.get('threshold')} you set."
        )
    body = (
        f"Hello,\n\n{why}\n\nAdd credit (card or bank transfer): "
        f"{settings.PARTAGE_PUBLIC_URL}/billing/credit/\n"
        "Change the alert threshold on the same page, or with PATCH /v1/billing/settings.\n\n"
        "— Partage\n"
    )
    return [
        EmailMessage(
            subject=f"[Partage] {org.name}: prepaid balance low (€{data.get('available')})",
            body=body,
            from_email=settings.DEFAULT_FROM_EMAIL,
            to=recipients,
            headers={"X-Partage-Event": event.public_id},
        )
    ]


email_renderer_register("billing.balance_low", balance_low_render)
