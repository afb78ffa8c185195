"""Files: training uploads validated then stored, deleted, and the result files jobs deliver.

A small upload is validated in the request and refused whole when bad. A larger one is stored
at once as `uploaded` (OpenAI's status for a file still being processed) and validated by a
Celery task, which moves it to `processed` or `error` with the line report: no web thread waits
on it.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Iterator
from datetime import timedelta
from functools import partial
from typing import IO

from django.conf import settings
from django.core.files import File as DjangoFile
from django.core.files.storage import default_storage
from django.db import transaction
from django.utils import timezone

from marketplace.accounts.guards import content_add_check
from marketplace.accounts.models import Organization
from marketplace.errors import Conflict, InvalidInput, NotFound, PayloadTooLarge
from marketplace.finetuning import states
from marketplace.finetuning.models import Checkpoint, File, FineTuningJob
from marketplace.finetuning.storage import storage_refusal
from marketplace.finetuning.validation import Report, read_lines, validate_lines


def _new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


def _chunks(stream: IO[bytes], size: int = 1 << 20) -> Iterator[bytes]:
    while chunk := stream.read(size):
        yield chunk


def stream_digest(stream: IO[bytes], *, limit: int | None = None) -> tuple[str, int]:
    """SHA-256 (hex) and size of a stream, read from its start; left rewound. Past `limit`
    bytes: PayloadTooLarge (413, file_too_large), without reading the rest."""
    digest = hashlib.sha256()
    total = 0
    stream.seek(0)
    for chunk in _chunks(stream):
        digest.update(chunk)
        total += len(chunk)
        if limit is not None and total > limit:
            raise PayloadTooLarge(
                f"The file is larger than the {limit}-byte limit. Split it into smaller files.",
                param="file",
            )
    stream.seek(0)
    return digest.hexdigest(), total


def _validate(stream: IO[bytes]) -> Report:
    return validate_lines(
        read_lines(stream, max_line_bytes=settings.PARTAGE_MAX_LINE_BYTES),
        max_lines=settings.PARTAGE_MAX_TRAINING_LINES,
        max_line_bytes=settings.PARTAGE_MAX_LINE_BYTES,
    )


def _report_summary(report: Report) -> str:
    first = report.errors[0]
    where = f"line {first.line}: " if first.line else ""
    return (
        f"The training file has {report.error_count} invalid line(s); first, {where}"
        f"{first.message} See error.details for every line."
    )


def residency_check_storage(
    *, organization_id: int, what: str = "files", job: FineTuningJob | None = None
) -> None:
    """Refuse to store an organization's data where its residency policy does not allow.

    Partage has one storage backend; PARTAGE_STORAGE_COUNTRY says where its bytes live. An
    EU-only organization on a platform whose storage is outside the EU gets a clear refusal,
    never a silent copy elsewhere.
    """
    why = storage_refusal(organization_id, job.residency if job else None)
    if why:
        raise Conflict(
            f"Cannot store {what}: {why}. Ask your platform operator for storage in an "
            "allowed country.",
            code="residency_storage",
        )


def file_create(
    *,
    organization: Organization,
    stream: IO[bytes],
    filename: str,
    purpose: str = File.Purpose.FINE_TUNE,
    size: int | None = None,
) -> File:
    """Validate (inline when small), then store. Bad input raises and leaves nothing behind;
    a large file is stored as `uploaded` and validated off the request (file_validate)."""
    if purpose != File.Purpose.FINE_TUNE:
        raise InvalidInput(
            f"purpose {purpose!r} is not accepted for uploads; use 'fine-tune'.", param="purpose"
        )
    limit = settings.PARTAGE_MAX_UPLOAD_BYTES
    if size is not None and size > limit:
        raise PayloadTooLarge(
            f"The file is {size} bytes; the limit is {limit} bytes. Split it into smaller files.",
            param="file",
        )
    content_add_check(organization=organization, action="upload a file")
    residency_check_storage(organization_id=organization.pk)
    sha256, total = stream_digest(stream, limit=limit)
    report: Report | None = None
    if total <= settings.PARTAGE_UPLOAD_INLINE_VALIDATION_BYTES:
        report = _validate(stream)
        if not report.ok:
            raise InvalidInput(
                _report_summary(report),
                code="invalid_training_file",
                param="file",
                details=report.as_dict(),
            )
    stream.seek(0)
    file_id = _new_id("file")
    stored_name = default_storage.save(
        f"files/{organization.pk}/{file_id}.jsonl", DjangoFile(stream)
    )
    try:
        with transaction.atomic():
            file = File.objects.create(
                id=file_id,
                organization=organization,
                filename=filename[:255] or "training.jsonl",
                purpose=purpose,
                bytes=total,
                sha256=sha256,
                content=stored_name,
                status=File.Status.PROCESSED if report else File.Status.UPLOADED,
                status_details=report.as_dict() if report else None,
                data_format=report.data_format if report else "",
                line_count=report.line_count if report else 0,
            )
            if report is None:
                transaction.on_commit(partial(_enqueue_validation, file_id))
            return file
    except Exception:
        default_storage.delete(stored_name)
        raise


def _enqueue_validation(file_id: str) -> None:
    from workers.celery import task_send

    task_send("partage.file_validate", file_id)


def file_validate(*, file_id: str) -> File | None:
    """Validate a stored upload still `uploaded`: `processed`, or `error` with the line report
    in status_details. Safe to run twice (a file already decided is left as it is)."""
    file = File.objects.filter(pk=file_id, status=File.Status.UPLOADED).first()
    if file is None:
        return None
    with file.content.open("rb") as stream:
        report = _validate(stream)
    details = report.as_dict()
    if not report.ok:
        details["message"] = _report_summary(report)
    File.objects.filter(pk=file_id, status=File.Status.UPLOADED).update(
        status=File.Status.PROCESSED if report.ok else File.Status.ERROR,
        status_details=details,
        data_format=report.data_format,
        line_count=report.line_count,
    )
    file.refresh_from_db()
    return file


def files_validation_sweep(*, older_than: timedelta = timedelta(minutes=10)) -> int:
    """Enqueue validation again for uploads still `uploaded` after `older_than` (their task was
    lost: a broker outage, a worker killed mid-task). Validation is idempotent."""
    stale = list(
        File.objects.filter(
            status=File.Status.UPLOADED,
            purpose=File.Purpose.FINE_TUNE,
            deleted_at__isnull=True,
            created_at__lt=timezone.now() - older_than,
        ).values_list("pk", flat=True)[:500]
    )
    for file_id in stale:
        _enqueue_validation(file_id)
    return len(stale)


def file_delete(*, organization: Organization, file_id: str) -> File:
    file = File.objects.filter(
        organization=organization, pk=file_id, deleted_at__isnull=True
    ).first()
    if file is None:
        raise NotFound(f"No file {file_id!r}.", param="file_id")
    in_use = FineTuningJob.objects.filter(
        organization=organization, status__in=states.UNFINISHED
    ).filter(training_file=file) | FineTuningJob.objects.filter(
        organization=organization, status__in=states.UNFINISHED, validation_file=file
    )
    if in_use.exists():
        raise Conflict(
            f"File {file_id} is used by an unfinished job; cancel the job first.", param="file_id"
        )
    File.objects.filter(pk=file.pk).update(deleted_at=timezone.now())
    file.content.delete(save=False)
    return file


def result_file_create(*, job: FineTuningJob, stream: IO[bytes], filename: str) -> File:
    """A file the job delivers: the adapter archive (`….tar.gz`) or its `eval.json`."""
    sha256, total = stream_digest(stream)
    file_id = _new_id("file")
    extension = ".json" if filename.endswith(".json") else ".tar.gz"
    stored = default_storage.save(
        f"results/{job.organization_id}/{file_id}{extension}", DjangoFile(stream)
    )
    return File.objects.create(
        id=file_id,
        organization_id=job.organization_id,
        filename=filename,
        purpose=File.Purpose.RESULTS,
        bytes=total,
        sha256=sha256,
        content=stored,
        status=File.Status.PROCESSED,
    )


def checkpoint_delete(*, checkpoint_id: int) -> Checkpoint | None:
    """Delete a checkpoint: its bytes first, then its row (a retry finds the row and finishes).

    A job keeps rendering without it; resuming needs a checkpoint, so callers only delete those
    of finished jobs.
    """
    checkpoint = Checkpoint.objects.filter(pk=checkpoint_id).first()
    if checkpoint is None:
        return None
    if checkpoint.archive:
        default_storage.delete(checkpoint.archive.name or "")
    Checkpoint.objects.filter(pk=checkpoint.pk).delete()
    return checkpoint
