"""A trainer that dies on its own (the OOM killer, a stray SIGKILL) is retried from its latest
checkpoint like one killed with its pod, and billed by the failure rules (REFERENCE §6)."""

from __future__ import annotations

import signal
from datetime import timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

from marketplace.billing import services as billing
from marketplace.finetuning import services as jobs
from marketplace.finetuning.models import JobEvent
from tests.billing.conftest import admit, job_new, start, succeed, topup
from workers import agent
from workers.protocol import EXIT_KILLED, EXIT_OK, EXIT_OUT_OF_MEMORY, EXIT_PREEMPTED


def test_a_trainer_killed_alone_is_requeued_then_succeeds(
    org_a: Any, pool: Any, clock: Any
) -> None:
    topup(org_a, "50.00")
    job = job_new(org_a)
    admit(job, pool)
    attempt = start(job)
    clock.shift(timedelta(seconds=300))
    jobs.attempt_exit_report(
        job_id=job.id, attempt_number=attempt.number, exit_code=EXIT_KILLED, logs=""
    )
    job.refresh_from_db()
    assert job.status == "queued", job.error
    assert JobEvent.objects.filter(job=job, message__contains="the trainer was killed").exists()
    admit(job, pool)
    second = start(job)
    clock.shift(timedelta(seconds=300))
    succeed(job, second)
    job.refresh_from_db()
    assert job.status == "succeeded" and second.number == 2


def test_out_of_memory_tells_what_to_change_and_costs_nothing_once_retries_run_out(
    org_a: Any, pool: Any, provider_org: Any, clock: Any
) -> None:
    topup(org_a, "50.00")
    job = job_new(org_a)
    for number in range(1, jobs.MAX_ATTEMPTS + 1):
        admit(job, pool)
        attempt = start(job)
        clock.shift(timedelta(seconds=120))
        jobs.attempt_exit_report(
            job_id=job.id, attempt_number=attempt.number, exit_code=EXIT_OUT_OF_MEMORY, logs=""
        )
        job.refresh_from_db()
        if number < jobs.MAX_ATTEMPTS:
            assert job.status == "queued"
    assert job.status == "failed"
    assert job.failure_class == "platform_error"
    assert job.error["code"] == "out_of_memory"
    assert "batch_size" in job.error["message"] and "max_seq_length" in job.error["message"]
    advice = JobEvent.objects.filter(job=job, level="warn", message__contains="batch_size")
    assert advice.count() == jobs.MAX_ATTEMPTS
    assert billing.balance_available(organization=org_a) == Decimal("50.00")
    assert billing.provider_payable(provider=provider_org) == 0


def test_agent_tells_the_oom_killer_from_another_kill(tmp_path: Path) -> None:
    events = tmp_path / "memory.events"
    events.write_text("low 0\nhigh 0\nmax 3\noom 1\noom_kill 1\n")
    before = agent.oom_kill_count((events,))
    assert before == 1
    assert agent.trainer_death(-9, before, paths=(events,)) == EXIT_KILLED
    events.write_text("low 0\nhigh 0\nmax 9\noom 2\noom_kill 2\n")
    assert agent.trainer_death(-9, before, paths=(events,)) == EXIT_OUT_OF_MEMORY
    # Without cgroup figures a kill is a kill.
    assert agent.trainer_death(-9, None, paths=(tmp_path / "absent",)) == EXIT_KILLED


def test_a_signal_after_completed_leaves_the_attempt_completed(tmp_path: Path) -> None:
    absent = (tmp_path / "absent",)
    for code in (-signal.SIGKILL, -signal.SIGTERM, -signal.SIGSEGV):
        for stop_requested in (False, True):
            outcome = agent.trainer_outcome(
                code, stop_requested=stop_requested, completed=True, oom_kills_before=0,
                paths=absent,
            )  # fmt: skip
            assert outcome == EXIT_OK, (code, stop_requested)
    # Before `completed`: our own stop preempts, anything else killed it; exit codes stand.
    assert (
        agent.trainer_outcome(
            -signal.SIGTERM, stop_requested=True, completed=False, oom_kills_before=0, paths=absent
        )
        == EXIT_PREEMPTED
    )
    assert (
        agent.trainer_outcome(
            -signal.SIGKILL, stop_requested=True, completed=False, oom_kills_before=0, paths=absent
        )
        == EXIT_KILLED
    )
    assert (
        agent.trainer_outcome(
            -signal.SIGTERM, stop_requested=False, completed=False, oom_kills_before=0, paths=absent
        )
        == EXIT_KILLED
    )
    assert (
        agent.trainer_outcome(
            3, stop_requested=True, completed=True, oom_kills_before=0, paths=absent
        )
        == 3
    )
