"""Admission decisions on one database (SQLite or PostgreSQL): quota, capacity, budget,
concurrency, bookings, residency, pending reasons, and release exactly once on every path."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from marketplace.errors import InvalidInput
from marketplace.finetuning.models import FineTuningJob
from marketplace.quotas import services as quotas
from marketplace.quotas.models import Allocation
from tests.capacity import factories as capacity_factories
from tests.quotas.conftest import (
    booking_make,
    job_cancel,
    job_crash,
    job_finish,
    job_lose,
    job_start,
    job_submit,
    org_make,
    plan_make,
    pool_make,
)
from tests.quotas.invariants import ACTIONS, assert_every_queued_job_explained

pytestmark = pytest.mark.django_db


def status(job: FineTuningJob) -> str:
    job.refresh_from_db()
    return job.status


def test_admits_within_guarantee_and_explains_the_wait(h100) -> None:
    pool_make(flavor=h100, gpus=16)
    plan_make(h100, guaranteed=8, max_gpus=8)
    org = org_make()
    jobs = [job_submit(org, gpus=4) for _ in range(3)]
    admitted = quotas.admission_pass()
    assert sorted(admitted) == sorted(j.id for j in jobs[:2])
    waiting = FineTuningJob.objects.get(pk=jobs[2].id)
    assert waiting.status == "queued"
    assert waiting.pending_reason.startswith(
        "waiting: your organization is using 8 of its maximum 8 H100 GPUs"
    ), waiting.pending_reason
    assert waiting.estimated_start is not None
    kinds = set(Allocation.objects.values_list("kind", flat=True))
    assert kinds == {Allocation.Kind.GUARANTEED}


def test_borrowing_above_guarantee_up_to_max(h100) -> None:
    pool_make(flavor=h100, gpus=16)
    plan_make(h100, guaranteed=2, max_gpus=6)
    org = org_make()
    jobs = [job_submit(org, gpus=2) for _ in range(4)]
    admitted = quotas.admission_pass()
    assert len(admitted) == 3
    assert sorted(Allocation.objects.values_list("kind", flat=True)) == [
        "borrowed",
        "borrowed",
        "guaranteed",
    ]
    assert status(jobs[3]) == "queued"


def test_capacity_wait_reason_names_flavor_and_place(h100) -> None:
    pool_make(flavor=h100, gpus=4)
    plan_make(h100, guaranteed=0, max_gpus=100)
    a, b = org_make(), org_make()
    first = job_submit(a, gpus=4)
    assert quotas.admission_pass() == [first.id]
    job_start(first.id)
    second = job_submit(b, gpus=2, residency={"eu_only": True})
    quotas.admission_pass()
    second.refresh_from_db()
    assert second.status == "queued"
    # The running job reported no progress: only its maximum duration bounds the wait.
    assert second.pending_reason == (
        "waiting: no free H100 in EU pools; next free in at most about 24 h (the running jobs' "
        "maximum duration; they may well end sooner)"
    )
    assert second.estimated_start is not None


def test_the_estimated_start_is_the_end_of_the_booking_that_holds_the_gpus(h100) -> None:
    pool = pool_make(flavor=h100, gpus=4)
    plan_make(h100, guaranteed=0, max_gpus=100)
    owner, other = org_make(), org_make()
    now = timezone.now()
    booking = booking_make(
        owner, pool, 4, start=now - timedelta(minutes=1), end=now + timedelta(hours=4)
    )
    waiting = job_submit(other, gpus=2)
    quotas.admission_pass()
    waiting.refresh_from_db()
    assert waiting.status == "queued"
    # The booking's end (to the minute stored), not 24 h from the maximum job duration.
    assert abs((waiting.estimated_start - booking.end).total_seconds()) < 60
    assert waiting.pending_reason.endswith(
        "next free in about 4 h (when a booking holding those GPUs ends)"
    )


def test_the_estimated_start_follows_the_running_job_s_own_progress(h100) -> None:
    from marketplace.finetuning.services import trainer_events_record

    pool_make(flavor=h100, gpus=4)
    plan_make(h100, guaranteed=0, max_gpus=100)
    a, b = org_make(), org_make()
    running = job_submit(a, gpus=4)
    assert quotas.admission_pass() == [running.id]
    attempt = job_start(running.id)
    trainer_events_record(
        job_id=running.id,
        attempt_number=attempt.number,
        events=[{"event": "progress", "step": 10, "total_steps": 40, "eta_s": 3 * 3600}],
    )
    waiting = job_submit(b, gpus=2)
    before = timezone.now()
    quotas.admission_pass()
    waiting.refresh_from_db()
    assert waiting.status == "queued"
    # 3 h from the progress report, not 24 h from the maximum job duration.
    expected = before + timedelta(hours=3)
    assert abs((waiting.estimated_start - expected).total_seconds()) < 120
    assert waiting.pending_reason.endswith(
        "next free in about 2 h to 4 h (from the running jobs' own progress)"
    )
    # The next job in the queue waits behind this one: its estimate says so.
    third = job_submit(b, gpus=2)
    quotas.admission_pass()
    third.refresh_from_db()
    assert "after the jobs ahead of yours in the queue" in third.pending_reason


def test_job_that_does_not_fit_does_not_block_smaller_ones(h100) -> None:
    pool_make(flavor=h100, gpus=4)
    plan_make(h100, max_gpus=100)
    org = org_make()
    running = job_submit(org, gpus=2)
    quotas.admission_pass()
    big = job_submit(org, gpus=4, priority=5)
    small = job_submit(org, gpus=2)
    assert quotas.admission_pass() == [small.id]
    assert (
        status(big) == "queued"
        and "no free H100" in FineTuningJob.objects.get(pk=big.id).pending_reason
    )
    assert status(running) == "admitted"


def test_concurrency_and_budget_limits(h100) -> None:
    pool_make(flavor=h100, gpus=32)
    plan_make(h100, max_gpus=32, concurrent=2, budget="100", max_job_hours="10")
    org = org_make()
    jobs = [job_submit(org, gpus=1) for _ in range(3)]
    assert len(quotas.admission_pass()) == 2
    reason = FineTuningJob.objects.get(pk=jobs[2].id).pending_reason
    assert reason.startswith(
        "waiting: your organization runs 2 of its 2 allowed concurrent H100 jobs"
    )
    job_start(jobs[0].id)
    job_finish(jobs[0].id)
    quotas.org_quota_override_set(organization=org, flavor=h100, values={"max_concurrent_jobs": 5})
    big = job_submit(org, gpus=9)  # 9 x 10 h = 90 GPU-hours: over the 80 left
    quotas.admission_pass()
    assert status(jobs[2]) == "admitted"
    reason = FineTuningJob.objects.get(pk=big.id).pending_reason
    assert "monthly GPU-hours left" in reason and "resets on" in reason, reason


def test_plan_without_flavor_and_residency(h100) -> None:
    from tests.quotas.conftest import flavor_make

    a100 = flavor_make("a100-80g", "NVIDIA A100")
    pool_make(flavor=a100, gpus=8, country="US", region="us-east")
    plan_make(h100, max_gpus=8)
    org = org_make()
    with pytest.raises(InvalidInput, match="does not include A100"):
        job_submit(org, flavor="a100-80g")
    quotas.org_quota_override_set(
        organization=org, flavor=a100, values={"max_gpus": 4, "max_concurrent_jobs": 2}
    )
    job = job_submit(org, flavor="a100-80g")
    with pytest.raises(InvalidInput, match="data residency"):
        job_submit(org, flavor="a100-80g", residency={"eu_only": True})
    assert quotas.admission_pass() == [job.id]


def test_booking_covers_its_owner_even_when_pool_is_full(h100) -> None:
    pool = pool_make(flavor=h100, gpus=8)
    plan_make(h100, max_gpus=0, concurrent=10)
    owner, other = org_make(), org_make()
    now = timezone.now()
    booking_make(owner, pool, 4, start=now - timedelta(minutes=1), end=now + timedelta(hours=4))
    quotas.org_quota_override_set(organization=other, flavor=pool.flavor, values={"max_gpus": 8})
    greedy = [job_submit(other, gpus=2) for _ in range(4)]
    booked = job_submit(owner, gpus=4)
    admitted = quotas.admission_pass()
    assert booked.id in admitted
    assert sum(1 for j in greedy if j.id in admitted) == 2  # the 4 booked GPUs stay reserved
    alloc = Allocation.objects.get(job_id=booked.id)
    assert alloc.kind == Allocation.Kind.BOOKED and alloc.booking is not None


def _pause(job_id: str) -> None:
    from marketplace.finetuning import services as ft
    from tests.quotas.conftest import job_preempted_exit

    job = FineTuningJob.objects.get(pk=job_id)
    ft.job_pause(organization=job.organization, job_id=job_id)
    if FineTuningJob.objects.get(pk=job_id).status == "pausing":
        job_preempted_exit(job_id)  # the trainer checkpoints on SIGTERM


def _preempt(job_id: str) -> None:
    from marketplace.finetuning import services as ft
    from tests.quotas.conftest import job_preempted_exit

    ft.job_preempt(job_id=job_id, reason="test")
    job_preempted_exit(job_id)


END_PATHS = {
    "finish": job_finish,
    "crash": job_crash,
    "cancel_running": job_cancel,
    "cancel_admitted": job_cancel,
    "lost": job_lose,
    "pause_running": _pause,
    "pause_admitted": _pause,
    "preempt": _preempt,
}


@pytest.mark.parametrize("path", list(END_PATHS))
def test_quota_released_exactly_once_on_every_path(h100, path: str) -> None:
    pool_make(flavor=h100, gpus=4)
    plan_make(h100, max_gpus=4)
    org = org_make()
    job = job_submit(org, gpus=4)
    assert quotas.admission_pass() == [job.id]
    if not path.endswith("_admitted"):
        job_start(job.id)
    END_PATHS[path](job.id)
    allocation = Allocation.objects.get(job_id=job.id)
    assert allocation.released_at is not None
    released_at = allocation.released_at
    assert quotas.quota_release(job_id=job.id, attempt_number=allocation.attempt_number) is False
    assert quotas.quota_release_for_job(job_id=job.id) == 0
    allocation.refresh_from_db()
    assert allocation.released_at == released_at  # once: never moved by a second release
    assert not Allocation.objects.filter(released_at__isnull=True).exists()
    requeued = status(job) == "queued"  # lost or preempted: it waits to resume
    other = job_submit(org_make(), gpus=4)
    # the 4 GPUs came back to the pool: the older of the two waiting jobs gets them
    assert quotas.admission_pass() == [job.id if requeued else other.id]


def test_no_pools_admits_like_the_foundation(db: None) -> None:
    org = org_make()
    job = job_submit(org, flavor="")
    assert quotas.admission_pass() == [job.id]
    job_start(job.id)
    job_finish(job.id)
    assert Allocation.objects.get(job_id=job.id).released_at is not None


@pytest.mark.parametrize("history", ["preempted", "lost", "paused"])
def test_readmitted_job_cancelled_before_its_next_attempt_releases_quota(h100, history) -> None:
    """A job whose first attempt ended (preempted, lost pod, paused) is admitted again, then
    cancelled before its next attempt starts: it ends cancelled and its quota comes back once."""
    from marketplace.finetuning import services as ft
    from tests.quotas.conftest import job_preempted_exit

    pool_make(flavor=h100, gpus=4)
    plan_make(h100, max_gpus=4)
    org = org_make()
    job = job_submit(org, gpus=4)
    assert quotas.admission_pass() == [job.id]
    job_start(job.id)
    if history == "preempted":
        ft.job_preempt(job_id=job.id, reason="test")
        job_preempted_exit(job.id)
    elif history == "lost":
        job_lose(job.id)
    else:
        ft.job_pause(organization=org, job_id=job.id)
        job_preempted_exit(job.id)
        assert status(job) == "paused"
        ft.job_resume(organization=org, job_id=job.id)
    assert status(job) == "queued"
    assert quotas.admission_pass() == [job.id]
    assert Allocation.objects.filter(job_id=job.id, released_at__isnull=True).count() == 1
    job_cancel(job.id)  # the API's cancel, then the job_stop task it enqueues
    assert status(job) == "cancelled"
    assert not Allocation.objects.filter(released_at__isnull=True).exists()
    for allocation in Allocation.objects.filter(job_id=job.id):
        assert (
            quotas.quota_release(job_id=job.id, attempt_number=allocation.attempt_number) is False
        )
    other = job_submit(org_make(), gpus=4)
    assert quotas.admission_pass() == [other.id]  # the pool's GPUs are free again


def test_job_refused_for_funds_does_not_block_funded_jobs_behind_it(h100) -> None:
    """Funds are checked under the balance lock at admission; a job refused there takes no
    GPUs from the jobs after it in the same pass, and says what to do."""
    pool_make(flavor=h100, gpus=4)
    plan_make(h100, max_gpus=4, max_job_hours="10")
    broke, funded = org_make(funds="0"), org_make()
    unfunded_big = job_submit(broke, gpus=4, priority=1)  # first in line
    unfunded_small = job_submit(broke, gpus=4)
    small = job_submit(funded, gpus=2)
    report = quotas.admission_pass_run()
    assert report.admitted == [small.id]
    assert report.refused_on_recheck == 1  # the second job of the org was not even tried
    # The first round counted the refused job's GPUs as taken; the second decided afresh.
    assert report.rounds == 2
    for job in (unfunded_big, unfunded_small):
        job.refresh_from_db()
        assert job.status == "queued"
        assert job.pending_reason.startswith("waiting: not enough funds: "), job.pending_reason
        assert "Top up" in job.pending_reason
    assert not Allocation.objects.filter(job_id__in=[unfunded_big.id, unfunded_small.id]).exists()


def test_every_waiting_job_says_why_and_when_or_what_to_do(h100) -> None:
    """Each kind of wait, side by side: a reason in plain words, and an estimated start
    whenever the job can start without anyone acting (else the reason says what to do).
    The waits that need an action arise after submission: a job that could never run as
    asked is refused when it is submitted (next test)."""
    from marketplace.capacity.services import pool_retire, residency_policy_set
    from tests.quotas.conftest import flavor_make

    a100 = flavor_make("a100-80g", "NVIDIA A100")
    b200 = flavor_make("b200-192g", "NVIDIA B200")
    pool_make(flavor=h100, gpus=4)
    pool_make(flavor=a100, gpus=8, country="US", region="us-east")
    b200_pool = pool_make(flavor=b200, gpus=8)
    plan = plan_make(h100, guaranteed=2, max_gpus=4, concurrent=2, budget="100", max_job_hours="10")
    for flavor in (a100, b200):
        quotas.plan_flavor_quota_set(
            plan=plan,
            flavor=flavor,
            values={
                "guaranteed_gpus": 0,
                "max_gpus": 8,
                "max_job_hours": 10,
                "max_concurrent_jobs": 4,
            },
        )
    full, other, moved, broke = org_make(), org_make(), org_make(), org_make(funds="0")
    running = [job_submit(full, gpus=2) for _ in range(2)]
    assert sorted(quotas.admission_pass()) == sorted(j.id for j in running)
    for job in running:
        job_start(job.id)
    waiting = {
        "concurrency": job_submit(full, gpus=1),
        "capacity": job_submit(other, gpus=2),
        "over_max": job_submit(other, gpus=6, flavor="a100-80g"),  # pool has 8, max is 8: ok
        "residency": job_submit(moved, flavor="a100-80g"),
        "pool_retired": job_submit(other, flavor="b200-192g"),
        "funds": job_submit(broke, gpus=1, flavor="a100-80g"),
    }
    # What changes after submission: staff lower a maximum, an organization restricts its
    # data residency, a provider retires the only pool of a flavor.
    quotas.org_quota_override_set(organization=other, flavor=a100, values={"max_gpus": 4})
    residency_policy_set(organization=moved, eu_only=True, countries=[])
    pool_retire(pool=b200_pool)
    quotas.admission_pass()
    now = timezone.now()
    for kind, job in waiting.items():
        job.refresh_from_db()
        assert job.status == "queued", (kind, job.pending_reason)
        reason = job.pending_reason
        assert reason.startswith("waiting: ") and not {"None", "{", "}"} & set(reason.split()), (
            kind,
            reason,
        )
        if job.estimated_start is None:
            assert any(action in reason for action in ACTIONS), (kind, reason)
        else:
            assert job.estimated_start >= now - timedelta(minutes=1), (kind, reason)
    assert_every_queued_job_explained()
    assert "runs 2 of its 2 allowed concurrent H100 jobs" in waiting["concurrency"].pending_reason
    # the running jobs end within their 10 h limit; the waiting job is promised that moment
    assert waiting["concurrency"].estimated_start <= now + timedelta(hours=10)
    assert waiting["capacity"].pending_reason.startswith("waiting: no free H100")
    assert waiting["capacity"].estimated_start is not None
    assert "maximum of 4" in waiting["over_max"].pending_reason
    assert "data residency (EU only)" in waiting["residency"].pending_reason
    assert "no B200 pool exists yet" in waiting["pool_retired"].pending_reason
    assert waiting["funds"].pending_reason.startswith(
        "waiting: not enough funds: this job needs €24.00 on hold for its longest run and your "
        "organization has €0.00 available; Top up"
    ), waiting["funds"].pending_reason


def test_a_job_that_could_never_run_is_refused_at_submission(h100) -> None:
    """Bad input gets a clear error, not a job queued forever: what is wrong, on which
    parameter, and what to ask for instead; nothing is written."""
    from marketplace.finetuning.models import JobEvent
    from tests.quotas.conftest import flavor_make

    a100 = flavor_make("a100-80g", "NVIDIA A100")
    l40 = flavor_make("l40s-48g", "NVIDIA L40S")
    pool_make(flavor=h100, gpus=4)
    pool_make(flavor=a100, gpus=8, country="US", region="us-east")
    pool_make(flavor=l40, gpus=8)
    plan = plan_make(h100, guaranteed=2, max_gpus=4, concurrent=2, budget="100")
    quotas.plan_flavor_quota_set(plan=plan, flavor=l40, values={"max_concurrent_jobs": 0})
    org = org_make()
    quotas.org_quota_override_set(
        organization=org, flavor=a100, values={"max_gpus": 4, "max_concurrent_jobs": 2}
    )
    refused = {
        ("gpu_count", "No H100 pool in eu-west-paris has 16 GPUs (the largest has 4)"): {
            "gpus": 16
        },
        ("gpu_flavor", "No GPU flavor 'b200-192g' is offered; choose one of: a100-80g"): {
            "flavor": "b200-192g"
        },
        ("residency", "No A100 pool matches the data residency (EU only)"): {
            "flavor": "a100-80g",
            "residency": {"eu_only": True},
        },
        ("gpu_count", "more than your organization's maximum of 4; ask for 4 or fewer"): {
            "flavor": "a100-80g",
            "gpus": 6,
        },
        ("gpu_flavor", "plan does not include L40S GPUs"): {"flavor": "l40s-48g"},
    }
    for (param, message), options in refused.items():
        with pytest.raises(InvalidInput) as error:
            job_submit(org, **options)
        assert error.value.param == param, (options, error.value.message)
        assert message in error.value.message, (options, error.value.message)
    assert not FineTuningJob.objects.exists() and not JobEvent.objects.exists()


def test_without_pools_a_new_job_is_told_the_local_executor_starts_it(h100) -> None:
    """Development mode: no pool, so nothing to refuse, and the local executor takes it."""
    job = job_submit(org_make(), gpus=64, flavor="b200-192g")
    assert job.pending_reason == (
        "waiting: in the admission queue; the local executor starts it now"
    )
    assert abs(job.estimated_start - timezone.now()) < timedelta(minutes=2)
    assert quotas.admission_pass() == [job.id]


def test_a_new_job_says_why_and_when_before_the_first_pass(h100) -> None:
    """REFERENCE §5.7 from the first moment: the queued job carries the same decision rules'
    reason and estimate as soon as it is created, before any admission pass has run."""
    pool_make(flavor=h100, gpus=4)
    plan_make(h100, guaranteed=4, max_gpus=4, concurrent=4, max_job_hours="10")
    busy, other = org_make(), org_make()
    first = job_submit(busy, gpus=4)
    assert first.pending_reason == (
        "waiting: in the admission queue; the GPUs it needs are free now"
    )
    assert abs(first.estimated_start - timezone.now()) < timedelta(minutes=2)
    assert quotas.admission_pass() == [first.id]
    job_start(first.id)
    second = job_submit(other, gpus=2)
    assert second.pending_reason.startswith("waiting: no free H100"), second.pending_reason
    # the running job holds the pool for at most its 10 h limit
    assert timezone.now() + timedelta(hours=9) < second.estimated_start
    assert second.estimated_start <= timezone.now() + timedelta(hours=10, minutes=1)


def test_places_on_the_cheapest_of_the_most_reliable_pools(h100) -> None:
    """Capacity's order on the real pass: keep the pools within 5 points of the best provider
    record, then the cheapest; best fit only breaks ties (the old order put it first)."""
    history = org_make()

    def pool_with(price: str, successes: int, failures: int, gpus: int = 8):
        pool = pool_make(flavor=h100, gpus=gpus, price=price)
        for _ in range(successes):
            capacity_factories.outcome(pool, history, succeeded=True)
        for _ in range(failures):
            capacity_factories.outcome(pool, history, succeeded=False)
        return pool

    pool_with("1.00", 0, 6, gpus=2)  # cheapest and a best fit, but 9/16: far below the best
    pool_with("3.00", 12, 0)  # the best record, 21/22, but dearest
    pool_with("2.00", 10, 1, gpus=16)  # 19/21: within 5 points of 21/22, and cheaper...
    chosen = pool_with("2.00", 10, 1)  # ...as is this younger pool, a better fit
    plan_make(h100, max_gpus=100)
    job = job_submit(org_make(), gpus=2)
    assert quotas.admission_pass() == [job.id]
    job.refresh_from_db()
    assert Allocation.objects.get(job_id=job.id).pool_id == chosen.pk
    assert chosen.public_id in job.placement_reason


def test_waits_are_told_in_steady_steps() -> None:
    from marketplace.quotas.decide import humanize

    told = [humanize(timedelta(minutes=m)) for m in (0, 7, 38, 41, 42, 43, 89, 90, 150, 3000)]
    assert told == ["1 min", "7 min", "40 min", "40 min", "40 min", "45 min", "90 min", "2 h",
                    "2 h", "2 days"]  # fmt: skip


def test_fair_share_counts_half_the_gpus_the_job_would_add(h100) -> None:
    """Sainte-Laguë's divisor: an organization ranks by (GPUs used + half the job's) / weight.
    A weight-2 organization using 6 GPUs and a weight-1 one using 3 are even on usage alone
    (3 each); with 2 GPUs left and a 2-GPU job each, the weight-2 one goes first
    ((6+1)/2 = 3.5 < (3+1)/1 = 4), although the other's job is older."""
    pool_make(flavor=h100, gpus=11)
    plan_make(h100, max_gpus=100)
    heavy, light = org_make(), org_make()
    quotas.org_plan_set(organization=heavy, plan=None, weight=2)
    running = [job_submit(heavy, gpus=2) for _ in range(3)] + [job_submit(light, gpus=3)]
    assert sorted(quotas.admission_pass()) == sorted(job.id for job in running)
    older = job_submit(light, gpus=2)
    newer = job_submit(heavy, gpus=2)
    assert quotas.admission_pass() == [newer.id]
    assert status(older) == "queued"


