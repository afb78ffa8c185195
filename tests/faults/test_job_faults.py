"""Faults while a job trains, on PostgreSQL with a private Redis and real worker processes:
each job still succeeds, is charged once, and loses nothing.

- the Redis broker restarts while the job is queued and dispatched;
- the trainer alone is SIGKILLed (the OOM-killer case): it resumes from its checkpoint;
- the Celery worker is SIGKILLed while the trainer runs.
The web tier's outage has its own module (test_web_outage.py).
"""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

import pytest

from marketplace.finetuning.models import Checkpoint, FineTuningJob, JobEvent
from tests.conftest import wait_for
from tests.faults.conftest import (
    PrivateRedis,
    assert_succeeded_once_charged_nothing_lost,
    explain,
    finished,
    submit,
)
from workers.protocol import EXIT_KILLED

pytestmark = [pytest.mark.pg, pytest.mark.slow]


def test_redis_restart_mid_queue(
    client_a: Any, upload: Any, celery_worker_process: Any, private_redis: PrivateRedis,
    settings: Any, tmp_path: Path,
) -> None:  # fmt: skip
    celery_worker_process("--beat", "--schedule", str(tmp_path / "beat-schedule"))
    job_id = submit(client_a, upload, lines=16, epochs=3)
    private_redis.restart(down_seconds=5)  # the admission pass and dispatch are in the queue
    job = finished(job_id, timeout=420)
    assert_succeeded_once_charged_nothing_lost(job, Path(settings.PARTAGE_WORK_DIR))
    assert job.attempts.count() == 1, explain(job)
    assert "Unrecoverable error" not in (tmp_path / "worker.log").read_text(errors="replace")


def _trainer_pid(agent_pid: int) -> int | None:
    """The agent's child `python -m workers.lora`, from /proc."""
    try:
        children = Path(f"/proc/{agent_pid}/task/{agent_pid}/children").read_text().split()
    except OSError:
        return None
    for pid in children:
        try:
            if b"workers.lora" in Path(f"/proc/{pid}/cmdline").read_bytes():
                return int(pid)
        except OSError:
            continue
    return None


def test_trainer_sigkilled_alone_resumes_from_its_checkpoint(
    client_a: Any, upload: Any, celery_worker_process: Any, settings: Any
) -> None:
    celery_worker_process()
    # 160 steps, checkpoints at 50, 100 and 150: the kill lands well before the end even on a
    # fast machine (on one, 80 steps finished before the test's kill, which then proved nothing).
    job_id = submit(client_a, upload, lines=40, epochs=8)
    wait_for(
        lambda: Checkpoint.objects.filter(job_id=job_id).exists(),
        timeout=420,
        interval=0.2,
        what="a first checkpoint",
    )
    first = FineTuningJob.objects.get(pk=job_id).attempts.get(number=1)
    agent_pid = int(first.handle.partition(":")[0])
    trainer = wait_for(lambda: _trainer_pid(agent_pid), timeout=30, what="the trainer's pid")
    os.kill(trainer, signal.SIGSTOP)  # frozen where it is, so that what follows is a real test
    assert not Checkpoint.objects.filter(job_id=job_id, step__gte=150).exists(), (
        "the trainer was near its end before the kill: give the test's job more steps"
    )
    os.kill(trainer, signal.SIGKILL)  # the trainer alone, as the OOM killer does

    job = finished(job_id, timeout=600)
    assert_succeeded_once_charged_nothing_lost(job, Path(settings.PARTAGE_WORK_DIR))
    first.refresh_from_db()
    assert first.exit_code == EXIT_KILLED and first.status == "disrupted", explain(job)
    assert job.attempts.count() == 2, explain(job)
    assert JobEvent.objects.filter(job=job, message__contains="the trainer was killed").exists()
    second = job.attempts.get(number=2)
    assert "resumed from" in second.logs, explain(job)


def test_worker_sigkilled_while_the_trainer_runs(
    client_a: Any, upload: Any, celery_worker_process: Any, settings: Any
) -> None:
    worker = celery_worker_process()
    job_id = submit(client_a, upload, lines=32, epochs=4)
    wait_for(
        lambda: FineTuningJob.objects.get(pk=job_id).status == "running",
        timeout=300,
        what="running",
    )
    os.killpg(worker.pid, signal.SIGKILL)
    worker.wait(timeout=30)
    celery_worker_process()
    job = finished(job_id, timeout=420)
    assert_succeeded_once_charged_nothing_lost(job, Path(settings.PARTAGE_WORK_DIR))
    assert job.attempts.count() == 1, explain(job)
