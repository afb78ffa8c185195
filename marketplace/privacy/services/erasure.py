"""Erasure: an owner deletes the organization (after a confirmation and a grace period during
which it can be cancelled), and a person deletes their account.

During the grace period the organization adds no content (erasure_content_guard), and a
provider's pools take no new work. At its end the beat's sweep (partage.privacy_sweep) cancels
the running jobs and waits for them, and for the customers' work on a provider's pools, to end;
then it retires those pools and deletes customer content and personal data: rows and stored
bytes. What the law makes us keep, invoices and ledger entries, is kept with names replaced by a
pseudonym (the organization row itself stays as that pseudonym, because they refer to it) until
its legal retention ends (services/accounting.py).
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import logging
import shutil
from datetime import datetime, timedelta
from pathlib import Path

from django.conf import settings
from django.contrib.admin.models import LogEntry
from django.contrib.contenttypes.models import ContentType
from django.contrib.sessions.models import Session
from django.core.files.storage import default_storage
from django.db import IntegrityError, transaction
from django.utils import timezone

from marketplace.accounts.models import ApiKey, Membership, Organization, User
from marketplace.billing.services import (
    organization_billing_pseudonymise,
    user_billing_pseudonymise,
)
from marketplace.capacity.models import ProviderProfile, ResidencyPolicy
from marketplace.capacity.services import (
    provider_pools_resume,
    provider_pools_retire,
    provider_pools_retiring,
)
from marketplace.errors import Conflict, Forbidden, InvalidInput, InvalidTransition, NotFound
from marketplace.events.models import DomainEvent
from marketplace.finetuning import states
from marketplace.finetuning.models import File, FineTuningJob, JobAttempt, JobEvent
from marketplace.finetuning.services import checkpoint_delete, job_cancel
from marketplace.privacy import announce
from marketplace.privacy.models import (
    DataExport,
    OrganizationErasure,
    OrganizationPrivacy,
    StaffAccess,
)
from marketplace.privacy.registry import erasers

logger = logging.getLogger("partage.privacy")

ERASED = "erased"


def pseudonym_for(public_id: str) -> str:
    """Stable per organization (or person), not reversible without the platform's key."""
    digest = hmac.new(settings.SECRET_KEY.encode(), public_id.encode(), hashlib.sha256)
    return f"erased-{digest.hexdigest()[:16]}"


def _is_owner(organization: Organization, user: User) -> bool:
    return Membership.objects.filter(
        organization=organization, user=user, role=Membership.Role.OWNER
    ).exists()


def organization_erasure_request(
    *, organization: Organization, requested_by: User, confirm: str
) -> OrganizationErasure:
    """Schedule the erasure after the grace period. `confirm` must be the organization's slug."""
    if not _is_owner(organization, requested_by):
        raise Forbidden("Only an owner can delete the organization.")
    if confirm.strip() != organization.slug:
        raise InvalidInput(
            f"To confirm, type the organization's identifier exactly: {organization.slug}.",
            param="confirm",
        )
    now = timezone.now()
    grace = timedelta(days=settings.PARTAGE_ERASURE_GRACE_DAYS)
    try:
        with transaction.atomic():
            erasure = OrganizationErasure.objects.create(
                organization=organization,
                requested_by=requested_by,
                requested_at=now,
                erase_after=now + grace,
            )
            announce.announce(
                event_type=announce.ERASURE_SCHEDULED,
                organization_id=organization.pk,
                subject_id=organization.public_id,
                data={"id": organization.public_id, "erase_after": erasure.erase_after.isoformat()},
            )
    except IntegrityError:
        raise Conflict(
            "The organization's deletion is already scheduled; cancel it or wait.",
            code="erasure_scheduled",
        ) from None
    # A provider leaving: its pools take no new work from now on (cancelling puts them back).
    retiring = provider_pools_retiring(provider=organization)
    if retiring["pools"]:
        OrganizationErasure.objects.filter(pk=erasure.pk).update(
            report={"pools_retiring": retiring["pools"]}
        )
        erasure.refresh_from_db()
    return erasure


def organization_erasure_cancel(
    *, organization: Organization, cancelled_by: User
) -> OrganizationErasure:
    if not _is_owner(organization, cancelled_by):
        raise Forbidden("Only an owner can cancel the organization's deletion.")
    with transaction.atomic():
        updated = OrganizationErasure.objects.filter(
            organization=organization, status=OrganizationErasure.Status.SCHEDULED
        ).update(status=OrganizationErasure.Status.CANCELLED, cancelled_at=timezone.now())
        if not updated:
            raise NotFound("No deletion of this organization is scheduled.")
        cancelled = OrganizationErasure.objects.filter(organization=organization).first()
        assert cancelled is not None
        provider_pools_resume(
            provider=organization, pool_ids=list(cancelled.report.get("pools_retiring", []))
        )
        announce.announce(
            event_type=announce.ERASURE_CANCELLED,
            organization_id=organization.pk,
            subject_id=organization.public_id,
            data={"id": organization.public_id},
        )
    return OrganizationErasure.objects.filter(organization=organization).first()  # type: ignore[return-value]


