"""The SSE stream reads the job's end from the outbox of domain events: a stream of a running
job ends as soon as the job's ending is announced, without waiting for its time limit."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
from rest_framework.test import APIClient

from marketplace.api import views
from marketplace.events.services import event_record
from tests.api.factories import job_for

pytestmark = pytest.mark.django_db


def _chunks(response: Any) -> Any:
    for chunk in response.streaming_content:
        yield chunk.decode() if isinstance(chunk, bytes) else chunk


def test_a_running_job_s_stream_ends_when_the_outbox_announces_its_end(
    client_a: APIClient, org_a: Any, settings: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings.PARTAGE_SSE_MAX_SECONDS = 60
    # Only the outbox can end it here: the row stays "running" and is not read again.
    monkeypatch.setattr(views, "STATUS_RECHECK_SECONDS", 3600.0)
    job = job_for(org_a, status="running", events=2)
    # An ending announced before the stream starts is the row's business, not the stream's.
    chunks = _chunks(client_a.get(f"/v1/fine_tuning/jobs/{job.id}/events/stream"))
    head = [next(chunks) for _ in range(3)]  # retry, then the two events
    assert head[0].startswith("retry:") and "id: 2" in head[2]

    event_record(event_type="fine_tuning.job.failed", organization_id=org_a.pk, subject_id=job.id)
    started = time.monotonic()
    end = next(chunks)
    assert time.monotonic() - started < 10
    assert end.startswith("event: end")
    assert json.loads(end.split("data: ", 1)[1]) == {"status": "failed"}


def test_another_job_s_or_org_s_announcement_does_not_end_the_stream(
    client_a: APIClient, org_a: Any, org_b: Any, settings: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings.PARTAGE_SSE_MAX_SECONDS = 2
    monkeypatch.setattr(views, "STATUS_RECHECK_SECONDS", 3600.0)
    job = job_for(org_a, status="running", events=1)
    other = job_for(org_a, status="running", events=0)
    event_record(
        event_type="fine_tuning.job.succeeded", organization_id=org_a.pk, subject_id=other.id
    )
    # The same job id announced in another organization is not this job.
    event_record(
        event_type="fine_tuning.job.succeeded", organization_id=org_b.pk, subject_id=job.id
    )
    text = "".join(_chunks(client_a.get(f"/v1/fine_tuning/jobs/{job.id}/events/stream")))
    assert "event: end" not in text  # it stopped at its time limit instead
