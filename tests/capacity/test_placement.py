"""Placement: hard constraints never bend (hypothesis), then the stated ordering; bookings
really reserve their GPUs; the reason is recorded; the executor gets the pool's settings."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal
from fractions import Fraction

import pytest
import time_machine
from django.db import transaction
from django.utils import timezone
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from marketplace.accounts.services import organization_create
from marketplace.capacity import selectors, services
from marketplace.capacity.models import EU_COUNTRIES, Placement
from marketplace.capacity.placement import NoPlacement, placement_choose
from marketplace.finetuning.models import JobStatus
from tests.capacity import factories
from tests.capacity.databases import EACH_DATABASE, check_database

pytestmark = pytest.mark.django_db

COUNTRIES = ["FR", "DE", "IE", "US", "CH", "JP"]
FLAVORS = ["h100-80g", "a100-40g"]

pool_spec = st.fixed_dictionaries(
    {
        "country": st.sampled_from([*COUNTRIES, "FR", "DE"]),
        "flavor": st.sampled_from([*FLAVORS, *[FLAVORS[0]] * 4]),
        "gpus": st.integers(2, 8),
        "busy": st.integers(0, 3),
        "booked": st.sampled_from(
            [0, 0, 0, 0, 0, 0, 1, 2, 4]
        ),  # the customer's booking, active now
        "price": st.sampled_from(["1.00", "1.50", "2.00", "2.50", "3.00"]),
        # (successes, provider failures): reliabilities 0.90, 0.95, 0.91, 0.81, 0.75, 0.56, so
        # two feasible pools often differ by more than the 5-point tolerance, or by less.
        "record": st.sampled_from([(0, 0), (12, 0), (10, 1), (4, 2), (3, 3), (0, 6)]),
    }
)
ANYWHERE = {"eu_only": False, "countries": []}
residency_spec = st.one_of(
    st.just(ANYWHERE),
    st.just({"eu_only": True, "countries": []}),
    st.fixed_dictionaries(
        {
            "eu_only": st.booleans(),
            "countries": st.lists(st.sampled_from(COUNTRIES), min_size=1, max_size=4, unique=True),
        }
    ),
)


def allowed(policy: dict, country: str) -> bool:
    if policy["eu_only"] and country not in EU_COUNTRIES:
        return False
    return not policy["countries"] or country in policy["countries"]


def expected_reliability(spec: dict) -> Fraction:
    successes, failures = spec["record"]
    return Fraction(successes + 9, successes + failures + 10)


def build_market(specs: list[dict], customer, other) -> list[tuple]:
    """The generated pools, each with other org's running work, provider outcomes and maybe a
    booking of the customer's (made before its residency policy, so it may lie outside it)."""
    pools = []
    now = timezone.now()
    for spec in specs:
        pool = factories.pool(
            gpus=spec["gpus"],
            price=spec["price"],
            country=spec["country"],
            flavor_slug=spec["flavor"],
        )
        busy = min(spec["busy"], spec["gpus"])
        if busy:
            factories.running_on(pool, other, gpus=busy)
        booked = min(spec["booked"], spec["gpus"] - busy)
        if booked:
            services.booking_create(
                organization=customer,
                flavor=spec["flavor"],
                gpu_count=booked,
                start=now - timedelta(minutes=1),
                end=now + timedelta(hours=2),
                pool_id=pool.public_id,
            )
        successes, failures = spec["record"]
        for _ in range(successes):
            factories.outcome(pool, other, succeeded=True)
        for _ in range(failures):
            factories.outcome(pool, other, succeeded=False)
        pools.append((pool, spec, busy, booked))
    return pools


