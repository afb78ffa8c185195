"""E-mails of data protection: an export is ready (to the organization's owners)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from django.conf import settings
from django.core.mail import EmailMessage
from django.urls import reverse

from marketplace.accounts.models import Membership
from marketplace.notifications.emails import email_renderer_register
from marketplace.privacy.models import DataExport

if TYPE_CHECKING:
    from marketplace.events.models import DomainEvent


def export_ready(event: DomainEvent) -> list[EmailMessage]:
    export = (
        DataExport.objects.select_related("organization")
        .filter(public_id=event.subject_id, status=DataExport.Status.READY)
        .first()
    )
    if export is None:  # expired or erased since: nothing to download
        return []
    owners: list[str] = list(
        Membership.objects.filter(organization=export.organization, role=Membership.Role.OWNER)
        .exclude(user__email__isnull=True)
        .exclude(user__email="")
        .values_list("user__email", flat=True)  # type: ignore[arg-type]
    )
    if not owners:
        return []
    link = settings.PARTAGE_PUBLIC_URL + reverse(
        "portal:privacy-export-download", args=[export.public_id]
    )
    body = (
        f"The export of {export.organization.name} is ready: {export.object_count} objects, "
        f"{export.bytes} bytes (sha256 {export.sha256}).\n\n"
        f"Download it until {export.expires_at:%Y-%m-%d %H:%M} UTC (it is deleted then):\n"
        f"{link}\n\nindex.json in the archive lists every object with its sha256."
    )
    return [
        EmailMessage(
            subject=f"Your Partage data export {export.public_id} is ready", body=body, to=owners
        )
    ]


email_renderer_register("organization.export.ready", export_ready)
