"""The partner path end to end: upload → job → real LoRA training on CPU → adapter download.

On SQLite the Celery tasks run eagerly inside the live server; the trainer still runs as a
separate local process (the local executor) and reports back over HTTP, as in production.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings

from marketplace.finetuning.models import FineTuningJob, JobAttempt
from tests.conftest import catches_signal, chat_lines, jsonl, wait_for
from tests.finetuning.adapters import assert_adapter_changes_logits, assert_eval_report, extract

pytestmark = pytest.mark.slow


@pytest.fixture
def eager_celery(settings: Any) -> Any:
    from workers.celery import app

    settings.CELERY_TASK_ALWAYS_EAGER = True
    app.conf.task_always_eager = True
    yield app
    app.conf.task_always_eager = False


def run_partner_path(
    client: Any, upload: Any, tmp_path: Path, *, timeout: float = 240
) -> FineTuningJob:
    file_id = upload(jsonl(chat_lines(16))).json()["id"]
    response = client.post(
        "/v1/fine_tuning/jobs",
        {
            "model": "partage/tiny-llama",
            "training_file": file_id,
            "hyperparameters": {"n_epochs": 3, "batch_size": 4, "learning_rate_multiplier": 10},
            "suffix": "colours",
            "seed": 7,
        },
        format="json",
    )
    assert response.status_code == 200, response.content
    job_id = response.json()["id"]

    def finished() -> dict[str, Any] | None:
        body = client.get(f"/v1/fine_tuning/jobs/{job_id}").json()
        return body if body["status"] in {"succeeded", "failed", "cancelled"} else None

    body = wait_for(finished, timeout=timeout, what=f"job {job_id} to finish")
    job = FineTuningJob.objects.get(pk=job_id)
    assert body["status"] == "succeeded", (body, [a.logs[-3000:] for a in job.attempts.all()])
    assert body["fine_tuned_model"].startswith("ft:partage/tiny-llama:org-a:colours:")
    assert body["trained_tokens"] and body["trained_tokens"] > 0
    assert len(body["result_files"]) == 2  # the adapter archive, then eval.json

    events = client.get(f"/v1/fine_tuning/jobs/{job_id}/events?limit=100").json()["data"]
    metrics = [e for e in events if e["type"] == "metrics"]
    assert metrics and all("train_loss" in e["data"] for e in metrics)
    assert any("successfully completed" in e["message"] for e in events)

    archive = client.get(f"/v1/files/{body['result_files'][0]}/content")
    assert archive.status_code == 200
    adapter_dir = extract(b"".join(archive.streaming_content), tmp_path / "adapter")
    assert_adapter_changes_logits(
        adapter_dir, "partage/tiny-llama", Path(settings.PARTAGE_MODEL_CACHE)
    )
    evaluation = client.get(f"/v1/files/{body['result_files'][1]}/content")
    assert evaluation.status_code == 200 and evaluation["Content-Type"] == "application/json"
    report = assert_eval_report(b"".join(evaluation.streaming_content), job_id=job_id)
    # 16 examples, no validation file: one is held out of training and answered
    assert report["source"] == "training_holdout" and len(report["samples"]) == 1
    return job


def long_job(client: Any, upload: Any) -> str:
    """A job of 3,200 steps: it runs until the test stops it."""
    file_id = upload(jsonl(chat_lines(64))).json()["id"]
    response = client.post(
        "/v1/fine_tuning/jobs",
        {
            "model": "partage/tiny-llama",
            "training_file": file_id,
            "hyperparameters": {"n_epochs": 50, "batch_size": 1},
        },
        format="json",
    )
    assert response.status_code == 200, response.content
    return str(response.json()["id"])


def test_partner_path_on_sqlite(
    client_a: Any, upload: Any, live_callbacks: str, eager_celery: Any, tmp_path: Path
) -> None:
    job = run_partner_path(client_a, upload, tmp_path)
    # The job succeeds when its adapter is stored; the attempt closes when the agent reports
    # the trainer's exit, a moment later.
    attempts = wait_for(
        lambda: (a := list(JobAttempt.objects.filter(job=job))) and a[0].ended_at and a,
        timeout=60,
        what="the attempt to report its exit",
    )
    assert len(attempts) == 1 and attempts[0].status == JobAttempt.Status.SUCCEEDED
    assert attempts[0].training_started_at is not None and attempts[0].ended_at is not None
    manifest = job.manifest
    assert manifest["base_model"]["id"] == "partage/tiny-llama"
    assert manifest["training_file"]["sha256"] == job.training_file.sha256
    assert manifest["seed"] == 7


def test_cancel_stops_the_local_trainer(
    client_a: Any, upload: Any, live_callbacks: str, eager_celery: Any
) -> None:
    job_id = long_job(client_a, upload)
    wait_for(
        lambda: FineTuningJob.objects.get(pk=job_id).progress.get("step"),
        timeout=120,
        what="the first training step",
    )
    response = client_a.post(f"/v1/fine_tuning/jobs/{job_id}/cancel")
    assert response.status_code == 200
    job = wait_for(
        lambda: (j := FineTuningJob.objects.get(pk=job_id)).status == "cancelled" and j,
        timeout=60,
        what="the job to be cancelled",
    )
    attempt = job.attempts.get()
    assert attempt.status == JobAttempt.Status.CANCELLED and attempt.ended_at is not None
    assert job.result_file_id is None
    pid = int(attempt.handle.partition(":")[0])
    wait_for(
        lambda: (
            not Path(f"/proc/{pid}").exists()
            or "Z" in Path(f"/proc/{pid}/stat").read_text().split(")")[-1][:3]
        ),
        timeout=30,
        what="the trainer process to exit",
    )


def _job_launched(client: Any, upload: Any) -> tuple[str, JobAttempt, int]:
    """Submit a small job; return it once its agent runs: its id, attempt and agent pid."""
    file_id = upload(jsonl(chat_lines(16))).json()["id"]
    job_id = client.post(
        "/v1/fine_tuning/jobs",
        {"model": "partage/tiny-llama", "training_file": file_id},
        format="json",
    ).json()["id"]
    attempt = wait_for(
        lambda: JobAttempt.objects.filter(job_id=job_id).exclude(handle="").first(),
        timeout=60,
        what="the agent to be launched",
    )
    return job_id, attempt, int(attempt.handle.partition(":")[0])


def test_cancel_before_the_trainer_starts_still_ends_the_attempt(
    client_a: Any, upload: Any, live_callbacks: str, eager_celery: Any
) -> None:
    """A stop that reaches the agent while it prepares (before any trainer exists) is honoured
    and reported: the job ends cancelled instead of waiting on an agent that died silently."""
    job_id, attempt, pid = _job_launched(client_a, upload)
    wait_for(
        lambda: catches_signal(pid, signal.SIGTERM),
        timeout=60,
        what="the agent's SIGTERM handler",
    )
    assert client_a.post(f"/v1/fine_tuning/jobs/{job_id}/cancel").status_code == 200
    job = wait_for(
        lambda: (j := FineTuningJob.objects.get(pk=job_id)).status == "cancelled" and j,
        timeout=90,
        what="the job to be cancelled",
    )
    attempt = job.attempts.get()
    assert attempt.status == JobAttempt.Status.CANCELLED and attempt.ended_at is not None
    assert attempt.exit_code == 4, attempt.logs[-2000:]
    assert job.result_file_id is None and not job.progress.get("step")


def test_a_stop_after_the_adapter_is_stored_is_still_a_success(
    client_a: Any, upload: Any, live_callbacks: str, eager_celery: Any
) -> None:
    """An eviction (SIGTERM to the agent alone, as the kubelet sends it) that lands once the
    adapter is stored, while the trainer shuts down, does not turn the finished attempt into
    a preemption: it ends succeeded with exit code 0, and the job keeps its adapter."""
    job_id, attempt, pid = _job_launched(client_a, upload)
    wait_for(
        lambda: FineTuningJob.objects.filter(pk=job_id, result_file__isnull=False).exists(),
        timeout=180,
        interval=0.02,
        what="the adapter to be stored",
    )
    os.kill(pid, signal.SIGTERM)  # still running: it reports its exit only after this
    attempt = wait_for(
        lambda: (a := JobAttempt.objects.get(pk=attempt.pk)).ended_at is not None and a,
        timeout=90,
        what="the attempt to end",
    )
    assert attempt.exit_code == 0, attempt.logs[-2000:]
    assert attempt.status == JobAttempt.Status.SUCCEEDED
    job = FineTuningJob.objects.get(pk=job_id)
    assert job.status == "succeeded" and job.result_file_id is not None


def test_the_log_shows_while_the_trainer_runs(
    client_a: Any, upload: Any, live_callbacks: str, eager_celery: Any, monkeypatch: Any
) -> None:
    """Issue 18: logs while the job runs, not only at the end: the agent sends the trainer's
    log as it grows, and the job page's live data carries it, cleaned."""
    monkeypatch.setenv("PARTAGE_LOG_EVERY_SECONDS", "0.5")
    job_id = long_job(client_a, upload)
    attempt = wait_for(
        lambda: JobAttempt.objects.filter(
            job_id=job_id, ended_at__isnull=True, logs__contains="steps on"
        ).first(),
        timeout=120,
        what="the running attempt's log to say that training began",
    )
    job = FineTuningJob.objects.get(pk=job_id)
    assert job.status in {"starting", "running"}, job.status  # training, far from its end
    assert "loading the base model partage/tiny-llama" in attempt.logs  # the raw log

    from django.test import Client

    from marketplace.accounts.models import User

    page = Client()
    page.force_login(User.objects.get(username="alice"))
    live = page.get(f"/jobs/{job_id}/live/").json()
    assert live["status"] in {"starting", "running"}, live
    assert "loading the base model" in live["log"] and "steps on" in live["log"], live["log"]
    assert "%|" not in live["log"]  # cleaned: no progress bars
    assert 'id="live-log"' in page.get(f"/jobs/{job_id}/").content.decode()
    assert client_a.post(f"/v1/fine_tuning/jobs/{job_id}/cancel").status_code == 200
    wait_for(
        lambda: FineTuningJob.objects.get(pk=job_id).status == "cancelled",
        timeout=60,
        what="the job to be cancelled",
    )