@EACH_DATABASE
@settings(
    max_examples=100,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    specs=st.lists(pool_spec, min_size=2, max_size=6),
    org_policy=residency_spec,
    job_policy=st.one_of(st.just(ANYWHERE), st.just(ANYWHERE), residency_spec),
    job_gpus=st.integers(1, 3),
    job_flavor=st.sampled_from([*[FLAVORS[0]] * 5, FLAVORS[1]]),
)
def test_placement_never_violates_residency_and_follows_the_ordering(
    database, specs, org_policy, job_policy, job_gpus, job_flavor
) -> None:
    """Across random pools, organizations and policies: never outside the residency policy;
    inside a fitting booking of the customer's when one exists; otherwise the cheapest pool
    with free GPUs among the most reliable (within 5 points of the best)."""
    check_database(database)
    with transaction.atomic():
        customer = factories.fund(organization_create(name="Customer", slug="customer"))
        other = factories.fund(organization_create(name="Other", slug="other"))
        pools = build_market(specs, customer, other)
        services.residency_policy_set(organization=customer, **org_policy)
        job = factories.job(customer, gpus=job_gpus, flavor_slug=job_flavor, residency=job_policy)

        # The oracle, from the generated specs alone.
        hard = [
            (pool, spec, busy, booked)
            for pool, spec, busy, booked in pools
            if spec["flavor"] == job_flavor
            and allowed(org_policy, spec["country"])
            and allowed(job_policy, spec["country"])
            and spec["gpus"] >= job_gpus
        ]
        in_booking = [(p, s) for p, s, _busy, booked in hard if booked >= job_gpus]
        feasible = [(p, s) for p, s, busy, booked in hard if s["gpus"] - busy - booked >= job_gpus]
        try:
            decision = placement_choose(job=job)
        except NoPlacement:
            event("no pool: " + ("hard constraints" if not hard else "no free GPUs"))
            assert in_booking == [] and feasible == []
            transaction.set_rollback(True)
            return
        assert allowed(org_policy, decision.pool.country), decision.reason
        assert allowed(job_policy, decision.pool.country), decision.reason
        assert decision.pool.flavor.slug == job_flavor
        event("inside a booking" if in_booking else "on demand")
        if in_booking:
            # The booker's own reserved GPUs first: the cheapest pool where a booking fits.
            assert decision.booking is not None and decision.booking.organization == customer
            assert decision.pool == decision.booking.pool
            cheapest = min(Decimal(s["price"]) for _p, s in in_booking)
            assert decision.pool in [p for p, s in in_booking if Decimal(s["price"]) == cheapest]
        else:
            assert decision.booking is None
            assert decision.pool in [pool for pool, _spec in feasible], decision.reason
            chosen = next(spec for pool, spec in feasible if pool == decision.pool)
            best = max(expected_reliability(spec) for _pool, spec in feasible)
            top = [s for _p, s in feasible if expected_reliability(s) >= best - Fraction(1, 20)]
            assert expected_reliability(chosen) >= best - Fraction(1, 20)
            cheapest = min(Decimal(s["price"]) for s in top)
            assert Decimal(chosen["price"]) == cheapest
            assert expected_reliability(chosen) == max(
                expected_reliability(s) for s in top if Decimal(s["price"]) == cheapest
            )
            assert decision.reliability == expected_reliability(chosen)
            if Decimal(chosen["price"]) > min(Decimal(s["price"]) for _p, s in feasible):
                event("a cheaper but less reliable pool lost")
        transaction.set_rollback(True)


def test_reliability_outweighs_a_lower_price_beyond_five_points(org_a, org_b) -> None:
    flaky = factories.pool(price="1.00")
    solid = factories.pool(price="2.00")
    for _ in range(3):
        factories.outcome(flaky, org_b, succeeded=False)  # 9/13 ≈ 0.69
    for _ in range(5):
        factories.outcome(solid, org_b, succeeded=True)  # 14/15 ≈ 0.93
    decision = placement_choose(job=factories.job(org_a))
    assert decision.pool == solid
    assert "the cheapest of the 1 pool(s)" in decision.reason
    assert (
        "1 cheaper pool(s) were passed over: their providers failed more jobs." in decision.reason
    )
    assert "93% of jobs there ended without a fault" in decision.reason
    assert "points" not in decision.reason and "0.9" not in decision.reason


