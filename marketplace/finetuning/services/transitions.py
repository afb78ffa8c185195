"""The job state machine's writes: events with their sequence numbers, and transitions
applied by one conditional UPDATE (for one job or a batch) that records an event."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from typing import Any, cast

from django.db import transaction
from django.db.models import Case, F, Field, Value, When
from django.utils import timezone

from marketplace.errors import InvalidTransition, NotFound
from marketplace.events.services import event_record
from marketplace.events.types import JOB_STATUS_EVENTS
from marketplace.finetuning import states
from marketplace.finetuning.models import FineTuningJob, JobEvent
from marketplace.finetuning.models import JobStatus as S

logger = logging.getLogger("partage.finetuning")


def job_event_add(
    *,
    job_id: str,
    message: str,
    level: str = JobEvent.Level.INFO,
    type: str = JobEvent.Type.MESSAGE,
    data: dict[str, Any] | None = None,
) -> JobEvent:
    """Append an event with the job's next sequence number (a row-level atomic increment)."""
    with transaction.atomic():
        FineTuningJob.objects.filter(pk=job_id).update(event_seq=F("event_seq") + 1)
        seq = FineTuningJob.objects.filter(pk=job_id).values_list("event_seq", flat=True).get()
        return JobEvent.objects.create(
            job_id=job_id, seq=seq, level=level, type=type, message=message, data=data
        )


def job_transition(
    *,
    job_id: str,
    to: str,
    message: str,
    level: str = JobEvent.Level.INFO,
    data: dict[str, Any] | None = None,
    only_from: Iterable[str] | None = None,
    **fields: Any,
) -> FineTuningJob:
    """Move a job to `to` if its current state allows it; record the event. Raises otherwise.

    No savepoint: a refused transition raises only after the block (it wrote nothing), so a
    caller may catch it and go on; a database error inside aborts the caller's transaction
    (it would be unusable on PostgreSQL anyway), as it does the standalone call's own.
    """
    _jobs_transition_apply(
        job_ids=[job_id],
        to=to,
        message=message,
        level=level,
        data=data,
        only_from=only_from,
        **fields,
    )
    return FineTuningJob.objects.get(pk=job_id)


def _jobs_transition_apply(
    *,
    job_ids: Sequence[str],
    to: str,
    message: str,
    level: str = JobEvent.Level.INFO,
    data: dict[str, Any] | None = None,
    only_from: Iterable[str] | None = None,
    per_job: dict[str, dict[str, Any]] | None = None,
    **fields: Any,
) -> None:
    """Move many jobs to `to` at once: one conditional UPDATE, one read of their event
    numbers, one INSERT of their events, whatever their number. `per_job` gives fields whose
    value differs per job (job id → {field: value}); `fields` are the same for all.

    Raises InvalidTransition (or NotFound) unless every job could move. For one job nothing
    was written then; for several, some may have moved: the caller rolls back (the admission
    pass does, its batch being one transaction).
    """
    ids = list(dict.fromkeys(job_ids))
    allowed = set(states.ALLOWED[S(to)])
    if only_from is not None:
        allowed &= set(only_from)
    now = timezone.now()
    if to in states.TERMINAL:
        fields.setdefault("finished_at", now)
    for name in {name for values in (per_job or {}).values() for name in values}:
        field = cast(Field, FineTuningJob._meta.get_field(name))  # a column, not a relation
        fields[name] = Case(
            *(
                When(pk=job_id, then=Value(values[name]))
                for job_id, values in (per_job or {}).items()
                if name in values
            ),
            default=F(name),
            output_field=field,
        )
    with transaction.atomic(savepoint=False):
        # The event's sequence number is taken in the same UPDATE (what job_event_add does).
        updated = FineTuningJob.objects.filter(pk__in=ids, status__in=allowed).update(
            status=to, updated_at=now, event_seq=F("event_seq") + 1, **fields
        )
        if updated == len(ids):
            rows = FineTuningJob.objects.filter(pk__in=ids).values_list(
                "pk", "event_seq", "organization_id"
            )
            seqs = {job_id: seq for job_id, seq, _ in rows}
            orgs = {job_id: org_id for job_id, _, org_id in rows}
            JobEvent.objects.bulk_create(
                JobEvent(
                    job_id=job_id,
                    seq=seqs[job_id],
                    level=level,
                    type=JobEvent.Type.MESSAGE,
                    message=message,
                    data=data,
                )
                for job_id in ids
            )
            announced = JOB_STATUS_EVENTS.get(str(to))  # inner steps are not announced
            if announced is not None:
                for job_id in ids:
                    event_record(
                        event_type=announced, organization_id=orgs[job_id], subject_id=job_id
                    )
    if updated != len(ids):
        current = dict(FineTuningJob.objects.filter(pk__in=ids).values_list("pk", "status"))
        for job_id in ids:
            if job_id not in current:
                raise NotFound(f"No fine-tuning job {job_id!r}.", param="job_id")
        job_id, status = next((j, s) for j, s in current.items() if s not in allowed)
        raise InvalidTransition(
            f"Job {job_id} is {states.public_status(status)} ({status}); it cannot become {to}.",
            param="status",
        )
    for job_id in ids:
        logger.info("job %s -> %s", job_id, to, extra={"job_id": job_id, "status": to})
