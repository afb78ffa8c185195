"""A real web tier for the security tests: gunicorn serving marketplace.wsgi on the test database,
as `make run` and the Kubernetes web Deployment do (workers in separate processes, threads)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import REPO, _worker_env


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _wait_listening(port: int, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"gunicorn exited: {log.read_text()[-3000:]}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.2)
    raise AssertionError(f"gunicorn did not listen on {port}: {log.read_text()[-3000:]}")


@pytest.fixture
def gunicorn_server(
    transactional_db: None, settings: Any, tmp_path: Path
) -> Iterator[Callable[..., str]]:
    """Call with extra environment variables to start gunicorn; returns its base URL."""
    processes: list[subprocess.Popen[bytes]] = []
    log_path = tmp_path / "gunicorn.log"

    def start(*, workers: int = 2, threads: int = 4, **extra_env: str) -> str:
        port = _free_port()
        extra = {
            "PARTAGE_ENV": "development",
            "PARTAGE_DATA_DIR": str(tmp_path / "web-data"),
            "PARTAGE_MEDIA_ROOT": str(settings.MEDIA_ROOT),
            "DJANGO_SECRET_KEY": settings.SECRET_KEY,
            **({"REDIS_URL": settings.REDIS_URL} if settings.REDIS_URL else {}),
            **extra_env,
        }
        env = _worker_env(extra)
        env.pop("PARTAGE_TEST_DB_NAME", None)
        log = open(log_path, "ab")  # noqa: SIM115 - closed with the process below
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "gunicorn",
                "marketplace.wsgi:application",
                "--bind",
                f"127.0.0.1:{port}",
                "--workers",
                str(workers),
                "--threads",
                str(threads),
                "--timeout",
                "120",
            ],
            cwd=REPO,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        processes.append(process)
        _wait_listening(port, process, log_path)
        return f"http://127.0.0.1:{port}"

    yield start
    for process in processes:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
    for process in processes:
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)
