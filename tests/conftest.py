"""Shared fixtures: tenants with role-revealing names, API clients, a live stack with a real worker.

alice owns org A, bob is a member of org B, carol is platform staff.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from django.core import signals
from django.db import close_old_connections, connection
from rest_framework.test import APIClient

from marketplace.accounts.models import Membership, Organization, User
from marketplace.accounts.services import api_key_create, membership_set, organization_create

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def _isolated_storage(settings: Any, tmp_path_factory: pytest.TempPathFactory) -> None:
    """Each test writes media and run directories in its own temporary folders."""
    base = tmp_path_factory.mktemp("partage")
    settings.MEDIA_ROOT = str(base / "media")
    settings.PARTAGE_WORK_DIR = base / "runs"
    settings.PARTAGE_MODEL_CACHE = Path(
        os.environ.get("PARTAGE_TEST_MODEL_CACHE", REPO / "var" / "test-models")
    )


@pytest.fixture
def org_a(db: None) -> Organization:
    return organization_create(name="Org A", slug="org-a", country="FR")


@pytest.fixture
def org_b(db: None) -> Organization:
    return organization_create(name="Org B", slug="org-b", country="DE")


@pytest.fixture
def alice(org_a: Organization) -> User:
    user = User.objects.create_user("alice", email="alice@a.example", password="alice-password-123")
    membership_set(organization=org_a, user=user, role=Membership.Role.OWNER)
    return user


@pytest.fixture
def bob(org_b: Organization) -> User:
    user = User.objects.create_user("bob", email="bob@b.example", password="bob-password-123")
    membership_set(organization=org_b, user=user, role=Membership.Role.MEMBER)
    return user


@pytest.fixture
def carol(db: None) -> User:
    return User.objects.create_user(
        "carol", email="carol@partage.example", password="carol-password-123", is_staff=True
    )


@pytest.fixture
def key_a(org_a: Organization, alice: User) -> str:
    return api_key_create(organization=org_a, name="alice-key", created_by=alice).secret


@pytest.fixture
def key_b(org_b: Organization, bob: User) -> str:
    return api_key_create(organization=org_b, name="bob-key", created_by=bob).secret


def _client(key: str) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {key}")
    return client


@pytest.fixture
def client_a(key_a: str) -> APIClient:
    return _client(key_a)


@pytest.fixture
def client_b(key_b: str) -> APIClient:
    return _client(key_b)


def chat_lines(count: int = 12) -> list[dict[str, Any]]:
    """A small, learnable chat data set: the assistant always answers in the same style."""
    colours = ["red", "blue", "green", "yellow", "purple", "orange"]
    return [
        {
            "messages": [
                {"role": "user", "content": f"What colour is item {i}?"},
                {"role": "assistant", "content": f"Item {i} is {colours[i % len(colours)]}."},
            ]
        }
        for i in range(count)
    ]


def jsonl(rows: list[Any]) -> bytes:
    return ("\n".join(json.dumps(r) for r in rows) + "\n").encode()


@pytest.fixture
def upload(client_a: APIClient) -> Callable[..., Any]:
    """Upload bytes as a training file through the API; returns the response."""
    from django.core.files.uploadedfile import SimpleUploadedFile

    def do(content: bytes, *, client: APIClient = client_a, name: str = "train.jsonl") -> Any:
        return client.post(
            "/v1/files",
            {"file": SimpleUploadedFile(name, content), "purpose": "fine-tune"},
            format="multipart",
        )

    return do


def catches_signal(pid: int, signum: int) -> bool:
    """The process runs a handler of its own for `signum` (its bit in SigCgt, /proc)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    caught = next(line for line in status.splitlines() if line.startswith("SigCgt:"))
    return bool(int(caught.split()[1], 16) & (1 << (signum - 1)))


def wait_for(
    predicate: Callable[[], Any], *, timeout: float, interval: float = 0.5, what: str = ""
) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what or predicate}")


@pytest.fixture
def live_callbacks(live_server: Any, settings: Any) -> str:
    """Trainers call back into this test's live server."""
    settings.PARTAGE_INTERNAL_URL = live_server.url
    return live_server.url


def _worker_env(extra: dict[str, str]) -> dict[str, str]:
    db = connection.settings_dict
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "marketplace.settings", **extra}
    if db["ENGINE"].endswith("postgresql"):
        env["DATABASE_URL"] = (
            f"postgres://{db['USER']}@{db['HOST'] or '127.0.0.1'}:{db['PORT'] or 5432}/{db['NAME']}"
        )
    else:
        env["DATABASE_URL"] = f"sqlite:///{db['NAME']}"
    return env


