"""Borrowed work is preempted (checkpoint, requeue, resume) when a guarantee's owner needs its
GPUs, only after the minimum run time; in-quota and booked work never is."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
import time_machine

from marketplace.finetuning.models import FineTuningJob, JobAttempt
from marketplace.quotas import services as quotas
from marketplace.quotas.models import Allocation
from tests.quotas.conftest import (
    booking_make,
    job_finish,
    job_preempted_exit,
    job_start,
    job_submit,
    org_make,
    plan_make,
    pool_make,
)
from tests.quotas.invariants import assert_invariants

pytestmark = pytest.mark.django_db

T0 = datetime(2026, 11, 10, 9, 0, tzinfo=UTC)


def status(job_id: str) -> str:
    return FineTuningJob.objects.get(pk=job_id).status


def reason(job_id: str) -> str:
    return FineTuningJob.objects.get(pk=job_id).pending_reason


def test_owner_of_guarantee_preempts_borrowed_work_which_resumes(h100, settings) -> None:
    settings.PARTAGE_PREEMPT_MIN_RUN_SECONDS = 600
    with time_machine.travel(T0, tick=False) as clock:
        pool_make(flavor=h100, gpus=4)
        plan_make(h100, guaranteed=0, max_gpus=4)
        owner, borrower = org_make(), org_make()
        quotas.org_quota_override_set(
            organization=owner, flavor=h100, values={"guaranteed_gpus": 4, "max_gpus": 4}
        )
        borrowed = [job_submit(borrower, gpus=2).id for _ in range(2)]
        assert sorted(quotas.admission_pass()) == sorted(borrowed)
        for job_id in borrowed:
            job_start(job_id)
        assert set(Allocation.objects.values_list("kind", flat=True)) == {"borrowed"}

        clock.shift(timedelta(minutes=5))  # before the minimum run time: nobody is preempted
        entitled = job_submit(owner, gpus=4).id
        report = quotas.admission_pass_run()
        assert report.preempted == [] and status(entitled) == "queued"
        assert all(status(j) == "running" for j in borrowed)

        clock.shift(timedelta(minutes=6))
        report = quotas.admission_pass_run()
        assert sorted(report.preempted) == sorted(borrowed)
        assert all(status(j) == "requeueing" for j in borrowed)
        assert reason(entitled).startswith("waiting: stopping 2 borrowed job(s) on pool")
        assert quotas.admission_pass_run().preempted == []  # no double preemption
        assert "being stopped" in reason(entitled)
        assert_invariants()

        for job_id in borrowed:  # SIGTERM: the trainer checkpoints and exits 4
            job_preempted_exit(job_id)
            assert status(job_id) == "queued"
        assert Allocation.objects.filter(released_at__isnull=True).count() == 0
        assert quotas.admission_pass() == [entitled]
        assert Allocation.objects.get(job_id=entitled).kind == "guaranteed"
        assert all(reason(j).startswith("waiting: no free H100") for j in borrowed)

        job_start(entitled)
        clock.shift(timedelta(minutes=30))
        job_finish(entitled)
        assert sorted(quotas.admission_pass()) == sorted(borrowed)  # they resume
        for job_id in borrowed:
            attempt = job_start(job_id)
            assert attempt.number == 2
            assert JobAttempt.objects.get(job_id=job_id, number=1).status == "disrupted"
        assert_invariants()


def test_in_quota_and_booked_work_is_never_preempted(h100, settings) -> None:
    settings.PARTAGE_PREEMPT_MIN_RUN_SECONDS = 0
    with time_machine.travel(T0, tick=False) as clock:
        pool = pool_make(flavor=h100, gpus=4)
        plan_make(h100, guaranteed=2, max_gpus=2)
        booked_org, guaranteed_org, entitled_org = org_make(), org_make(), org_make()
        booking_make(booked_org, pool, 2, start=T0, end=T0 + timedelta(days=1))
        booked = job_submit(booked_org, gpus=2).id
        in_quota = job_submit(guaranteed_org, gpus=2).id
        assert sorted(quotas.admission_pass()) == sorted([booked, in_quota])
        job_start(booked)
        job_start(in_quota)
        clock.shift(timedelta(hours=2))
        waiting = job_submit(entitled_org, gpus=2).id  # within its guarantee, but the pool is full
        report = quotas.admission_pass_run()
        assert report.preempted == []
        assert status(booked) == status(in_quota) == "running"
        assert reason(waiting).startswith("waiting: no free H100")
        assert_invariants()
