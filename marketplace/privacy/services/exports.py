"""Data exports: an owner asks, a Celery task builds one archive of everything the organization
has with Partage, it is downloadable for PARTAGE_EXPORT_TTL_DAYS, then deleted.
"""

from __future__ import annotations

import hashlib
import logging
import re
import tempfile
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.core.files import File as DjangoFile
from django.core.files.storage import default_storage
from django.db import models, transaction
from django.utils import timezone

from marketplace.accounts.models import Membership, Organization, User
from marketplace.accounts.services import new_public_id
from marketplace.billing import selectors as billing
from marketplace.billing.exports import invoice_csv, invoice_pdf
from marketplace.capacity import selectors as capacity
from marketplace.errors import Conflict, Forbidden
from marketplace.events.models import DomainEvent
from marketplace.finetuning import selectors as ft
from marketplace.finetuning.models import File, FineTuningJob, JobEvent
from marketplace.privacy import announce
from marketplace.privacy.archive import ArchiveWriter
from marketplace.privacy.models import DataExport, OrganizationPrivacy, StaffAccess
from marketplace.privacy.registry import export_sections

logger = logging.getLogger("partage.privacy")

ARCHIVE_FORMAT = "partage-export/1"
# Secrets never leave: API keys' hashes, webhook signing secrets, job tokens.
NEVER_EXPORTED = {"hashed_secret", "secret", "previous_secret", "password"}


def row(obj: models.Model, *, exclude: set[str] | frozenset[str] = frozenset()) -> dict[str, Any]:
    """Every concrete column of a row (foreign keys as ids), minus secrets and `exclude`."""
    skip = NEVER_EXPORTED | set(exclude)
    out: dict[str, Any] = {}
    for field in obj._meta.concrete_fields:
        if field.name in skip or field.attname in skip:
            continue
        value = getattr(obj, field.attname)
        if isinstance(field, models.FileField):
            value = value.name if value else None
        out[field.attname] = value
    return out


def _owner_check(organization: Organization, user: User | None) -> None:
    if user is None:
        return
    is_owner = Membership.objects.filter(
        organization=organization, user=user, role=Membership.Role.OWNER
    ).exists()
    if not is_owner:
        raise Forbidden("Only an owner of the organization can export its data.")


def export_request(*, organization: Organization, requested_by: User | None) -> DataExport:
    """Queue an export. `requested_by` None: an API key of the organization asked."""
    _owner_check(organization, requested_by)
    from workers.celery import task_send

    with transaction.atomic():
        busy = DataExport.objects.filter(
            organization=organization,
            status__in=[DataExport.Status.PENDING, DataExport.Status.BUILDING],
        ).first()
        if busy is not None:
            raise Conflict(
                f"Export {busy.public_id} is already being built; wait for it to be ready.",
                code="export_in_progress",
            )
        export = DataExport.objects.create(
            public_id=new_public_id("export"),
            organization=organization,
            requested_by=requested_by,
        )
        # By name: privacy/tasks.py imports these services.
        transaction.on_commit(lambda: task_send("partage.privacy_export_build", export.pk))
    return export


def export_build(*, export_id: int) -> DataExport:
    """Build the archive (idempotent: a ready export is left as it is; a half-built one is
    rebuilt from scratch)."""
    claimed = DataExport.objects.filter(
        pk=export_id, status__in=[DataExport.Status.PENDING, DataExport.Status.BUILDING]
    ).update(status=DataExport.Status.BUILDING)
    export = DataExport.objects.select_related("organization").get(pk=export_id)
    if not claimed:
        return export
    try:
        name, size, sha256, count = _archive_write(export)
    except Exception as e:
        logger.exception("export failed", extra={"org_id": export.organization_id})
        DataExport.objects.filter(pk=export.pk).update(
            status=DataExport.Status.FAILED, error=f"{type(e).__name__}: {e}"[:2000]
        )
        raise
    now = timezone.now()
    with transaction.atomic():
        DataExport.objects.filter(pk=export.pk).update(
            status=DataExport.Status.READY,
            archive=name,
            bytes=size,
            sha256=sha256,
            object_count=count,
            ready_at=now,
            expires_at=now + timedelta(days=settings.PARTAGE_EXPORT_TTL_DAYS),
        )
        announce.announce(
            event_type=announce.EXPORT_READY,
            organization_id=export.organization_id,
            subject_id=export.public_id,
            data={"id": export.public_id},
        )
    export.refresh_from_db()
    return export