def erasure_pending(org: Organization) -> OrganizationErasure | None:
    return OrganizationErasure.objects.filter(
        organization=org, status=OrganizationErasure.Status.SCHEDULED
    ).first()


def erasure_content_guard(organization: Organization, action: str) -> None:
    """While its deletion is scheduled, an organization adds no content (registered with
    accounts.guards by PrivacyConfig.ready): what it adds now would be erased days later."""
    erasure = erasure_pending(organization)
    if erasure is None:
        return
    raise Conflict(
        f"Cannot {action}: {organization.name} is scheduled for deletion on "
        f"{erasure.erase_after:%Y-%m-%d %H:%M} UTC, and accepts no new files, fine-tuning jobs "
        "or bookings until then. An owner can cancel the deletion on the portal's Data & "
        "privacy page (Cancel the deletion); everything works again at once.",
        code="organization_deletion_scheduled",
    )


def erasure_sweep(*, now: datetime | None = None) -> int:
    """Erase every organization whose grace period is over. Safe to run twice."""
    now = now or timezone.now()
    erased = 0
    due = OrganizationErasure.objects.filter(
        status=OrganizationErasure.Status.SCHEDULED, erase_after__lte=now
    ).values_list("pk", flat=True)
    for erasure_id in due:
        if organization_erase(erasure_id=erasure_id):
            erased += 1
    return erased


def _jobs_stop(org: Organization) -> int:
    """Cancel what can be cancelled; returns how many jobs are still unfinished."""
    for job_id in FineTuningJob.objects.filter(
        organization=org, status__in=states.UNFINISHED
    ).values_list("id", flat=True):
        # Already cancelling, or finalizing: it ends on its own.
        with contextlib.suppress(InvalidTransition):
            job_cancel(organization=org, job_id=job_id)
    return FineTuningJob.objects.filter(organization=org, status__in=states.UNFINISHED).count()


def organization_erase(*, erasure_id: int) -> bool:
    """Erase now. False when jobs are still stopping (the next sweep finishes the work)."""
    erasure = OrganizationErasure.objects.select_related("organization").get(pk=erasure_id)
    if erasure.status != OrganizationErasure.Status.SCHEDULED:
        return False
    org = erasure.organization
    if _jobs_stop(org):
        logger.info("erasure waits for jobs to stop", extra={"org_id": org.pk})
        return False
    # A provider's pools: none takes new work (one approved since the request included), and
    # each is retired once the customers' work running on it has ended.
    provider_pools_retiring(provider=org)
    if provider_pools_retire(provider=org):
        logger.info("erasure waits for work on the provider's pools", extra={"org_id": org.pk})
        return False
    report = _content_erase(org)
    for name, eraser in erasers().items():
        for key, count in eraser(org).items():
            report[f"{name}.{key}"] = count
    pseudonym = pseudonym_for(org.public_id)
    with transaction.atomic():
        report.update(_people_erase(org))
        report.update(organization_billing_pseudonymise(organization=org, pseudonym=pseudonym))
        _organization_pseudonymise(org, pseudonym)
        OrganizationErasure.objects.filter(pk=erasure.pk).update(
            status=OrganizationErasure.Status.ERASED,
            erased_at=timezone.now(),
            pseudonym=pseudonym,
            requested_by=None,
            report=report,
        )
        announce.announce(
            event_type=announce.ORGANIZATION_ERASED,
            organization_id=org.pk,
            subject_id=org.public_id,
            data={"id": org.public_id},
        )
    logger.info("organization erased", extra={"org_id": org.pk, "report": report})
    return True


def _stored_delete(name: str) -> int:
    if name and default_storage.exists(name):
        default_storage.delete(name)
        return 1
    return 0