def test_fair_share_does_not_favour_the_heavier_weight(h100) -> None:
    """Counting the whole job (WFQ's finish tag, D'Hondt's divisor) favours large weights:
    weight-2 at 5 GPUs and weight-1 at 1, 4 GPUs left, a 4-GPU job each: the whole job ranks
    the weight-2 one first ((5+4)/2 = 4.5 < 1+4 = 5) and ends at 9 GPUs to 1; half the job
    ranks the weight-1 one first ((5+2)/2 = 3.5 > 1+2 = 3), 5 to 5, nearer to 2:1."""
    pool_make(flavor=h100, gpus=10)
    plan_make(h100, max_gpus=100)
    heavy, light = org_make(), org_make()
    quotas.org_plan_set(organization=heavy, plan=None, weight=2)
    running = [job_submit(heavy, gpus=g) for g in (2, 2, 1)] + [job_submit(light, gpus=1)]
    assert sorted(quotas.admission_pass()) == sorted(job.id for job in running)
    older = job_submit(heavy, gpus=4)
    newer = job_submit(light, gpus=4)
    assert quotas.admission_pass() == [newer.id]
    assert status(older) == "queued"


def test_pass_query_count_does_not_grow_with_the_queue(h100) -> None:
    """The pass reads the queue, quotas and capacity in a constant number of queries; only
    admission batches (a fixed number of statements each) add their own short transactions."""
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    # Two pools with different provider records, so the pass loads and compares reliability.
    for price, succeeded in (("1.00", False), ("2.00", True)):
        pool = pool_make(flavor=h100, gpus=4, price=price)
        capacity_factories.outcome(pool, org_make(), succeeded=succeeded)
    plan_make(h100, max_gpus=100)
    orgs = [org_make() for _ in range(3)]
    running = [job_submit(orgs[0], gpus=4) for _ in range(2)]
    assert sorted(quotas.admission_pass()) == sorted(job.id for job in running)

    def pass_queries() -> tuple[int, int]:
        with CaptureQueriesContext(connection) as cold:
            assert quotas.admission_pass() == []
        with CaptureQueriesContext(connection) as warm:  # nothing changed: nothing written
            assert quotas.admission_pass() == []
        return len(cold.captured_queries), len(warm.captured_queries)

    for index in range(3):  # first jobs of each organization: their org-quota rows appear
        job_submit(orgs[index], gpus=1)
    pass_queries()
    for index in range(4):
        job_submit(orgs[index % 3], gpus=1 + index % 2)
    small = pass_queries()
    for index in range(20):
        job_submit(orgs[index % 3], gpus=1 + index % 2, residency={"eu_only": index % 5 == 0})
    large = pass_queries()
    assert large[1] == small[1], (small, large)
    if (
        connection.vendor == "postgresql"
    ):  # new reasons: one bulk UPDATE there, one per job on SQLite
        assert large[0] == small[0], (small, large)


