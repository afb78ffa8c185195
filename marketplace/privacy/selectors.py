"""Reads for data protection, scoped by organization from the start."""

from __future__ import annotations

from django.db.models import QuerySet

from marketplace.accounts.models import Organization
from marketplace.errors import NotFound
from marketplace.privacy.models import DataExport, StaffAccess
from marketplace.privacy.services.retention import Expiry, retention_schedule

__all__ = [
    "Expiry",
    "export_for_org",
    "exports_for_org",
    "retention_schedule",
    "staff_accesses_for_org",
]


def exports_for_org(org: Organization) -> QuerySet[DataExport]:
    return DataExport.objects.filter(organization=org).order_by("-created_at", "-id")


def export_for_org(org: Organization, public_id: str) -> DataExport:
    export = exports_for_org(org).filter(public_id=public_id).first()
    if export is None:
        raise NotFound(f"No export {public_id!r}.", param="export_id")
    return export


def staff_accesses_for_org(org: Organization) -> QuerySet[StaffAccess]:
    return StaffAccess.objects.filter(organization=org).order_by("-created_at", "-id")