def test_within_five_points_the_cheaper_pool_wins(org_a, org_b) -> None:
    cheap = factories.pool(price="1.00")
    dear = factories.pool(price="2.00")
    for _ in range(10):
        factories.outcome(dear, org_b, succeeded=True)  # 19/20 = 0.95 vs the prior 0.90
    assert placement_choose(job=factories.job(org_a)).pool == cheap


def test_user_errors_do_not_count_against_the_provider(org_a, org_b) -> None:
    cheap = factories.pool(price="1.00")
    factories.pool(price="2.00")
    for _ in range(5):
        failed = factories.job(org_b, status=JobStatus.FAILED, failure_class="user_error")
        Placement.objects.create(
            job=failed, pool=cheap, gpu_count=1, price_per_gpu_hour=1, reason="t"
        )
    assert selectors.pools_reliability([cheap.pk])[cheap.pk] == Fraction(9, 10)
    assert placement_choose(job=factories.job(org_a)).pool == cheap


def test_nothing_fits_explains_each_pool(org_a, org_b) -> None:
    us = factories.pool(country="US", region="us-east")
    full = factories.pool(gpus=2)
    factories.running_on(full, org_b, gpus=2)
    services.residency_policy_set(organization=org_a, eu_only=True, countries=[])
    with pytest.raises(NoPlacement) as caught:
        placement_choose(job=factories.job(org_a, gpus=2))
    rejected = caught.value.details["rejected"]
    assert "outside the EU" in rejected[us.public_id]
    assert "capacity: 0 GPU(s) free" in rejected[full.public_id]
    assert caught.value.code == "no_capacity"


def test_no_pools_at_all_has_its_own_code(org_a) -> None:
    with pytest.raises(NoPlacement) as caught:
        placement_choose(job=factories.job(org_a))
    assert caught.value.code == "no_pools"


@EACH_DATABASE
def test_a_booking_reserves_its_gpus_against_other_orgs_on_demand_jobs(
    database, org_a, org_b
) -> None:
    """Through the capacity selectors (placement_choose / placement_commit), not the quotas
    admission pass."""
    check_database(database)
    pool = factories.pool(gpus=8, price="1.00")
    start = timezone.now() + timedelta(minutes=1)
    booking = services.booking_create(
        organization=org_a,
        flavor="h100-80g",
        gpu_count=6,
        start=start,
        end=start + timedelta(hours=2),
    )
    factories.running_on(pool, org_b, gpus=2)  # org B already uses the 2 unbooked GPUs
    with time_machine.travel(start + timedelta(minutes=5), tick=False):
        assert selectors.pool_free_gpus(pool) == 0
        with pytest.raises(NoPlacement):
            placement_choose(job=factories.job(org_b, gpus=1))
        mine = factories.job(org_a, gpus=4)
        decision = placement_choose(job=mine)
        assert (decision.pool, decision.booking) == (pool, booking)
        assert "inside your booking" in decision.reason
        services.placement_commit(job=mine, decision=decision)
        mine.status = JobStatus.RUNNING
        mine.save(update_fields=["status"])
        usage = selectors.pools_usage([pool], timezone.now())[pool.pk]
        assert usage.unused_in_booking(booking.pk) == 2
        # Still nothing for org B: the 2 unused booked GPUs stay org A's.
        with pytest.raises(NoPlacement):
            placement_choose(job=factories.job(org_b, gpus=1))
    # After the window, the booked GPUs are free for anyone again.
    with time_machine.travel(start + timedelta(hours=3), tick=False):
        mine.status = JobStatus.SUCCEEDED
        mine.save(update_fields=["status"])
        assert selectors.pool_free_gpus(pool) == 6
        assert placement_choose(job=factories.job(org_b, gpus=6)).pool == pool