# One admission's transaction, statement by statement (PostgreSQL and SQLite alike):
# quotas 13 — savepoint/begin, pool lock, org-quota lock, the job (with its organization),
#   the re-check (pools, maintenance, bookings, live allocations, budget, residency,
#   overrides; flavors and plans come from the pass, the org quota is the locked row),
#   the allocation row, release/commit;
# capacity 6 — drop a stale placement, usage (maintenance, bookings, live allocations,
#   placements), the placement row (the pool lock is the caller's);
# billing 12 — the balance lock, metered-but-uncaptured usage (charges, usage records),
#   held for the job, the pricing row (read, write), available funds, the hold entry
#   (idempotency read, savepoint, entry, lines, release);
# finetuning 3 — the conditional status UPDATE (with the event number), the number, the event.
STATEMENTS_PER_BATCH = 31


def test_an_admission_batch_sends_a_fixed_number_of_statements(h100, settings) -> None:
    """Admissions are the pass's serial cost, written in batches of one locked transaction
    each: a batch sends the same statements whether it admits one job or several of several
    organizations, and each further batch adds exactly that many."""
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    pool_make(flavor=h100, gpus=16)
    plan_make(h100, max_gpus=100)
    orgs = [org_make(), org_make()]
    for org in orgs:
        job_submit(org, gpus=1)
    assert len(quotas.admission_pass()) == 2  # the org-quota and balance rows exist now

    def statements(jobs: int, per_batch: int) -> list[str]:
        settings.PARTAGE_ADMISSION_BATCH = per_batch
        for index in range(jobs):
            job_submit(orgs[index % 2], gpus=1)
        with CaptureQueriesContext(connection) as sent:
            assert len(quotas.admission_pass()) == jobs
        return [query["sql"][:160] for query in sent.captured_queries]

    one, three = statements(1, 50), statements(3, 50)
    assert len(three) == len(one), "\n".join(three)
    two_batches = statements(3, 2)
    per_batch = len(two_batches) - len(one)
    assert per_batch == STATEMENTS_PER_BATCH, "\n".join(two_batches)
    assert Allocation.objects.filter(released_at__isnull=True).count() == 9
    assert FineTuningJob.objects.filter(status="admitted").count() == 9