def _archive_write(export: DataExport) -> tuple[str, int, str, int]:
    org = export.organization
    with tempfile.TemporaryFile() as target:
        writer = ArchiveWriter(target)
        _write_organization(org, writer)
        _write_files(org, writer)
        _write_jobs(org, writer)
        _write_billing(org, writer)
        _write_access(org, writer)
        for section in export_sections().values():
            section(org, writer)
        count = writer.close(
            description={
                "format": ARCHIVE_FORMAT,
                "export": export.public_id,
                "organization": org.public_id,
                "created_at": timezone.now(),
            }
        )
        target.seek(0)
        digest = hashlib.sha256()
        while chunk := target.read(1 << 20):
            digest.update(chunk)
        size = target.tell()
        target.seek(0)
        name = default_storage.save(
            f"exports/{org.pk}/{export.public_id}.tar.gz", DjangoFile(target)
        )
    return name, size, digest.hexdigest(), count


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name)[:120] or "file"


def _write_organization(org: Organization, writer: ArchiveWriter) -> None:
    members = Membership.objects.filter(organization=org).select_related("user")
    privacy = OrganizationPrivacy.objects.filter(organization=org).first()
    writer.add_json(
        "organization.json",
        {
            "organization": row(org),
            "members": [
                {
                    "username": m.user.username,
                    "email": m.user.email,
                    "first_name": m.user.first_name,
                    "last_name": m.user.last_name,
                    "role": m.role,
                    "joined_at": m.created_at,
                }
                for m in members
            ],
            "residency": capacity.residency_for_org(org).describe(),
            "retention_days": privacy.retention_days if privacy else None,
        },
        kind="organization",
        object_id=org.public_id,
    )
    keys = [row(key) for key in org.api_keys.all()]
    writer.add_json("api_keys.json", keys, kind="api_keys")


def _write_files(org: Organization, writer: ArchiveWriter) -> None:
    for file in ft.files_for_org(org).order_by("created_at", "id"):
        base = f"files/{file.id}"
        writer.add_json(f"{base}/file.json", row(file), kind="file", object_id=file.id)
        if file.status_details:
            writer.add_json(
                f"{base}/validation_report.json",
                file.status_details,
                kind="validation_report",
                object_id=file.id,
            )
        if file.deleted_at is None and file.content:
            with default_storage.open(file.content.name or "", "rb") as stream:
                writer.add_stream(
                    f"{base}/{_safe(file.filename)}",
                    stream,
                    file.bytes,
                    kind="file_content",
                    object_id=file.id,
                )


def _write_jobs(org: Organization, writer: ArchiveWriter) -> None:
    jobs = FineTuningJob.objects.filter(organization=org).order_by("created_at", "id")
    for job in jobs:
        base = f"jobs/{job.id}"
        writer.add_json(
            f"{base}/job.json",
            {"job": row(job), "attempts": [row(a) for a in job.attempts.all()]},
            kind="job",
            object_id=job.id,
        )
        events = JobEvent.objects.filter(job=job).order_by("seq")
        writer.add_jsonl(
            f"{base}/events.jsonl",
            (row(e) for e in events.filter(type=JobEvent.Type.MESSAGE).iterator()),
            kind="job_events",
        )
        writer.add_jsonl(
            f"{base}/metrics.jsonl",
            (row(e) for e in events.filter(type=JobEvent.Type.METRICS).iterator()),
            kind="job_metrics",
        )
        if job.manifest:
            writer.add_json(
                f"{base}/manifest.json", job.manifest, kind="adapter_manifest", object_id=job.id
            )
            if isinstance(job.manifest.get("eval"), dict):
                writer.add_json(
                    f"{base}/eval.json", job.manifest["eval"], kind="eval", object_id=job.id
                )
        _write_job_files(job, base, writer)