def test_on_demand_jobs_of_the_booker_beyond_the_booking_take_free_capacity(org_a) -> None:
    pool = factories.pool(gpus=8)
    start = timezone.now() + timedelta(minutes=1)
    services.booking_create(
        organization=org_a,
        flavor="h100-80g",
        gpu_count=2,
        start=start,
        end=start + timedelta(hours=1),
    )
    with time_machine.travel(start + timedelta(minutes=1), tick=False):
        decision = placement_choose(job=factories.job(org_a, gpus=4))
        assert decision.booking is None and decision.pool == pool


def test_placement_commit_rechecks_under_the_lock(org_a, org_b) -> None:
    pool = factories.pool(gpus=4)
    first, second = factories.job(org_a, gpus=3), factories.job(org_b, gpus=3)
    decision_first = placement_choose(job=first)
    decision_second = placement_choose(job=second)
    services.placement_commit(job=first, decision=decision_first)
    first.status = JobStatus.ADMITTED
    first.save(update_fields=["status"])
    with pytest.raises(services.CapacityUnavailable):
        services.placement_commit(job=second, decision=decision_second)
    assert not Placement.objects.filter(job=second).exists()
    assert Placement.objects.get(job=first).pool == pool


def test_launch_settings_come_from_the_placed_pool(org_a) -> None:
    pool = factories.pool(
        node_selector={"partage.eu/pool": "h100-a"},
        tolerations=[{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
    )
    job = factories.job(org_a, gpus=2)
    assert selectors.launch_settings_for_job(job) == {}
    services.placement_commit(job=job, decision=placement_choose(job=job))
    launch = selectors.launch_settings_for_job(job)
    assert launch["pool_id"] == pool.public_id
    assert (
        launch["credentials_ref"]
        == f"/var/run/secrets/partage/clusters/{pool.cluster.name}/kubeconfig"
    )
    assert launch["namespace"] == "partage-jobs"
    assert launch["node_selector"] == {"partage.eu/pool": "h100-a"}
    assert launch["tolerations"][0]["key"] == "nvidia.com/gpu"
    assert launch["gpu_resource_name"] == "nvidia.com/gpu"
    assert launch["gpu_count"] == 2


def test_estimate_before_submitting(org_a, org_b) -> None:
    from marketplace.capacity.placement import job_estimate
    from marketplace.capacity.policies import Residency

    pool = factories.pool(gpus=4, price="2.00")
    now = timezone.now().replace(microsecond=0)
    with time_machine.travel(now, tick=False):
        estimate = job_estimate(
            organization=org_a,
            gpu_flavor="h100-80g",
            gpu_count=2,
            residency=Residency(),
            gpu_hours_per_gpu=Decimal("1.5"),
        )
        assert (estimate.pool, estimate.estimated_start) == (pool, now)
        assert estimate.estimated_cost == Decimal("6.00")  # 2.00 x 2 GPUs x 1.5 h
        start = now + timedelta(minutes=1)
        services.booking_create(
            organization=org_b,
            flavor="h100-80g",
            gpu_count=4,
            start=start,
            end=start + timedelta(hours=3),
        )
    with time_machine.travel(start + timedelta(minutes=1), tick=False):
        busy = job_estimate(
            organization=org_a,
            gpu_flavor="h100-80g",
            gpu_count=2,
            residency=Residency(),
            gpu_hours_per_gpu=Decimal("1"),
        )
        assert busy.pool == pool
        assert busy.estimated_start == start + timedelta(hours=3)
        assert busy.estimated_cost == Decimal("4.00")
        nowhere = job_estimate(
            organization=org_a,
            gpu_flavor="h100-80g",
            gpu_count=2,
            residency=Residency(countries=frozenset({"US"})),
            gpu_hours_per_gpu=Decimal("1"),
        )
        assert nowhere.pool is None and "hard constraints" in nowhere.reason
