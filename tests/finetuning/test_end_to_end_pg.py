"""The partner path on PostgreSQL with Redis, through real Celery worker processes."""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

import pytest

from marketplace.finetuning.models import FineTuningJob, JobAttempt
from tests.conftest import chat_lines, jsonl, wait_for
from tests.finetuning.test_end_to_end import run_partner_path

pytestmark = [pytest.mark.pg, pytest.mark.slow]


def test_partner_path_on_postgres_with_redis_worker(
    client_a: Any, upload: Any, celery_worker_process: Any, tmp_path: Path, settings: Any
) -> None:
    assert settings.DATABASES["default"]["ENGINE"].endswith("postgresql")
    assert settings.REDIS_URL, "the PostgreSQL pass runs with REDIS_URL set"
    celery_worker_process()
    job = run_partner_path(client_a, upload, tmp_path, timeout=300)
    assert JobAttempt.objects.filter(job=job).count() == 1


def test_worker_restart_neither_loses_nor_duplicates_the_job(
    client_a: Any, upload: Any, celery_worker_process: Any
) -> None:
    worker = celery_worker_process()
    file_id = upload(jsonl(chat_lines(64))).json()["id"]
    job_id = client_a.post(
        "/v1/fine_tuning/jobs",
        {
            "model": "partage/tiny-llama",
            "training_file": file_id,
            "hyperparameters": {"n_epochs": 6, "batch_size": 2},
        },
        format="json",
    ).json()["id"]
    wait_for(
        lambda: FineTuningJob.objects.get(pk=job_id).status == "running",
        timeout=180,
        what="running",
    )
    os.killpg(worker.pid, signal.SIGKILL)  # the worker dies while the trainer runs
    worker.wait(timeout=30)
    celery_worker_process()
    job = wait_for(
        lambda: (j := FineTuningJob.objects.get(pk=job_id)).status in {"succeeded", "failed"} and j,
        timeout=300,
        what="job to finish after the worker restart",
    )
    assert job.status == "succeeded", [a.logs[-2000:] for a in job.attempts.all()]
    assert JobAttempt.objects.filter(job=job).count() == 1