def _broker_reset(app: Any) -> None:
    """Forget connections to the broker used so far: `app.close()` drops the connection pool,
    but Celery keeps its producer pool, bound to the old broker (an earlier test's folder or
    memory://), and sends would go there instead of to the broker just configured."""
    app.close()
    app.amqp._producer_pool = None


@pytest.fixture
def celery_worker_process(
    transactional_db: None, live_callbacks: str, settings: Any, tmp_path: Path
) -> Iterator[Callable[[], subprocess.Popen[bytes]]]:
    """Start real `celery worker` processes on the test database; stops them afterwards.

    Uses REDIS_URL when the test run has one (PostgreSQL pass), else the filesystem broker in a
    private folder. Call the returned function to start (or restart) a worker; its arguments are
    extra `celery worker` options (e.g. "--beat").
    """
    extra = {
        "PARTAGE_INTERNAL_URL": live_callbacks,
        "PARTAGE_DATA_DIR": str(tmp_path / "worker-data"),
        "PARTAGE_WORK_DIR": str(settings.PARTAGE_WORK_DIR),
        "PARTAGE_MEDIA_ROOT": str(settings.MEDIA_ROOT),
        "PARTAGE_MODEL_CACHE": str(settings.PARTAGE_MODEL_CACHE),
        "PARTAGE_ENV": "test",
        # Job tokens are signed by the worker and checked by the live server: one key for both.
        "DJANGO_SECRET_KEY": settings.SECRET_KEY,
    }
    from workers.celery import app

    saved = (app.conf.broker_url, app.conf.broker_transport_options)
    if settings.REDIS_URL:
        extra["REDIS_URL"] = settings.REDIS_URL
        app.control.purge()  # messages left by earlier tests refer to rows that are gone
        from django.core.cache import cache

        from marketplace.quotas.services import ADMISSION_PENDING_KEY

        cache.delete(ADMISSION_PENDING_KEY)  # its pass was just purged
    else:
        # The worker runs the embedded default: a filesystem broker in this test's folder.
        extra["PARTAGE_DATA_DIR"] = str(tmp_path)
        extra["PARTAGE_ENV"] = "development"
        broker = tmp_path / "broker"
        app.conf.broker_url = "filesystem://"
        app.conf.broker_transport_options = {
            "data_folder_in": str(broker / "queue"),
            "data_folder_out": str(broker / "queue"),
            "processed_folder": str(broker / "processed"),
            "control_folder": str(broker / "control"),
            "store_processed": False,
        }
        for sub in ("queue", "processed", "control"):
            (broker / sub).mkdir(parents=True, exist_ok=True)
        _broker_reset(app)
    processes: list[subprocess.Popen[bytes]] = []
    log = open(tmp_path / "worker.log", "ab")  # noqa: SIM115 - closed at teardown

    def start(*options: str) -> subprocess.Popen[bytes]:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "celery",
                "-A",
                "workers.celery",
                "worker",
                "--pool",
                "solo",
                "--loglevel",
                "INFO",
                "--without-gossip",
                "--without-mingle",
                "--without-heartbeat",
                *options,
            ],
            cwd=REPO,
            env=_worker_env(extra),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        processes.append(process)
        return process

    yield start
    for process in processes:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
    for process in processes:
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
    log.close()
    app.conf.broker_url, app.conf.broker_transport_options = saved
    _broker_reset(app)


@pytest.fixture
def private_broker(tmp_path: Path, settings: Any) -> Iterator[None]:
    """Tasks enqueued on commit land in a private filesystem-broker folder (no worker runs);
    with Redis (the PostgreSQL pass) the test run's own Redis database is used as is."""
    from workers.celery import app

    if settings.REDIS_URL:
        yield
        return
    for sub in ("queue", "processed"):
        (tmp_path / "broker" / sub).mkdir(parents=True)
    options = {
        "data_folder_in": str(tmp_path / "broker" / "queue"),
        "data_folder_out": str(tmp_path / "broker" / "queue"),
        "processed_folder": str(tmp_path / "broker" / "processed"),
        "store_processed": False,
    }
    previous = app.conf.broker_transport_options
    settings.CELERY_BROKER_TRANSPORT_OPTIONS = options
    app.conf.broker_transport_options = options
    try:
        yield
    finally:
        app.conf.broker_transport_options = previous


@pytest.fixture
def wsgi_calls(settings: Any) -> Iterator[None]:
    """Requests through the WSGI app (the schema checks) keep the test's connection open."""
    settings.PARTAGE_API_RATE_LIMIT = 0
    # As Django's test client does: a request must not close the test's connection (inside
    # the test transaction, PostgreSQL's would be closed as "obsolete" after each request).
    signals.request_started.disconnect(close_old_connections)
    signals.request_finished.disconnect(close_old_connections)
    try:
        yield
    finally:
        signals.request_started.connect(close_old_connections)
        signals.request_finished.connect(close_old_connections)