def _write_job_files(job: FineTuningJob, base: str, writer: ArchiveWriter) -> None:
    result: File | None = job.result_file
    if result is not None and result.deleted_at is None and result.content:
        with default_storage.open(result.content.name or "", "rb") as stream:
            writer.add_stream(
                f"{base}/adapter.tar.gz", stream, result.bytes, kind="adapter", object_id=result.id
            )
    for checkpoint in ft.checkpoints_for_job(job).order_by("step"):
        if not checkpoint.archive:
            continue
        with default_storage.open(checkpoint.archive.name or "", "rb") as stream:
            writer.add_stream(
                f"{base}/checkpoints/step-{checkpoint.step:06d}.tar.gz",
                stream,
                checkpoint.bytes,
                kind="checkpoint",
                object_id=checkpoint.public_id,
            )


def _write_billing(org: Organization, writer: ArchiveWriter) -> None:
    writer.add_json(
        "billing/bookings.json",
        [row(b) for b in capacity.bookings_for_org(org).order_by("start", "id")],
        kind="bookings",
    )
    writer.add_jsonl(
        "billing/usage.jsonl",
        (row(u) for u in billing.usage_for_org(org).order_by("recorded_at", "id").iterator()),
        kind="usage",
    )
    writer.add_jsonl(
        "billing/ledger.jsonl",
        (
            {
                **row(line),
                "entry_key": line.entry.key,
                "entry_kind": line.entry.kind,
                "entry_memo": line.entry.memo,
                "entry_created_at": line.entry.created_at,
            }
            for line in billing.ledger_lines_for_org(org)
        ),
        kind="ledger",
    )
    for invoice in billing.invoices_for_org(org).order_by("created_at", "id"):
        name = _safe(invoice.number or invoice.public_id)
        base = f"billing/invoices/{name}"
        writer.add_json(
            f"{base}.json",
            {"invoice": row(invoice), "lines": [row(line) for line in invoice.lines.all()]},
            kind="invoice",
            object_id=invoice.public_id,
        )
        writer.add_bytes(f"{base}.pdf", invoice_pdf(invoice), kind="invoice_pdf")
        writer.add_bytes(f"{base}.csv", invoice_csv(invoice).encode(), kind="invoice_csv")


def _write_access(org: Organization, writer: ArchiveWriter) -> None:
    from marketplace.quotas.selectors import quota_audit

    writer.add_jsonl(
        "audit/staff_access.jsonl",
        (row(a) for a in StaffAccess.objects.filter(organization=org).order_by("created_at")),
        kind="audit",
    )
    writer.add_jsonl(
        "audit/quota_changes.jsonl",
        (row(entry) for entry in quota_audit(organization=org)),
        kind="audit",
    )
    writer.add_jsonl(
        "audit/events.jsonl",
        (
            row(event)
            for event in DomainEvent.objects.filter(organization_id=org.pk)
            .order_by("id")
            .iterator()
        ),
        kind="audit",
    )
    writer.add_jsonl(
        "audit/exports.jsonl",
        (
            row(e, exclude={"archive"})
            for e in DataExport.objects.filter(organization=org).order_by("created_at")
        ),
        kind="audit",
    )


def exports_expire(*, now: Any = None) -> int:
    """Delete the archives of exports past their download window (bytes and all)."""
    now = now or timezone.now()
    expired = 0
    due = DataExport.objects.filter(status=DataExport.Status.READY, expires_at__lte=now)
    for export in due:
        if export.archive:
            default_storage.delete(export.archive.name or "")
        DataExport.objects.filter(pk=export.pk).update(status=DataExport.Status.EXPIRED, archive="")
        expired += 1
    return expired
