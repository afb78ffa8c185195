"""A booking's GPUs are really reserved, through the real admission pass (quotas app): during
the window another organization's on-demand job cannot take them; the booker's job can."""

from __future__ import annotations

import io
from datetime import timedelta
from decimal import Decimal

import pytest
import time_machine
from django.db.models import Sum
from django.utils import timezone

from marketplace.accounts.models import Organization
from marketplace.accounts.services import organization_create
from marketplace.billing.services import topup_record
from marketplace.capacity import selectors, services
from marketplace.finetuning import services as ft
from marketplace.finetuning.models import FineTuningJob, JobStatus
from marketplace.quotas import services as quotas
from marketplace.quotas.models import Allocation
from tests.capacity import factories
from tests.capacity.databases import EACH_DATABASE, check_database
from tests.conftest import chat_lines, jsonl
from tests.quotas.conftest import plan_make

# every test here queues tasks on commit: a private broker folder
pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("private_broker")]


def startup(slug: str) -> Organization:
    org = organization_create(name=slug, slug=slug, country="FR")
    topup_record(organization=org, amount=Decimal("100000"), reference=f"test-{slug}")
    return org


def submit(org: Organization, gpus: int) -> FineTuningJob:
    training = ft.file_create(
        organization=org, stream=io.BytesIO(jsonl(chat_lines(2))), filename="t.jsonl"
    )
    return ft.job_create(
        organization=org,
        model="partage/tiny-llama",
        training_file=training.id,
        gpu_flavor="h100-80g",
        gpu_count=gpus,
    )


def status(job: FineTuningJob) -> str:
    job.refresh_from_db()
    return job.status


@EACH_DATABASE
def test_booked_gpus_are_not_taken_by_another_orgs_on_demand_job(database: str) -> None:
    check_database(database)
    flavor = factories.flavor()
    pool = factories.pool(gpus=8, price="2.00")
    plan_make(flavor, max_gpus=16, max_job_hours="2", concurrent=10, slug="everyone")
    booker, other = startup("booker"), startup("other")
    start = timezone.now() + timedelta(minutes=2)
    booking = services.booking_create(
        organization=booker,
        flavor="h100-80g",
        gpu_count=6,
        start=start,
        end=start + timedelta(hours=4),
    )
    with time_machine.travel(start + timedelta(minutes=1), tick=False):
        too_big = submit(other, 4)
        quotas.admission_pass_run()
        assert status(too_big) == JobStatus.QUEUED  # only 2 GPUs are not booked
        fits = submit(other, 2)
        quotas.admission_pass_run()
        assert status(fits) == JobStatus.ADMITTED
        assert status(too_big) == JobStatus.QUEUED
        mine = submit(booker, 6)
        quotas.admission_pass_run()
        assert status(mine) == JobStatus.ADMITTED
        assert Allocation.objects.get(job=mine).booking == booking
        assert mine.placement.booking == booking and mine.placement.pool == pool
        # The choice and its reason are recorded on the job (and its placement row).
        mine.refresh_from_db()
        assert pool.public_id in mine.placement_reason and "booking" in mine.placement_reason
        assert mine.placement.reason == mine.placement_reason
        fits.refresh_from_db()
        assert pool.public_id in fits.placement_reason and "booking" not in fits.placement_reason
        live = Allocation.objects.filter(pool=pool, released_at__isnull=True)
        assert live.aggregate(total=Sum("gpus"))["total"] == 8
        assert selectors.pool_free_gpus(pool) == 0
        assert status(too_big) == JobStatus.QUEUED
        too_big.refresh_from_db()
        assert too_big.pending_reason  # it says why it waits
