"""Concurrent placements on PostgreSQL: many admissions racing for the last GPUs of a pool never
place more GPUs than the pool has (placement_commit re-checks under the pool lock)."""

from __future__ import annotations

import threading

import pytest
from django.db import connection, transaction
from django.db.models import Sum

from marketplace.accounts.services import organization_create
from marketplace.capacity import services
from marketplace.capacity.models import Placement
from marketplace.capacity.placement import placement_choose
from marketplace.finetuning.models import FineTuningJob, JobStatus
from tests.capacity import factories

pytestmark = [pytest.mark.pg, pytest.mark.django_db(transaction=True)]


def test_racing_admissions_never_overfill_a_pool() -> None:
    assert connection.vendor == "postgresql"
    pool = factories.pool(gpus=8)
    orgs = [organization_create(name=f"Startup {n}", slug=f"startup-{n}") for n in range(4)]
    jobs = [factories.job(orgs[n % 4], gpus=2) for n in range(12)]
    # Every client decides before anyone commits: all see 8 free GPUs.
    decisions = {job.id: placement_choose(job=job) for job in jobs}
    barrier = threading.Barrier(len(jobs))
    outcomes: dict[str, str] = {}
    errors: list[BaseException] = []

    def admit(job: FineTuningJob) -> None:
        try:
            barrier.wait()
            with transaction.atomic():
                services.placement_commit(job=job, decision=decisions[job.id])
                # What job_admit does in the same transaction: the job now holds its GPUs.
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
    assert sorted(outcomes.values()).count("placed") == 4
    placed = Placement.objects.filter(pool=pool, job__status=JobStatus.ADMITTED)
    assert placed.aggregate(total=Sum("gpu_count"))["total"] == 8
    refused = [job_id for job_id, result in outcomes.items() if result == "refused"]
    assert not Placement.objects.filter(job_id__in=refused).exists()
