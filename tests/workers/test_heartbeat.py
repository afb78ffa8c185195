"""Saying when no worker is alive: heartbeats, /readyz, /metrics and the liveness command."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import wait_for
from workers import health, heartbeat


@pytest.fixture
def heartbeat_store(settings: Any, tmp_path: Path) -> None:
    """A private file cache holds the heartbeats (the embedded default's store)."""
    settings.REDIS_URL = None
    settings.CACHES = {
        "default": {
            "BACKEND": "django.core.cache.backends.filebased.FileBasedCache",
            "LOCATION": str(tmp_path / "cache"),
        }
    }


def _alive_now() -> None:
    heartbeat.heartbeat_record("worker:celery@alpha")
    heartbeat.heartbeat_record("task:partage.admission_pass")


@pytest.mark.django_db
def test_readyz_reports_no_worker_until_one_beats(client: Any, heartbeat_store: None) -> None:
    response = client.get("/readyz")
    assert response.status_code == 503
    assert response.json()["checks"]["workers"] == "error: no heartbeat yet"
    assert response.json()["checks"]["database"] == "ok"

    _alive_now()
    response = client.get("/readyz")
    assert response.status_code == 200, response.json()
    assert response.json()["checks"] == {
        "database": "ok",
        "broker": "ok",
        "workers": "ok",
        "scheduler": "ok",
    }


@pytest.mark.django_db
def test_readyz_reports_a_worker_silent_past_the_max_age(
    client: Any, heartbeat_store: None, settings: Any
) -> None:
    settings.PARTAGE_HEARTBEAT_MAX_AGE_SECONDS = 120
    heartbeat.heartbeat_record("worker:celery@alpha", at=time.time() - 300)
    heartbeat.heartbeat_record("task:partage.admission_pass")
    response = client.get("/readyz")
    assert response.status_code == 503
    assert response.json()["checks"]["workers"].startswith("error: last heartbeat 300 s ago")
    # The web's own readiness probe leaves the workers out (k8s/base/web.yaml).
    assert client.get("/readyz?exclude=workers").status_code == 200
    assert client.get("/readyz?exclude=scheduler").status_code == 503


@pytest.mark.django_db
def test_metrics_count_live_workers_and_heartbeat_ages(
    client: Any, heartbeat_store: None, settings: Any
) -> None:
    settings.PARTAGE_HEARTBEAT_MAX_AGE_SECONDS = 120
    heartbeat.heartbeat_record("worker:celery@alpha")
    heartbeat.heartbeat_record("worker:celery@beta", at=time.time() - 600)
    text = client.get("/metrics").content.decode()
    found = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }
    assert found[("partage_workers_alive", ())] == 1
    assert found[("partage_heartbeat_age_seconds", (("source", "worker:celery@beta"),))] >= 600
    assert found[("partage_heartbeat_age_seconds", (("source", "worker:celery@alpha"),))] < 60


def test_health_command_passes_a_fresh_heartbeat_and_fails_a_stale_one(
    settings: Any, tmp_path: Path, capsys: Any
) -> None:
    settings.PARTAGE_WORKER_HEARTBEAT_FILE = tmp_path / "worker-heartbeat"
    assert health.main(["--max-age", "60"]) == 1
    assert "no heartbeat file" in capsys.readouterr().err

    heartbeat.heartbeat_file_touch(settings.PARTAGE_WORKER_HEARTBEAT_FILE)
    assert health.main(["--max-age", "60"]) == 0

    stale = time.time() - 300
    os.utime(settings.PARTAGE_WORKER_HEARTBEAT_FILE, (stale, stale))
    assert health.main(["--max-age", "60"]) == 1  # the broker (memory://) is up: stuck worker
    assert "last heartbeat 300 s ago" in capsys.readouterr().err


def test_health_command_passes_a_stale_heartbeat_while_the_broker_is_down(
    settings: Any, tmp_path: Path
) -> None:
    from tests.faults.conftest import free_port
    from workers.celery import app

    settings.PARTAGE_WORKER_HEARTBEAT_FILE = tmp_path / "worker-heartbeat"
    heartbeat.heartbeat_file_touch(settings.PARTAGE_WORKER_HEARTBEAT_FILE)
    stale = time.time() - 300
    os.utime(settings.PARTAGE_WORKER_HEARTBEAT_FILE, (stale, stale))
    saved = app.conf.broker_url
    app.conf.broker_url = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there
    try:
        assert health.main(["--max-age", "60"]) == 0
    finally:
        app.conf.broker_url = saved
        app.close()


@pytest.mark.slow
def test_a_real_worker_beats_and_its_probe_fails_once_it_is_killed(
    celery_worker_process: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, settings: Any
) -> None:
    monkeypatch.setenv("PARTAGE_HEARTBEAT_SECONDS", "1")
    beat_file = tmp_path / "worker-heartbeat"
    monkeypatch.setenv("PARTAGE_WORKER_HEARTBEAT_FILE", str(beat_file))
    settings.PARTAGE_WORKER_HEARTBEAT_FILE = beat_file
    worker = celery_worker_process()
    wait_for(beat_file.exists, timeout=90, what="the worker's first heartbeat")
    first = beat_file.stat().st_mtime
    wait_for(lambda: beat_file.stat().st_mtime > first, timeout=30, what="a second heartbeat")
    assert health.main(["--max-age", "5"]) == 0

    os.killpg(worker.pid, signal.SIGKILL)
    worker.wait(timeout=30)
    time.sleep(6)
    assert health.main(["--max-age", "5"]) == 1
