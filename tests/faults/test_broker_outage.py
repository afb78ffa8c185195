"""Fault: the Redis broker restarts while the worker holds work for later (a countdown task).

Before the fix the worker died on reconnect (`Unrecoverable error: AttributeError("'NoneType'
object has no attribute 'hostname'")` after "Restoring 1 unacknowledged message(s)"), and
its embedded beat with it: admission and resync stopped for good.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.conftest import wait_for
from tests.faults.conftest import PrivateRedis

pytestmark = [pytest.mark.pg, pytest.mark.slow]


def _log(tmp_path: Path) -> str:
    return (tmp_path / "worker.log").read_text(errors="replace")


def test_worker_and_beat_ride_out_a_redis_restart_holding_a_countdown_task(
    celery_worker_process: Any, private_redis: PrivateRedis, tmp_path: Path
) -> None:
    from workers.tasks import resync

    worker = celery_worker_process(
        "--beat", "--schedule", str(tmp_path / "beat-schedule"), "--pool", "prefork",
        "--concurrency", "2",
    )  # fmt: skip
    wait_for(lambda: "ready." in _log(tmp_path), timeout=90, what="worker ready")
    held = resync.apply_async(countdown=20)
    wait_for(lambda: f"[{held.id}] received" in _log(tmp_path), timeout=60, what="eta received")

    private_redis.restart(down_seconds=5)
    after_outage = len(_log(tmp_path))

    wait_for(
        lambda: f"[{held.id}] succeeded" in _log(tmp_path),
        timeout=120,
        what="the countdown task to run after the outage",
    )
    wait_for(
        lambda: (
            "partage.admission_pass" in _log(tmp_path)[after_outage:]
            and "succeeded" in _log(tmp_path)[after_outage:]
        ),
        timeout=60,
        what="beat's admission pass after the outage",
    )
    log = _log(tmp_path)
    assert worker.poll() is None, log[-5000:]
    assert "Unrecoverable error" not in log, log[-5000:]
    assert log.count(f"[{held.id}] succeeded") == 1, log[-5000:]