def test_a_batch_with_a_conflicting_admission_admits_the_others_one_by_one(h100) -> None:
    """A batch is one transaction: when one of its admissions conflicts (here the job already
    has a live allocation, as if a concurrent pass had just admitted it), the batch is rolled
    back and applied again one admission at a time; only the conflicting one is left out,
    and nothing of it (hold, placement, event) is written."""
    from decimal import Decimal

    from marketplace.billing.models import JobPricing
    from marketplace.capacity.models import Placement

    pool_make(flavor=h100, gpus=16)
    plan_make(h100, max_gpus=100)
    first, taken, last = (job_submit(org_make(), gpus=1) for _ in range(3))
    now = timezone.now()
    Allocation.objects.create(
        job_id=taken.id,
        attempt_number=1,
        organization_id=taken.organization_id,
        gpus=1,
        kind=Allocation.Kind.GUARANTEED,
        priority=0,
        reserved_gpu_hours=Decimal(24),
        admitted_at=now,
        expected_end=now + timedelta(hours=24),
    )
    report = quotas.admission_pass_run()
    assert sorted(report.admitted) == sorted([first.id, last.id])
    assert status(taken) == "queued"
    assert not JobPricing.objects.filter(job_id=taken.id).exists()
    assert not Placement.objects.filter(job_id=taken.id).exists()
    assert not taken.events.filter(message__startswith="Admitted").exists()
    assert JobPricing.objects.filter(job_id__in=[first.id, last.id]).count() == 2


def test_booked_admission_holds_only_what_the_booking_does_not_cover(h100) -> None:
    """The pass hands billing the placement it just wrote; the hold still sees its booking."""
    from decimal import Decimal

    from marketplace.billing.models import JobPricing
    from marketplace.billing.services import job_held

    pool = pool_make(flavor=h100, gpus=8, price="2.00")
    plan_make(h100, max_gpus=8, max_job_hours="24")
    owner = org_make()
    now = timezone.now()
    booking = booking_make(
        owner, pool, 4, start=now - timedelta(minutes=1), end=now + timedelta(hours=4)
    )
    booked = job_submit(owner, gpus=4)
    unbooked = job_submit(org_make(), gpus=4)  # same country, so the same VAT
    assert sorted(quotas.admission_pass()) == sorted([booked.id, unbooked.id])
    assert JobPricing.objects.get(job_id=booked.id).booking_id == booking.pk
    assert JobPricing.objects.get(job_id=unbooked.id).booking_id is None
    # 24 h on hold for the unbooked job; the first 4 h of the booked one are the booking's.
    ratio = job_held(job_id=booked.id) / job_held(job_id=unbooked.id)
    assert abs(ratio - Decimal(20) / Decimal(24)) < Decimal("0.001"), ratio
