"""Fault: the web tier is down for 6 minutes while a job trains, longer than the 300 s after
which the agent used to give up (exit 1, `platform_error`, the finished adapter thrown away).

The outage starts once the job runs and overlaps the rest of its training: the trainer
finishes while Partage is unreachable, its adapter waits in the agent's spool, and is
delivered once the web tier is back. About 9 minutes of wall time, most of it the outage.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from marketplace.finetuning.models import FineTuningJob, JobEvent
from tests.conftest import wait_for
from tests.faults.conftest import (
    WebGate,
    assert_succeeded_once_charged_nothing_lost,
    explain,
    finished,
    submit,
)

pytestmark = [pytest.mark.pg, pytest.mark.slow]

OUTAGE_SECONDS = 6 * 60


def _spooled(spool: Path, kind: str) -> bool:
    return any(spool.glob(f"[0-9]*-{kind}.json"))


def test_web_down_six_minutes_while_the_job_trains(
    client_a: Any, upload: Any, celery_worker_process: Any, web_gate: WebGate, settings: Any
) -> None:
    celery_worker_process()
    # 96 steps: the outage starts near the first of them, well before the end even on a fast
    # machine (one trained 80 steps in under 6 s).
    job_id = submit(client_a, upload, lines=32, epochs=6)
    wait_for(
        lambda: JobEvent.objects.filter(job_id=job_id, type="metrics").exists(),
        timeout=420,
        interval=0.2,
        what="the first metrics from the trainer",
    )
    attempt = FineTuningJob.objects.get(pk=job_id).attempts.get(number=1)
    spool = Path(settings.PARTAGE_WORK_DIR) / attempt.name / "spool"

    web_gate.down()
    down_at = time.monotonic()
    assert (
        not _spooled(spool, "adapter")
        and not FineTuningJob.objects.filter(
            pk=job_id, status__in=["finalizing", "succeeded"]
        ).exists()
    ), "the trainer finished before the outage began: give the test's job more steps"
    wait_for(
        lambda: _spooled(spool, "adapter"),
        timeout=OUTAGE_SECONDS - 30,
        interval=1,
        what="the trainer to finish during the outage (its adapter spooled)",
    )
    time.sleep(max(OUTAGE_SECONDS - (time.monotonic() - down_at), 0))
    job = FineTuningJob.objects.get(pk=job_id)
    assert job.status == "running", explain(job)  # nothing was given up meanwhile
    assert _spooled(spool, "adapter") and _spooled(spool, "exit")

    web_gate.up()
    job = finished(job_id, timeout=300)
    assert_succeeded_once_charged_nothing_lost(job, Path(settings.PARTAGE_WORK_DIR))
    assert job.attempts.count() == 1, explain(job)
    assert time.monotonic() - down_at >= OUTAGE_SECONDS
