"""Many concurrent submitters and admission passes at the quota edge (real threads, real
PostgreSQL row locks): no org exceeds its maximum, guarantee, concurrency or budget, and no
pool is over-committed. The REFERENCE §5 invariants are asserted after every run."""

from __future__ import annotations

import random
import threading
from collections.abc import Callable

import pytest
from django.db import connection, connections

from marketplace.finetuning.models import FineTuningJob
from marketplace.quotas import services as quotas
from marketplace.quotas.models import Allocation
from tests.quotas.conftest import (
    flavor_make,
    job_crash,
    job_finish,
    job_start,
    job_submit,
    org_make,
    plan_make,
    pool_make,
    training_file,
)
from tests.quotas.invariants import assert_every_queued_job_explained, assert_invariants

pytestmark = [pytest.mark.pg, pytest.mark.django_db(transaction=True)]


def run_threads(count: int, work: Callable[[int], None]) -> None:
    errors: list[BaseException] = []
    barrier = threading.Barrier(count)

    def target(index: int) -> None:
        try:
            barrier.wait()
            work(index)
        except BaseException as e:
            errors.append(e)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=target, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not errors, "\n".join(str(e) for e in errors)


@pytest.fixture(autouse=True)
def _postgres_only() -> None:
    if connection.vendor != "postgresql":
        pytest.skip("row locks need PostgreSQL")


def test_concurrent_submitters_and_passes_never_exceed_quotas() -> None:
    h100 = flavor_make()
    pool_make(flavor=h100, gpus=8)
    pool_make(flavor=h100, gpus=8)
    # Four orgs may each take 6: 24 wanted, 16 exist; guarantee 3 each; 5 jobs at once.
    plan_make(h100, guaranteed=3, max_gpus=6, concurrent=5, budget="150", max_job_hours="10")
    orgs = [org_make() for _ in range(4)]
    for org in orgs:
        training_file(org)

    def submitter(index: int) -> None:
        rng = random.Random(index)
        for _ in range(6):
            job_submit(orgs[rng.randrange(len(orgs))], gpus=rng.choice([1, 2, 3]))
            quotas.admission_pass()

    run_threads(8, submitter)
    quotas.admission_pass()
    assert_invariants()
    assert_every_queued_job_explained()
    live = Allocation.objects.filter(released_at__isnull=True)
    assert live.count() > 0
    # The edge was reached: someone waits, and either a pool or an org is full.
    assert FineTuningJob.objects.filter(status="queued").exists()


def test_concurrent_passes_with_work_ending_keep_invariants() -> None:
    h100 = flavor_make()
    pool_make(flavor=h100, gpus=6)
    plan_make(h100, guaranteed=2, max_gpus=4, concurrent=3)
    orgs = [org_make() for _ in range(3)]
    for org in orgs:
        for _ in range(8):
            job_submit(org, gpus=random.Random(org.pk).choice([1, 2]))
    lock = threading.Lock()
    started: list[str] = []

    def worker(index: int) -> None:
        rng = random.Random(100 + index)
        for _ in range(10):
            for job_id in quotas.admission_pass():
                job_start(job_id)
                with lock:
                    started.append(job_id)
            with lock:
                victim = started.pop(rng.randrange(len(started))) if started else None
            if victim is not None:
                (job_finish if rng.random() < 0.7 else job_crash)(victim)

    run_threads(4, worker)
    assert_invariants()
    quotas.admission_pass()
    assert_invariants()
    assert_every_queued_job_explained()
    assert FineTuningJob.objects.filter(status__in=["succeeded", "failed"]).count() >= 10


def test_concurrent_passes_without_pools_admit_each_job_once() -> None:
    """Development mode (no pool): passes racing on the same queue each skip what another
    admitted first (one live allocation per job) instead of aborting on the conflict."""
    org = org_make()
    jobs = [job_submit(org, flavor="") for _ in range(24)]
    admitted: list[list[str]] = [[] for _ in range(4)]

    def work(index: int) -> None:
        admitted[index] = quotas.admission_pass()

    run_threads(4, work)
    everyone = [job_id for ids in admitted for job_id in ids]
    assert sorted(everyone) == sorted(j.id for j in jobs)  # each once, none lost to a conflict
    assert Allocation.objects.filter(released_at__isnull=True).count() == len(jobs)
