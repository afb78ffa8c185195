"""Fair share over a simulated period (time-machine): two organizations with equal weights that
flood the queue each get within 10% of half the capacity; a weight-2 organization gets about
twice the share of a weight-1 one."""

from __future__ import annotations

import random
from collections import defaultdict
from datetime import UTC, datetime, timedelta

import pytest
import time_machine
from django.db import connection

from marketplace.finetuning.models import FineTuningJob
from marketplace.quotas import services as quotas
from tests.quotas.conftest import (
    flavor_make,
    job_finish,
    job_start,
    job_submit,
    org_make,
    plan_make,
    pool_make,
)
from tests.quotas.invariants import assert_invariants

pytestmark = [pytest.mark.pg, pytest.mark.django_db]

START = datetime(2026, 11, 9, 8, 0, tzinfo=UTC)
STEP = timedelta(minutes=10)


def simulate(weights: tuple[int, int], *, hours: int = 8, capacity: int = 12) -> list[float]:
    """Both organizations keep 20 jobs queued; returns each one's share of used GPU-time."""
    rng = random.Random(7)
    with time_machine.travel(START, tick=False) as clock:
        flavor = flavor_make()
        pool_make(flavor=flavor, gpus=capacity)
        plan_make(flavor, guaranteed=0, max_gpus=capacity, concurrent=100, max_job_hours="2")
        orgs = [org_make() for _ in weights]
        for org, weight in zip(orgs, weights, strict=True):
            quotas.org_plan_set(organization=org, plan=None, weight=weight)
        ends: dict[str, datetime] = {}
        gpus_of: dict[str, tuple[int, int]] = {}
        used: defaultdict[int, int] = defaultdict(int)
        now = START
        for _ in range(int(hours * 60 / 10)):
            for index, org in enumerate(orgs):
                queued = FineTuningJob.objects.filter(organization=org, status="queued").count()
                for _ in range(20 - queued):
                    job = job_submit(org, gpus=rng.choice([1, 2]))
                    gpus_of[job.id] = (index, job.gpu_count)
            for job_id in quotas.admission_pass():
                job_start(job_id)
                ends[job_id] = now + timedelta(minutes=rng.choice([20, 30, 40, 50]))
            assert_invariants()
            clock.shift(STEP)
            now += STEP
            for job_id, end in list(ends.items()):
                index, gpus = gpus_of[job_id]
                used[index] += gpus * int((min(end, now) - (now - STEP)).total_seconds() // 60)
                if end <= now:
                    job_finish(job_id)
                    del ends[job_id]
        total = sum(used.values())
        assert total >= 0.8 * capacity * hours * 60, (total, "the pool was not kept busy")
        return [used[i] / total for i in range(len(weights))]


@pytest.fixture(autouse=True)
def _postgres_only() -> None:
    if connection.vendor != "postgresql":
        pytest.skip("runs in the PostgreSQL pass")


def test_equal_weights_share_capacity_evenly() -> None:
    shares = simulate((1, 1))
    for share in shares:
        assert abs(share - 0.5) <= 0.05, shares


def test_higher_weight_gets_proportionally_more() -> None:
    shares = simulate((2, 1))
    assert abs(shares[0] - 2 / 3) <= 0.1 * 2 / 3, shares
    assert abs(shares[1] - 1 / 3) <= 0.1 * 1 / 3, shares
