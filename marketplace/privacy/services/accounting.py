"""The last step of an erasure: when the law no longer requires them, an erased organization's
pseudonymised accounting records go too.

Run by the privacy sweep. Only organizations whose erasure is done are concerned: a living
organization's records are never purged. The billing app purges its own tables (invoices,
usage, charges, top-ups, statements, payouts, and journal entries replaced by one
carried-forward entry so every balance stays: marketplace/billing/services/purge.py); then the
rows those records kept alive (jobs, bookings, file rows stripped of their content) are deleted
where nothing refers to them any more.
"""

from __future__ import annotations

import logging
from datetime import datetime

from django.db import models, transaction
from django.db.models import ProtectedError, RestrictedError, Sum
from django.utils import timezone

from marketplace.billing.models import Account, LedgerLine, Payout, PayoutBatch
from marketplace.billing.services import accounting_retention_cutoff, organization_accounting_purge
from marketplace.capacity.models import Booking, ProviderProfile
from marketplace.finetuning import states
from marketplace.finetuning.models import File, FineTuningJob
from marketplace.inference.models import InferenceUsage
from marketplace.privacy.models import OrganizationErasure

logger = logging.getLogger("partage.privacy")


def accounting_purge_sweep(*, now: datetime | None = None) -> int:
    """Purge what is past its legal retention for every erased organization; how many rows went.
    Safe to run twice: a second run finds nothing older than the cutoff."""
    before = accounting_retention_cutoff(now=now or timezone.now())
    removed = 0
    for org_id in (
        OrganizationErasure.objects.filter(status=OrganizationErasure.Status.ERASED)
        .values_list("organization_id", flat=True)
        .distinct()
        .order_by("organization_id")
    ):
        removed += payout_details_clear(organization_id=org_id)
        report = organization_records_purge(organization_id=org_id, before=before)
        removed += sum(report.values())
    return removed


def _owed_to(provider_id: int) -> bool:
    """Money still owed to the provider: a payable or held-back balance, or a payout whose
    transfer the bank has not executed yet."""
    balance = LedgerLine.objects.filter(
        organization_id=provider_id,
        account__in=[Account.PROVIDER_PAYABLE, Account.PROVIDER_HOLDBACK],
    ).aggregate(total=Sum("amount"))["total"]
    unpaid = Payout.objects.filter(provider_id=provider_id).exclude(
        batch__status=PayoutBatch.Status.PAID
    )
    return (balance or 0) < 0 or unpaid.exists()


def payout_details_clear(*, organization_id: int) -> int:
    """An erased provider's bank details go once nothing is owed to it any more (1 if cleared).
    Until then its statements are built and paid as before: what it earned is not lost."""
    profile = ProviderProfile.objects.filter(organization_id=organization_id).exclude(
        payout_iban="", payout_name="", payout_bic=""
    )
    if not profile.exists() or _owed_to(organization_id):
        return 0
    return profile.update(payout_name="", payout_iban="", payout_bic="")


def organization_records_purge(*, organization_id: int, before: datetime) -> dict[str, int]:
    if not OrganizationErasure.objects.filter(
        organization_id=organization_id, status=OrganizationErasure.Status.ERASED
    ).exists():
        return {}  # never a living organization's records
    with transaction.atomic():
        # Inference usage refers to journal entries and jobs: it goes first (append-only: only
        # this purge deletes it).
        inference, _ = (
            models.QuerySet(InferenceUsage)
            .filter(organization_id=organization_id, created_at__lt=before)
            .delete()
        )
        report = organization_accounting_purge(organization_id=organization_id, before=before)
        report["inference_usages"] = inference
    report.update(_kept_rows_delete(organization_id, before))
    if any(report.values()):
        logger.info("erased organization's records purged", extra={"org_id": organization_id})
    return report


def _each_deleted(rows: models.QuerySet) -> int:
    """Delete row by row; a row something still refers to (a record inside its retention) stays."""
    deleted = 0
    for row in rows:
        try:
            with transaction.atomic():
                row.delete()
            deleted += 1
        except (ProtectedError, RestrictedError):
            continue
    return deleted


def _kept_rows_delete(organization_id: int, before: datetime) -> dict[str, int]:
    """Jobs, bookings and file rows an erasure kept because billing records referred to them."""
    jobs = FineTuningJob.objects.filter(
        organization_id=organization_id, created_at__lt=before
    ).exclude(status__in=states.UNFINISHED)
    jobs = jobs.filter(models.Q(finished_at__lt=before) | models.Q(finished_at=None))
    report = {"jobs": _each_deleted(jobs)}
    report["bookings"] = _each_deleted(
        Booking.objects.filter(organization_id=organization_id, end__lt=before)
    )
    report["files"] = _each_deleted(
        File.objects.filter(organization_id=organization_id, created_at__lt=before)
    )
    return report
