"""An organization with something of everything (files, a job with events, a checkpoint and an
adapter, a booking, an invoice, an API key, a webhook endpoint and a delivery), built through
the real services, and markers to look for after an erasure.

acme is a startup owned by alice; bob belongs to org B, untouched; carol is staff.
"""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import time_machine

from marketplace.accounts.models import ApiKey, Membership, Organization, User
from marketplace.accounts.services import api_key_create, membership_set, organization_create
from marketplace.api.webhooks import services as webhooks
from marketplace.billing import services as billing
from marketplace.billing.models import Invoice
from marketplace.capacity.models import Booking, Pool
from marketplace.finetuning import services as ft
from marketplace.finetuning.models import Checkpoint, File, FineTuningJob
from tests.billing.conftest import admit, book, start, topup
from tests.capacity import factories
from tests.conftest import REPO, _worker_env, jsonl
from tests.fakes.adapter import adapter_archive

T0 = datetime(2026, 11, 3, 9, 0, tzinfo=UTC)

# Strings that exist only in acme's content: none may survive its erasure, in any row or byte.
SECRET_TEXT = "ZEBRA-7731 the launch codes of acme"
MARKERS = [
    "ZEBRA-7731",
    "Acme Secret Labs",
    "acme-secret",
    "acme-customers.jsonl",
    "acme-hook",
    "acme-ci-key",
    "acme-model",
    "acme-moonshot",
]


@dataclass
class Acme:
    org: Organization
    owner: User
    key: ApiKey
    key_secret: str
    file: File
    job: FineTuningJob
    checkpoint: Checkpoint
    booking: Booking
    invoice: Invoice
    endpoint_id: str


def acme_lines(count: int = 6) -> bytes:
    return jsonl(
        [
            {
                "messages": [
                    {"role": "user", "content": f"Question {i} about {SECRET_TEXT}?"},
                    {"role": "assistant", "content": f"Answer {i}: {SECRET_TEXT}."},
                ]
            }
            for i in range(count)
        ]
    )


@pytest.fixture
def pool(db: None) -> Pool:
    return factories.pool(factories.provider("gpu-provider"), price="2.50", gpus=16)


@pytest.fixture
def acme(db: None, pool: Pool, settings: Any) -> Acme:
    settings.PARTAGE_WEBHOOK_ALLOW_PRIVATE = True
    with time_machine.travel(T0, tick=False) as clock:
        org = organization_create(name="Acme Secret Labs", slug="acme-secret", country="FR")
        owner = User.objects.create_user(
            "alice", email="alice@acme.example", password="alice-password-123"
        )
        membership_set(organization=org, user=owner, role=Membership.Role.OWNER)
        issued = api_key_create(organization=org, name="acme-ci-key", created_by=owner)
        endpoint = webhooks.webhook_endpoint_create(
            organization=org,
            name="acme",
            url="http://127.0.0.1:9/acme-hook",
            event_types=["fine_tuning.job.succeeded"],
        )
        topup(org, "500.00", ref="acme-topup")
        file = ft.file_create(
            organization=org, stream=io.BytesIO(acme_lines()), filename="acme-customers.jsonl"
        )
        job = ft.job_create(
            organization=org,
            model="partage/tiny-llama",
            training_file=file.id,
            suffix="acme-model",
            metadata={"project": "acme-moonshot"},
            created_by=owner,
        )
        admit(job, pool)
        attempt = start(job)
        ft.job_event_add(job_id=job.id, message=f"trainer log: {SECRET_TEXT}")
        ft.trainer_events_record(
            job_id=job.id,
            attempt_number=attempt.number,
            events=[{"event": "progress", "step": 5, "total_steps": 10, "train_loss": 1.5}],
        )
        checkpoint = ft.checkpoint_store(
            job_id=job.id,
            attempt_number=attempt.number,
            step=5,
            metrics={"train_loss": 1.5},
            archive=io.BytesIO(b"checkpoint bytes " + SECRET_TEXT.encode()),
        )
        clock.shift(timedelta(seconds=600))
        ft.adapter_store(
            job_id=job.id,
            attempt_number=attempt.number,
            archive=adapter_archive(weights=b"weights " + SECRET_TEXT.encode()),
            manifest={"trained_tokens": 10, "eval": {"valid_loss": 1.2}},
        )
        from workers.executors.base import Phase

        ft.attempt_ended(attempt_id=attempt.pk, phase=Phase.SUCCEEDED, exit_code=0)
        booking = book(org, pool, gpus=1, start=T0 + timedelta(days=1), hours=2)
        clock.move_to(datetime(2026, 12, 1, 0, 0, 1, tzinfo=UTC))
        start_, end_ = billing.month_bounds(2026, 11)
        [invoice] = billing.invoices_finalize(
            period_start=start_, period_end=end_, organizations=[org]
        )
    job.refresh_from_db()
    return Acme(
        org=org,
        owner=owner,
        key=issued.api_key,
        key_secret=issued.secret,
        file=file,
        job=job,
        checkpoint=checkpoint,
        booking=booking,
        invoice=invoice,
        endpoint_id=endpoint.id,
    )


LIBFAKETIME = Path("/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1")


@contextmanager
def worker_and_beat_ahead(days: int, tmp_path: Path, settings: Any) -> Iterator[Path]:
    """The real Celery worker with its beat, the privacy sweep every 2 s, its clock `days` ahead
    (libfaketime); yields its log's path."""
    broker = tmp_path / "broker"
    for sub in ("queue", "processed", "control"):
        (broker / sub).mkdir(parents=True)
    env = _worker_env(
        {
            "PARTAGE_ENV": "development",  # the embedded default: a filesystem broker
            "PARTAGE_DATA_DIR": str(tmp_path),
            "PARTAGE_MEDIA_ROOT": str(settings.MEDIA_ROOT),
            "PARTAGE_WORK_DIR": str(settings.PARTAGE_WORK_DIR),
            "DJANGO_SECRET_KEY": settings.SECRET_KEY,
            "PARTAGE_PRIVACY_SWEEP_SECONDS": "2",
            "LD_PRELOAD": str(LIBFAKETIME),
            "FAKETIME": f"+{days}d",
        }
    )
    env.pop("REDIS_URL", None)
    log_path = tmp_path / "worker.log"
    with open(log_path, "ab") as log:
        worker = subprocess.Popen(
            [
                *(sys.executable, "-m", "celery", "-A", "workers.celery", "worker", "--beat"),
                *("--schedule", str(tmp_path / "beat-schedule"), "--pool", "solo"),
                *("--loglevel", "INFO", "--without-gossip", "--without-mingle"),
                "--without-heartbeat",
            ],
            cwd=REPO,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        yield log_path
    finally:
        os.killpg(worker.pid, signal.SIGTERM)
        try:
            worker.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(worker.pid, signal.SIGKILL)