def _content_erase(org: Organization) -> dict[str, int]:
    """Customer content: stored bytes first, then the rows (or their content, where billing
    records refer to the row)."""
    report = {"files": 0, "stored_objects": 0, "checkpoints": 0, "job_events": 0}
    jobs = FineTuningJob.objects.filter(organization=org)
    for checkpoint_id in jobs.values_list("checkpoints__pk", flat=True):
        if checkpoint_id is not None and checkpoint_delete(checkpoint_id=checkpoint_id):
            report["checkpoints"] += 1
    for file in File.objects.filter(organization=org):
        report["stored_objects"] += _stored_delete(file.content.name or "")
        report["files"] += 1
    for export in DataExport.objects.filter(organization=org):
        report["stored_objects"] += _stored_delete(export.archive.name or "")
    DataExport.objects.filter(organization=org).delete()
    report["run_dirs"] = _run_dirs_delete(org)
    with transaction.atomic():
        report["job_events"], _ = JobEvent.objects.filter(job__organization=org).delete()
        JobAttempt.objects.filter(job__organization=org).update(logs="", reason="", handle="")
        jobs.update(
            metadata={},
            suffix="",
            error=None,
            pending_reason="",
            placement_reason="",
            progress={},
            manifest=None,
            fine_tuned_model="",
            result_file=None,
            created_by=None,
            created_by_key=None,
        )
        referenced = set(jobs.values_list("training_file_id", flat=True)) | set(
            jobs.exclude(validation_file=None).values_list("validation_file_id", flat=True)
        )
        File.objects.filter(organization=org).exclude(pk__in=referenced).delete()
        # Jobs (kept for the invoices that bill them) still point at these: content removed.
        File.objects.filter(organization=org).update(
            filename=ERASED,
            sha256="",
            content="",
            status_details=None,
            data_format="",
            line_count=0,
            deleted_at=timezone.now(),
        )
    return report


def _run_dirs_delete(org: Organization) -> int:
    """The local executor's scratch folders (a copy of the data, checkpoints, the adapter)."""
    work_dir = Path(settings.PARTAGE_WORK_DIR)
    removed = 0
    for name in JobAttempt.objects.filter(job__organization=org).values_list("name", flat=True):
        run_dir = work_dir / name
        if name and run_dir.is_dir() and run_dir.resolve().parent == work_dir.resolve():
            shutil.rmtree(run_dir, ignore_errors=True)
            removed += 1
    return removed


def _people_erase(org: Organization) -> dict[str, int]:
    """Memberships, API keys and the organization's settings; staff-access records go too
    (they name what was looked at). Members keep their own accounts, to delete themselves."""
    memberships, _ = Membership.objects.filter(organization=org).delete()
    keys, _ = ApiKey.objects.filter(organization=org).delete()
    OrganizationPrivacy.objects.filter(organization=org).delete()
    ResidencyPolicy.objects.filter(organization=org).delete()
    # A provider's payout details stay while money is owed to it (the accounting purge clears
    # them once nothing is): its statements and payouts go on after the erasure.
    ProviderProfile.objects.filter(organization=org).update(payout_reference="", review_note="")
    StaffAccess.objects.filter(organization=org).delete()
    # The outbox's past events of the organization (ids and figures): the erasure's own event
    # is recorded after this.
    events, _ = DomainEvent.objects.filter(organization_id=org.pk).delete()
    return {"memberships": memberships, "api_keys": keys, "domain_events": events}


def _organization_pseudonymise(org: Organization, pseudonym: str) -> None:
    Organization.objects.filter(pk=org.pk).update(
        name=pseudonym, slug=pseudonym, legal_name="", vat_id=""
    )
    # Django admin's change log names the object it changed.
    org_type = ContentType.objects.get_for_model(Organization)
    LogEntry.objects.filter(content_type=org_type, object_id=str(org.pk)).update(
        object_repr=pseudonym, change_message=""
    )


# ---------------------------------------------------------------- a person's account


def user_delete(*, user: User) -> dict[str, int]:
    """Delete a person's account. A sole owner must first transfer or delete the organization."""
    sole = [
        m.organization.name
        for m in Membership.objects.filter(user=user, role=Membership.Role.OWNER).select_related(
            "organization"
        )
        if not Membership.objects.filter(organization=m.organization, role=Membership.Role.OWNER)
        .exclude(user=user)
        .exists()
        and erasure_pending(m.organization) is None
    ]
    if sole:
        raise Conflict(
            f"You are the only owner of {', '.join(sorted(sole))}. Make another member an "
            "owner, or delete the organization, before deleting your account.",
            code="sole_owner",
        )
    pseudonym = pseudonym_for(f"user-{user.pk}")
    with transaction.atomic():
        entries = user_billing_pseudonymise(username=user.username, pseudonym=pseudonym)
        sessions = _sessions_delete(user)
        memberships, _ = Membership.objects.filter(user=user).delete()
        user.delete()
    return {
        "journal_entries_pseudonymised": entries,
        "sessions": sessions,
        "memberships": memberships,
    }


def _sessions_delete(user: User) -> int:
    removed = 0
    for session in Session.objects.filter(expire_date__gt=timezone.now()):
        if str(session.get_decoded().get("_auth_user_id")) == str(user.pk):
            session.delete()
            removed += 1
    return removed
