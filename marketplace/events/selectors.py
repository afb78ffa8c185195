"""Reads of the outbox, scoped by organization: what has been announced about one subject
since a reader's own cursor (the id of the last event it saw). The job page and the SSE stream
read their job's announcements this way."""

from __future__ import annotations

from collections.abc import Iterable

from django.db.models import Q, QuerySet

from marketplace.events.models import DomainEvent


def events_about(
    *,
    organization_id: int,
    subject_id: str,
    after: int = 0,
    event_types: Iterable[str] | None = None,
    parent_key: str | None = None,
) -> QuerySet[DomainEvent]:
    """Events of the organization about `subject_id` with an id above `after`, oldest first.

    With `parent_key`, also the events whose data names the subject under that key (a job's
    checkpoints: `parent_key="fine_tuning_job_id"`)."""
    about = Q(subject_id=subject_id)
    if parent_key:
        about |= Q(**{f"data__{parent_key}": subject_id})
    events = DomainEvent.objects.filter(about, organization_id=organization_id, pk__gt=after)
    if event_types is not None:
        events = events.filter(event_type__in=list(event_types))
    return events.order_by("pk")


def last_event_id() -> int:
    """The id of the newest event: a reader that starts now reads after it."""
    return DomainEvent.objects.order_by("-pk").values_list("pk", flat=True).first() or 0
