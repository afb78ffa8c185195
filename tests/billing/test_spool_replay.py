"""The resync delivers what an agent produced but could not report (Partage was unreachable
until it gave up, or it died): the adapter is stored, the job succeeds, billed once."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from marketplace.billing.models import UsageRecord
from marketplace.finetuning import services as jobs
from marketplace.finetuning.models import JobEvent
from tests.billing.conftest import admit, job_new, start, topup
from tests.fakes.adapter import adapter_archive
from workers.agent import backoff_delay
from workers.dispatch import spool_replay
from workers.spool import Spool


def _spool_a_finished_attempt(directory: Path, number: int) -> Spool:
    spool = Spool(directory)
    spool.put(
        "events",
        {"attempt": number, "events": [{"event": "log", "message": "step 1 of 1"}]},
    )
    spool.put(
        "adapter",
        {"attempt": str(number), "manifest": json.dumps({"trained_tokens": 12})},
        adapter_archive(),
    )
    spool.put("exit", {"attempt": number, "exit_code": 0, "logs": "trained"})
    return spool


def test_resync_delivers_a_spooled_adapter_once(
    org_a: Any, pool: Any, clock: Any, tmp_path: Path
) -> None:
    topup(org_a, "50.00")
    job = job_new(org_a)
    admit(job, pool)
    attempt = start(job)
    spool = _spool_a_finished_attempt(tmp_path / "spool", attempt.number)
    assert [p.name.split("-", 1)[1] for p in spool.pending()] == [
        "events.json",
        "adapter.json",
        "exit.json",
    ]

    assert spool_replay(attempt=attempt, directory=tmp_path / "spool") == 3
    job.refresh_from_db()
    attempt.refresh_from_db()
    assert job.status == "succeeded" and job.result_file_id
    assert attempt.ended_at is not None and attempt.status == "succeeded"
    assert JobEvent.objects.filter(job=job, message__contains="step 1 of 1").exists()
    assert spool.pending() == [] and not list((tmp_path / "spool").glob("*.tar.gz"))
    assert UsageRecord.objects.filter(job_id=job.pk).count() == 1

    assert spool_replay(attempt=attempt, directory=tmp_path / "spool") == 0  # nothing twice
    assert UsageRecord.objects.filter(job_id=job.pk).count() == 1


def test_a_superseded_attempts_spool_is_set_aside(
    org_a: Any, pool: Any, clock: Any, tmp_path: Path
) -> None:
    topup(org_a, "50.00")
    job = job_new(org_a)
    admit(job, pool)
    first = start(job)
    jobs.attempt_ended(attempt_id=first.pk, phase="missing", reason="node lost")
    admit(job, pool)
    start(job)
    spool = _spool_a_finished_attempt(tmp_path / "spool", first.number)
    assert spool_replay(attempt=first, directory=tmp_path / "spool") == 0
    job.refresh_from_db()
    assert job.status != "succeeded"
    assert spool.pending() == []
    assert len(list((tmp_path / "spool" / "rejected").glob("*.json"))) == 3


def test_backoff_grows_to_its_cap_with_jitter() -> None:
    delays = [backoff_delay(n) for n in range(1, 12)]
    assert 0.25 <= delays[0] <= 0.5
    assert all(15 <= d <= 30 for d in delays[8:])  # capped at 30 s, never below half
    assert len({backoff_delay(8) for _ in range(20)}) > 1  # jittered
    assert max(delays) <= 30
