"""Random interleavings (hypothesis) of submit, admission pass, start, finish, fail, cancel,
lost pod, preemption and quota changes, driving the real services: every REFERENCE §5
invariant holds after every step, and every allocation is released exactly once."""

from __future__ import annotations

from typing import Any

import pytest
from django.db import connection, transaction
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from marketplace.errors import InvalidInput
from marketplace.finetuning import services as ft
from marketplace.finetuning.models import FineTuningJob, JobAttempt
from marketplace.quotas import services as quotas
from marketplace.quotas.models import Allocation
from marketplace.quotas.quota_book import QuotaBook
from tests.quotas.conftest import (
    flavor_make,
    job_cancel,
    job_crash,
    job_finish,
    job_lose,
    job_preempted_exit,
    job_start,
    job_submit,
    org_make,
    plan_make,
    pool_make,
)
from tests.quotas.invariants import assert_every_queued_job_explained, assert_invariants

pytestmark = [pytest.mark.pg, pytest.mark.django_db]

ORGS = 3
op = st.one_of(
    st.tuples(st.just("submit"), st.integers(0, ORGS - 1), st.integers(1, 4), st.integers(0, 1)),
    st.tuples(st.just("pass")),
    st.tuples(
        st.sampled_from(["start", "finish", "fail", "cancel", "lose", "preempt", "exit"]),
        st.integers(0, 20),
    ),
    st.tuples(st.just("quota"), st.integers(0, ORGS - 1), st.integers(0, 4), st.integers(0, 6)),
)


class _Rollback(Exception):
    pass


def _jobs(*states: str) -> list[str]:
    return list(
        FineTuningJob.objects.filter(status__in=states)
        .order_by("created_at", "id")
        .values_list("id", flat=True)
    )


def _pick(ids: list[str], index: int) -> str | None:
    return ids[index % len(ids)] if ids else None


def _apply(step: tuple[Any, ...], orgs: list[Any], flavor: Any) -> bool:
    """Run one operation; True when it lowered a quota (then running work may exceed it)."""
    name = step[0]
    if name == "submit":
        org = orgs[step[1]]
        try:
            job_submit(org, gpus=step[2], priority=step[3])
        except InvalidInput as e:
            # Refused only when it could never run: more GPUs than the organization may use.
            quota = QuotaBook(org_ids=[org.pk]).quota(org.pk, flavor.pk)
            assert quota.max_gpus is not None and step[2] > quota.max_gpus, e.message
    elif name == "pass":
        quotas.admission_pass()
    elif name == "quota":
        guaranteed, maximum = min(step[2], step[3]), step[3]
        quotas.org_quota_override_set(
            organization=orgs[step[1]],
            flavor=flavor,
            values={"guaranteed_gpus": guaranteed, "max_gpus": maximum},
        )
        return True
    else:
        action = {
            "start": (("admitted",), job_start),
            "finish": (("running",), job_finish),
            "fail": (("running", "starting"), job_crash),
            "cancel": (("queued", "admitted", "starting", "running", "requeueing"), job_cancel),
            "lose": (("running", "starting"), job_lose),
            "preempt": (("running",), _preempt),
            "exit": (("requeueing",), job_preempted_exit),
        }[name]
        job_id = _pick(_jobs(*action[0]), step[1])
        if job_id is not None:
            action[1](job_id)
    return False


def _preempt(job_id: str) -> None:
    ft.job_preempt(job_id=job_id, reason="test preemption")
    job_preempted_exit(job_id)


def _drain() -> None:
    """End everything: every allocation must then be released, and only once."""
    for job_id in _jobs("requeueing"):
        job_preempted_exit(job_id)
    for job_id in _jobs("queued", "admitted", "starting", "running"):
        job_cancel(job_id)
    assert not Allocation.objects.filter(released_at__isnull=True).exists()
    for job_id, number in JobAttempt.objects.values_list("job_id", "number"):
        assert quotas.quota_release(job_id=job_id, attempt_number=number) is False
    assert quotas.quota_release_for_job(job_id="ftjob-none") == 0


@pytest.fixture(autouse=True)
def _postgres_only(settings: Any) -> None:
    if connection.vendor != "postgresql":
        pytest.skip("the property test runs on PostgreSQL")
    settings.PARTAGE_PREEMPT_MIN_RUN_SECONDS = 0


@settings(
    max_examples=30,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(steps=st.lists(op, min_size=5, max_size=40))
def test_random_interleavings_keep_invariants(steps: list[tuple[Any, ...]]) -> None:
    try:
        with transaction.atomic():
            flavor = flavor_make()
            pool_make(flavor=flavor, gpus=4)
            pool_make(flavor=flavor, gpus=4)
            plan_make(
                flavor, guaranteed=1, max_gpus=4, concurrent=3, budget="2000", max_job_hours="8"
            )
            orgs = [org_make() for _ in range(ORGS)]
            lowered = False
            for step in steps:
                lowered = _apply(step, orgs, flavor) or lowered
                assert_invariants(quotas_unchanged=not lowered)
            quotas.admission_pass()
            assert_invariants(quotas_unchanged=not lowered)
            assert_every_queued_job_explained()
            _drain()
            assert_invariants(quotas_unchanged=not lowered)
            raise _Rollback
    except _Rollback:
        pass
