"""The trainer's log while it runs (POST /internal/v1/jobs/<id>/log, sent by the agent): each
report replaces the last, only while the attempt runs; a stale attempt's is refused."""

from __future__ import annotations

from typing import Any

from django.utils import timezone
from rest_framework.test import APIClient

from marketplace.finetuning.models import FineTuningJob, JobAttempt
from marketplace.finetuning.tokens import job_token_issue
from tests.api.factories import job_for


def _attempt(job: FineTuningJob, number: int, *, ended: bool = False) -> JobAttempt:
    FineTuningJob.objects.filter(pk=job.pk).update(attempt_count=number)
    return JobAttempt.objects.create(
        job=job,
        number=number,
        executor="local",
        name=f"{job.id}-a{number}",
        ended_at=timezone.now() if ended else None,
        logs="final log" if ended else "",
    )


def _post(job: FineTuningJob, number: int, logs: Any) -> Any:
    client = APIClient()
    token = job_token_issue(job_id=job.id, attempt=number, deadline_seconds=600)
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {token}")
    return client.post(
        f"/internal/v1/jobs/{job.id}/log", {"attempt": number, "logs": logs}, format="json"
    )


def test_each_report_replaces_the_last_while_the_attempt_runs(org_a: Any) -> None:
    job = job_for(org_a, status="running")
    attempt = _attempt(job, 1)
    assert _post(job, 1, "loading the base model\n").json() == {"taken": True}
    answer = _post(job, 1, "loading the base model\ntraining 40 steps on cpu\n")
    assert answer.status_code == 200 and answer.json() == {"taken": True}
    attempt.refresh_from_db()
    assert attempt.logs == "loading the base model\ntraining 40 steps on cpu\n"
    assert _post(job, 1, "x" * 150_000).status_code == 200
    attempt.refresh_from_db()
    assert len(attempt.logs) == 100_000  # the latest part only


def test_the_exit_report_has_the_last_word(org_a: Any) -> None:
    job = job_for(org_a, status="succeeded")
    attempt = _attempt(job, 1, ended=True)
    assert _post(job, 1, "an older tail").json() == {"taken": False}
    attempt.refresh_from_db()
    assert attempt.logs == "final log"


def test_a_stale_attempt_or_a_bad_body_is_refused(org_a: Any) -> None:
    job = job_for(org_a, status="running")
    _attempt(job, 1, ended=True)
    _attempt(job, 2)
    stale = _post(job, 1, "from the old attempt")
    assert stale.status_code == 409 and stale.json()["error"]["code"] == "stale_attempt"
    bad = _post(job, 2, ["not", "a", "string"])
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "logs"
    assert JobAttempt.objects.get(job=job, number=2).logs == ""
