"""Fault fixtures: a private `redis-server` on a free port that a test may stop and restart.

The fault tests break the broker, the web tier or a process on purpose. They never touch the
shared Redis of the test run: each gets its own server, with an append-only file so that a
restart keeps the queue, as the production broker does (k8s/README: Redis with AOF).
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import threading
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
    _broker_switch(server.url)
    try:
        yield server
    finally:
        _broker_switch(saved)
        server.stop()


def _broker_switch(url: str) -> None:
    """Publish to `url` from now on, dropping the pooled connections and producers of the
    previous broker (app.close() keeps the producer pool, bound to the old connection)."""
    from workers.celery import app

    app.conf.broker_url = url
    app.close()
    app.amqp._producer_pool = None


@pytest.fixture
def celery_worker_process(
    private_redis: PrivateRedis, celery_worker_process: Callable[..., Any]
) -> Callable[..., Any]:
    """The worker of tests/conftest.py, on this test's private Redis."""
    return celery_worker_process


class WebGate:
    """The web tier as the trainers reach it: a TCP forwarder to the live server on a port of
    its own. `down()` is the web tier going away (new connections refused, open ones cut, as
    when gunicorn stops); `up()` brings it back on the same address."""

    def __init__(self, target_port: int) -> None:
        self.target = ("127.0.0.1", target_port)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.listener: socket.socket | None = None
        self.connections: set[socket.socket] = set()
        self.lock = threading.Lock()

    def up(self) -> None:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        self.listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def down(self) -> None:
        listener, self.listener = self.listener, None
        if listener is not None:
            # shutdown() wakes the thread blocked in accept(); close() alone would leave the
            # port accepting until then.
            with contextlib.suppress(OSError):
                listener.shutdown(socket.SHUT_RDWR)
            listener.close()
        with self.lock:
            connections, self.connections = self.connections, set()
        for conn in connections:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
            conn.close()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return  # closed: the web tier is down
            try:
                server = socket.create_connection(self.target, timeout=10)
            except OSError:
                client.close()
                continue
            with self.lock:
                self.connections |= {client, server}
            for a, b in ((client, server), (server, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for conn in (source, sink):
                with contextlib.suppress(OSError):
                    conn.shutdown(socket.SHUT_RDWR)


@pytest.fixture
def web_gate(live_server: Any) -> Iterator[WebGate]:
    gate = WebGate(int(live_server.url.rsplit(":", 1)[1]))
    gate.up()
    try:
        yield gate
    finally:
        gate.down()


@pytest.fixture
def live_callbacks(live_server: Any, settings: Any, web_gate: WebGate) -> str:
    """Trainers call back into the live server through the gate, which a test may close."""
    settings.PARTAGE_INTERNAL_URL = web_gate.url
    return web_gate.url


def submit(client: Any, upload: Any, *, lines: int = 64, epochs: int = 6) -> str:
    from tests.conftest import chat_lines, jsonl

    file_id = upload(jsonl(chat_lines(lines))).json()["id"]
    response = client.post(
        "/v1/fine_tuning/jobs",
        {
            "model": "partage/tiny-llama",
            "training_file": file_id,
            "hyperparameters": {"n_epochs": epochs, "batch_size": 2},
        },
        format="json",
    )
    assert response.status_code == 200, response.content
    return str(response.json()["id"])


def finished(job_id: str, *, timeout: float) -> Any:
    """The job once it ended and every attempt of it too (the usage record comes with the
    attempt's end, which the agent reports after the adapter)."""
    from marketplace.finetuning.models import FineTuningJob
    from tests.conftest import wait_for

    def ended() -> Any:
        job = FineTuningJob.objects.get(pk=job_id)
        if job.status not in {"succeeded", "failed", "cancelled"}:
            return None
        return None if job.attempts.filter(ended_at__isnull=True).exists() else job

    return wait_for(ended, timeout=timeout, interval=1, what=f"job {job_id} to finish")


def explain(job: Any) -> list[str]:
    return [
        f"{a.number} {a.status} {a.exit_code} {a.reason}: {a.logs[-1500:]}"
        for a in job.attempts.all()
    ]


def assert_succeeded_once_charged_nothing_lost(job: Any, work_dir: Path) -> None:
    """Succeeded with its adapter; each attempt billed exactly once (replaying the settlement
    changes nothing); no report of any attempt left undelivered or refused."""
    from marketplace.billing.models import Charge, JournalEntry, UsageRecord
    from marketplace.billing.services import job_settle

    assert job.status == "succeeded", explain(job)
    assert job.result_file_id and job.manifest, explain(job)
    attempts = list(job.attempts.all())
    records = list(UsageRecord.objects.filter(job_id=job.pk))
    assert sorted(r.attempt_id for r in records) == sorted(a.pk for a in attempts)
    for record in records:
        attempt = next(a for a in attempts if a.pk == record.attempt_id)
        assert record.gpu_seconds == attempt.gpu_seconds
    before = (
        Charge.objects.filter(job=job).count(),
        JournalEntry.objects.filter(job_id=job.pk).count(),
    )
    job_settle(job=job)
    assert (
        Charge.objects.filter(job=job).count(),
        JournalEntry.objects.filter(job_id=job.pk).count(),
    ) == before
    for attempt in attempts:
        spool = work_dir / attempt.name / "spool"
        assert not list(spool.glob("[0-9]*.json")), f"undelivered reports in {spool}"
        assert not (spool / "rejected").exists(), f"refused reports in {spool}"
