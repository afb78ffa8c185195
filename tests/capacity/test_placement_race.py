"""Concurrent placements on PostgreSQL: many admissions racing for the last GPUs of a pool never
place more GPUs than the pool has (placement_commit re-checks under the pool lock), and never
take the GPUs of another organization's active booking."""

from __future__ import annotations

import threading
from datetime import timedelta

import pytest
from django.db import connection, transaction
from django.db.models import Sum
from django.utils import timezone

from marketplace.accounts.services import organization_create
from marketplace.capacity import services
from marketplace.capacity.models import Placement
from marketplace.capacity.placement import PlacementDecision, placement_choose
from marketplace.finetuning.models import FineTuningJob, JobStatus
from tests.capacity import factories

pytestmark = [pytest.mark.pg, pytest.mark.django_db(transaction=True)]


def race(jobs: list[FineTuningJob], decisions: dict[str, PlacementDecision]) -> dict[str, str]:
    """Commit every decision at once, each admission on its own connection, as the admission
    pass would: placement_commit, then the job holds its GPUs, in one transaction."""
    barrier = threading.Barrier(len(jobs))
    outcomes: dict[str, str] = {}
    errors: list[BaseException] = []

    def admit(job: FineTuningJob) -> None:
        try:
            barrier.wait()
            with transaction.atomic():
                services.placement_commit(job=job, decision=decisions[job.id])
                FineTuningJob.objects.filter(pk=job.pk).update(status=JobStatus.ADMITTED)
            outcomes[job.id] = "placed"
        except services.CapacityUnavailable:
            outcomes[job.id] = "refused"
        except BaseException as e:
            errors.append(e)
        finally:
            connection.close()

    threads = [threading.Thread(target=admit, args=(job,)) for job in jobs]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not errors, errors[0]
    assert len(outcomes) == len(jobs)
    return outcomes


def test_racing_admissions_never_overfill_a_pool() -> None:
    assert connection.vendor == "postgresql"
    pool = factories.pool(gpus=8)
    orgs = [organization_create(name=f"Startup {n}", slug=f"startup-{n}") for n in range(4)]
    jobs = [factories.job(orgs[n % 4], gpus=2) for n in range(12)]
    # Every client decides before anyone commits: all see 8 free GPUs.
    decisions = {job.id: placement_choose(job=job) for job in jobs}
    outcomes = race(jobs, decisions)
    assert sorted(outcomes.values()).count("placed") == 4
    placed = Placement.objects.filter(pool=pool, job__status=JobStatus.ADMITTED)
    assert placed.aggregate(total=Sum("gpu_count"))["total"] == 8
    refused = [job_id for job_id, result in outcomes.items() if result == "refused"]
    assert not Placement.objects.filter(job_id__in=refused).exists()


def test_racing_on_demand_jobs_never_take_another_orgs_booked_gpus() -> None:
    """Done when (c) under contention: 6 of 8 GPUs are booked by one startup for the window and
    not yet used; ten 1-GPU on-demand jobs of other organizations race for the pool. Exactly the
    2 unbooked GPUs go on demand; the booker's 6-GPU job then still gets its booked GPUs."""
    assert connection.vendor == "postgresql"
    pool = factories.pool(gpus=8)
    booker = factories.fund(organization_create(name="Booker", slug="booker"))
    others = [organization_create(name=f"Other {n}", slug=f"other-{n}") for n in range(5)]
    start = timezone.now()
    booking = services.booking_create(
        organization=booker,
        flavor="h100-80g",
        gpu_count=6,
        start=start,
        end=start + timedelta(hours=2),
    )
    on_demand = [factories.job(others[n % 5], gpus=1) for n in range(10)]
    # Each decides before anyone commits, as concurrent admissions would.
    decisions = {job.id: placement_choose(job=job) for job in on_demand}
    assert all(decisions[job.id].booking is None for job in on_demand)

    outcomes = race(on_demand, decisions)

    assert list(outcomes.values()).count("placed") == 2
    placed = Placement.objects.filter(pool=pool, job__status=JobStatus.ADMITTED)
    assert placed.aggregate(total=Sum("gpu_count"))["total"] == 2
    mine = factories.job(booker, gpus=6)
    decision = placement_choose(job=mine)
    assert decision.booking == booking
    assert race([mine], {mine.id: decision}) == {mine.id: "placed"}
    assert placed.filter(booking=booking).get().job_id == mine.id
    assert placed.aggregate(total=Sum("gpu_count"))["total"] == 8
