"""Fault fixtures: a private `redis-server` on a free port that a test may stop and restart.

The fault tests break the broker, the web tier or a process on purpose. They never touch the
shared Redis of the test run: each gets its own server, with an append-only file so that a
restart keeps the queue, as the production broker does (k8s/README: Redis with AOF).
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PrivateRedis:
    """One redis-server process on 127.0.0.1:<port>, with its data in `directory`."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        binary = shutil.which("redis-server")
        assert binary, "the fault tests need redis-server on PATH"
        self.process = subprocess.Popen(
            [
                binary,
                "--port", str(self.port),
                "--bind", "127.0.0.1",
                "--save", "",
                "--appendonly", "yes",
                "--appendfsync", "always",
                "--dir", str(self.directory),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1) as conn:
                    conn.sendall(b"PING\r\n")
                    if conn.recv(64).startswith(b"+PONG"):
                        return
            except OSError:
                pass
            time.sleep(0.1)
        raise AssertionError(f"redis-server did not start on port {self.port}")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()  # SIGTERM: redis flushes its append-only file, then exits
            self.process.wait(timeout=20)
        self.process = None

    def restart(self, *, down_seconds: float) -> None:
        self.stop()
        time.sleep(down_seconds)
        self.start()


@pytest.fixture
def private_redis(tmp_path: Path, settings: Any) -> Iterator[PrivateRedis]:
    """A private Redis as the broker and cache of this test's web side and workers."""
    from workers.celery import app

    server = PrivateRedis(tmp_path / "redis")
    server.directory.mkdir()
    server.start()
    saved = app.conf.broker_url
    settings.REDIS_URL = server.url
    settings.CELERY_BROKER_URL = server.url
    settings.CACHES = {
        "default": {
            "BACKEND": "django.core.cache.backends.redis.RedisCache",
            "LOCATION": server.url,
            "KEY_PREFIX": "partage",
        }
    }
    app.conf.broker_url = server.url
    app.close()  # drop pooled connections to the shared Redis
    try:
        yield server
    finally:
        app.conf.broker_url = saved
        app.close()
        server.stop()


@pytest.fixture
def celery_worker_process(
    private_redis: PrivateRedis, celery_worker_process: Callable[..., Any]
) -> Callable[..., Any]:
    """The worker of tests/conftest.py, on this test's private Redis."""
    return celery_worker_process
