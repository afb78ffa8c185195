"""Quotas test helpers: flavors, pools, plans, jobs, and driving attempts through the real
finetuning services (what the executor path calls), without starting trainers."""

from __future__ import annotations

import io
import itertools
import uuid
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from marketplace.accounts.models import Organization
from marketplace.accounts.services import organization_create
from marketplace.billing.services import topup_record
from marketplace.capacity.models import Booking, GpuFlavor, Pool
from marketplace.finetuning import services as ft
from marketplace.finetuning.models import File, FineTuningJob, JobAttempt
from marketplace.quotas import services as quotas
from marketplace.quotas.models import Plan
from tests.capacity import factories as capacity_factories
from tests.conftest import chat_lines, jsonl
from workers.executors.base import EXIT_PREEMPTED, Phase

_counter = itertools.count(1)


@pytest.fixture(autouse=True)
def _private_broker(tmp_path: Path, settings: Any) -> None:
    """Tasks enqueued on commit (admission, dispatch, stop) land in a private folder: no worker
    runs in these tests; they drive the services directly."""
    from workers.celery import app

    if settings.REDIS_URL:
        return
    folder = tmp_path / "broker"
    (folder / "queue").mkdir(parents=True)
    (folder / "processed").mkdir(parents=True)
    options = {
        "data_folder_in": str(folder / "queue"),
        "data_folder_out": str(folder / "queue"),
        "processed_folder": str(folder / "processed"),
        "store_processed": False,
    }
    settings.CELERY_BROKER_TRANSPORT_OPTIONS = options
    app.conf.broker_transport_options = options


def flavor_make(slug: str = "h100-80g", model_name: str = "NVIDIA H100") -> GpuFlavor:
    return capacity_factories.flavor(slug, model_name=model_name)


def pool_make(
    *,
    flavor: GpuFlavor,
    gpus: int,
    country: str = "FR",
    region: str = "eu-west-paris",
    price: str = "2.00",
) -> Pool:
    """An approved, active pool with a cluster, through capacity's own services."""
    return capacity_factories.pool(
        gpus=gpus, price=price, country=country, region=region, flavor_slug=flavor.slug
    )


def org_make(name: str | None = None, *, funds: str = "1000000") -> Organization:
    """A startup with prepaid funds (billing's hold is part of admission)."""
    n = next(_counter)
    slug = name or f"startup-{n}-{uuid.uuid4().hex[:6]}"
    org = organization_create(name=slug, slug=slug, country="FR")
    if Decimal(funds):
        topup_record(organization=org, amount=Decimal(funds), reference=f"test-{slug}")
    return org


def plan_make(
    flavor: GpuFlavor,
    *,
    guaranteed: int = 0,
    max_gpus: int = 100,
    budget: str | None = None,
    max_job_hours: str = "24",
    concurrent: int = 100,
    default: bool = True,
    slug: str | None = None,
) -> Plan:
    plan = quotas.plan_create(
        slug=slug or f"plan-{next(_counter)}", name="Plan", is_default=default
    )
    quotas.plan_flavor_quota_set(
        plan=plan,
        flavor=flavor,
        values={
            "guaranteed_gpus": guaranteed,
            "max_gpus": max_gpus,
            "monthly_gpu_hours": budget,
            "max_job_hours": max_job_hours,
            "max_concurrent_jobs": concurrent,
        },
    )
    return plan


_files: dict[int, str] = {}


def training_file(org: Organization) -> str:
    if org.pk not in _files or not File.objects.filter(pk=_files[org.pk]).exists():
        _files[org.pk] = ft.file_create(
            organization=org, stream=io.BytesIO(jsonl(chat_lines(2))), filename="t.jsonl"
        ).id
    return _files[org.pk]


def job_submit(
    org: Organization,
    *,
    gpus: int = 1,
    flavor: str = "h100-80g",
    priority: int = 0,
    residency: dict[str, Any] | None = None,
) -> FineTuningJob:
    return ft.job_create(
        organization=org,
        model="partage/tiny-llama",
        training_file=training_file(org),
        gpu_flavor=flavor,
        gpu_count=gpus,
        priority=priority,
        residency=residency,
    )


def job_start(job_id: str) -> JobAttempt:
    """What dispatch and the trainer's first report do: admitted → starting → running."""
    attempt = ft.attempt_for_dispatch(job_id=job_id)
    assert attempt is not None, f"{job_id} is not admitted"
    ft.attempt_launched(attempt=attempt, handle=f"pid-{attempt.pk}")
    ft.attempt_training_started(attempt=attempt)
    return attempt


def live_attempt(job_id: str) -> JobAttempt:
    job = FineTuningJob.objects.get(pk=job_id)
    return JobAttempt.objects.get(job_id=job_id, number=job.attempt_count)


def job_finish(job_id: str) -> FineTuningJob:
    """The trainer delivers its adapter, then its process exits 0."""
    attempt = live_attempt(job_id)
    ft.adapter_store(
        job_id=job_id,
        attempt_number=attempt.number,
        archive=io.BytesIO(b"adapter"),
        manifest={"tokens_trained": 10},
    )
    return ft.attempt_ended(attempt_id=attempt.pk, phase=Phase.SUCCEEDED, exit_code=0)


def job_crash(job_id: str) -> FineTuningJob:
    attempt = live_attempt(job_id)
    return ft.attempt_ended(
        attempt_id=attempt.pk, phase=Phase.FAILED, exit_code=1, reason="trainer crashed"
    )


def job_lose(job_id: str) -> FineTuningJob:
    attempt = live_attempt(job_id)
    return ft.attempt_ended(attempt_id=attempt.pk, phase=Phase.MISSING, reason="pod vanished")


def job_preempted_exit(job_id: str) -> FineTuningJob:
    """After job_preempt: the trainer checkpoints on SIGTERM and exits 4."""
    attempt = live_attempt(job_id)
    return ft.attempt_ended(
        attempt_id=attempt.pk, phase=Phase.DISRUPTED, exit_code=EXIT_PREEMPTED, reason="preempted"
    )


def job_cancel(job_id: str) -> FineTuningJob:
    """Cancel through the API service; a live trainer then exits on SIGTERM."""
    job = FineTuningJob.objects.get(pk=job_id)
    job = ft.job_cancel(organization=job.organization, job_id=job_id)
    if job.status == "cancelling":
        attempt = JobAttempt.objects.filter(job_id=job_id, ended_at__isnull=True).first()
        if attempt is not None:
            job = ft.attempt_ended(attempt_id=attempt.pk, phase=Phase.FAILED, exit_code=143)
        else:
            from workers.dispatch import job_stop

            job_stop(job_id=job_id)
            job.refresh_from_db()
    return job


def booking_make(org: Organization, pool: Pool, gpus: int, *, start: Any, end: Any) -> Booking:
    return Booking.objects.create(
        public_id=f"bk-{uuid.uuid4().hex[:12]}",
        organization=org,
        pool=pool,
        flavor=pool.flavor,
        gpu_count=gpus,
        start=start,
        end=end,
        price_per_gpu_hour=pool.price_per_gpu_hour,
        amount=Decimal("1.00"),
        cancellation_policy="flexible",
    )


@pytest.fixture
def h100(db: None) -> GpuFlavor:
    return flavor_make()


Factory = Callable[..., Any]
