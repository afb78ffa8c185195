"""Retention: training files and checkpoints are deleted (bytes and all) a set number of days
after the last job that used them ended. The organization chooses the number of days, up to the
platform's maximum; a beat task (partage.privacy_retention_sweep) deletes what is due.

The clock of a training file starts when the last job that used it (as training or validation
file) ended, or at its upload if no job used it; a file used by an unfinished job never expires.
The clock of a checkpoint starts when its job ended; a paused job's checkpoints are kept (resume
needs them). Adapters (result files) are what the customer paid for: they stay until deleted or
erased.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.conf import settings
from django.db import transaction
from django.db.models import Exists, OuterRef, Q, Subquery
from django.utils import timezone

from marketplace.accounts.models import Organization
from marketplace.errors import Conflict, InvalidInput, NotFound
from marketplace.finetuning import states
from marketplace.finetuning.models import Checkpoint, File, FineTuningJob
from marketplace.finetuning.services import checkpoint_delete, file_delete, job_event_add
from marketplace.privacy import announce
from marketplace.privacy.models import OrganizationPrivacy

logger = logging.getLogger("partage.privacy")


@dataclass(frozen=True)
class Expiry:
    kind: str  # "file" or "checkpoint"
    object_id: str
    label: str
    expires_at: datetime
    job_ids: tuple[str, ...]


def retention_days_for(org: Organization) -> int:
    days = (
        OrganizationPrivacy.objects.filter(organization=org)
        .values_list("retention_days", flat=True)
        .first()
    )
    return days or settings.PARTAGE_RETENTION_DEFAULT_DAYS


def retention_set(*, organization: Organization, days: int | None) -> OrganizationPrivacy:
    """Set (or, with None, reset to the platform default) the organization's retention."""
    maximum = settings.PARTAGE_RETENTION_MAX_DAYS
    if days is not None and not 1 <= days <= maximum:
        raise InvalidInput(
            f"retention_days must be from 1 to {maximum} (the platform maximum); got {days}.",
            param="retention_days",
        )
    privacy, _ = OrganizationPrivacy.objects.update_or_create(
        organization=organization,
        defaults={"retention_days": days, "updated_at": timezone.now()},
    )
    return privacy


def _using(file_ref: str) -> Q:
    return Q(training_file=OuterRef(file_ref)) | Q(validation_file=OuterRef(file_ref))


def file_expiries(org: Organization) -> list[Expiry]:
    days = timedelta(days=retention_days_for(org))
    files = (
        File.objects.filter(
            organization=org, purpose=File.Purpose.FINE_TUNE, deleted_at__isnull=True
        )
        .annotate(
            in_use=Exists(FineTuningJob.objects.filter(_using("pk"), status__in=states.UNFINISHED)),
            last_end=Subquery(
                FineTuningJob.objects.filter(_using("pk"), finished_at__isnull=False)
                .order_by("-finished_at")
                .values("finished_at")[:1]
            ),
        )
        .filter(in_use=False)
    )
    expiries = []
    for file in files:
        job_ids = FineTuningJob.objects.filter(
            Q(training_file=file) | Q(validation_file=file)
        ).values_list("id", flat=True)
        start: datetime = file.last_end or file.created_at
        expiries.append(
            Expiry("file", file.id, file.filename, start + days, tuple(sorted(job_ids)))
        )
    return expiries


def checkpoint_expiries(org: Organization) -> list[Expiry]:
    days = timedelta(days=retention_days_for(org))
    checkpoints = Checkpoint.objects.filter(
        job__organization=org, job__status__in=states.TERMINAL, job__finished_at__isnull=False
    ).select_related("job")
    expiries = []
    for c in checkpoints:
        finished: datetime = c.job.finished_at  # type: ignore[assignment]  # filtered not null
        expiries.append(Expiry("checkpoint", str(c.pk), c.public_id, finished + days, (c.job_id,)))
    return expiries


def retention_schedule(org: Organization) -> list[Expiry]:
    """What will expire when, soonest first (the portal's data page shows it)."""
    return sorted(
        file_expiries(org) + checkpoint_expiries(org), key=lambda e: (e.expires_at, e.object_id)
    )


def _file_expire(org: Organization, expiry: Expiry) -> bool:
    try:
        file = file_delete(organization=org, file_id=expiry.object_id)
    except Conflict:  # a job started using it since the schedule was read: keep it
        return False
    except NotFound:  # deleted since (by its owner, or a concurrent sweep)
        return False
    with transaction.atomic():
        for job_id in expiry.job_ids:
            job_event_add(
                job_id=job_id,
                message=f"Training data {file.id} ({file.filename}) was deleted: its retention "
                "period ended.",
                data={"file_id": file.id, "reason": "retention"},
            )
        announce.announce(
            event_type=announce.FILE_EXPIRED,
            organization_id=org.pk,
            subject_id=file.id,
            data={"id": file.id, "reason": "retention"},
        )
    return True


def _checkpoint_expire(org: Organization, expiry: Expiry) -> bool:
    checkpoint = checkpoint_delete(checkpoint_id=int(expiry.object_id))
    if checkpoint is None:
        return False
    with transaction.atomic():
        job_event_add(
            job_id=checkpoint.job_id,
            message=f"Checkpoint {checkpoint.public_id} was deleted: its retention period ended.",
            data={"checkpoint": checkpoint.public_id, "reason": "retention"},
        )
        announce.announce(
            event_type=announce.CHECKPOINT_EXPIRED,
            organization_id=org.pk,
            subject_id=checkpoint.public_id,
            data={"id": checkpoint.public_id, "job_id": checkpoint.job_id},
        )
    return True


def retention_sweep(*, now: datetime | None = None) -> dict[str, int]:
    """Delete every training file and checkpoint whose retention ended. Safe to run twice."""
    now = now or timezone.now()
    deleted = {"files": 0, "checkpoints": 0}
    with_data = Organization.objects.filter(
        Q(files__purpose=File.Purpose.FINE_TUNE, files__deleted_at__isnull=True)
        | Q(jobs__checkpoints__isnull=False)
    ).distinct()
    for org in with_data:
        for expiry in retention_schedule(org):
            if expiry.expires_at > now:
                break
            expire = _file_expire if expiry.kind == "file" else _checkpoint_expire
            if expire(org, expiry):
                deleted[f"{expiry.kind}s"] += 1
                logger.info(
                    "retention deleted",
                    extra={"org_id": org.pk, "kind": expiry.kind, "object_id": expiry.object_id},
                )
    return deleted
