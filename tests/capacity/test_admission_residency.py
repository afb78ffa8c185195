"""Done when (b) on the real path: jobs are placed by the quotas app's admission pass (which
commits through capacity's placement_commit). Across random pools, provider records,
organizations and residency policies (hypothesis), a job it admits is never placed outside its
organization's policy or its own residency request, nor on another flavor or a pool too small;
a job that some pool can take is admitted; and it lands on the cheapest feasible pool among the
most reliable (capacity's ordering: within 5 points of the best reliability, then price)."""

from __future__ import annotations

from decimal import Decimal
from fractions import Fraction
from typing import Any

import pytest
from django.db import transaction
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from marketplace.accounts.services import organization_create
from marketplace.billing.services import topup_record
from marketplace.capacity import services
from marketplace.capacity.models import Placement
from marketplace.finetuning.models import FineTuningJob, JobStatus
from marketplace.quotas import services as quotas
from tests.capacity import factories
from tests.capacity.databases import EACH_DATABASE, check_database
from tests.capacity.test_placement import (
    ANYWHERE,
    COUNTRIES,
    FLAVORS,
    allowed,
    expected_reliability,
    residency_spec,
)

pytestmark = pytest.mark.django_db

pool_spec = st.fixed_dictionaries(
    {
        "country": st.sampled_from([*COUNTRIES, "FR", "DE"]),
        "flavor": st.sampled_from([*FLAVORS, *[FLAVORS[0]] * 4]),
        "gpus": st.integers(1, 8),
        "price": st.sampled_from(["1.00", "2.00", "3.00"]),
        # (successes, provider failures): reliabilities 0.90, 0.95, 0.91, 0.81, 0.56, so a
        # cheaper pool is sometimes within 5 points of the best record and sometimes not.
        "record": st.sampled_from([(0, 0), (0, 0), (12, 0), (10, 1), (4, 2), (0, 6)]),
    }
)


def market(specs: list[dict[str, Any]]) -> list[tuple[Any, dict[str, Any]]]:
    pools = []
    history = organization_create(name="Earlier customer", slug="earlier", country="DE")
    for spec in specs:
        pool = factories.pool(
            gpus=spec["gpus"],
            price=spec["price"],
            country=spec["country"],
            flavor_slug=spec["flavor"],
        )
        successes, failures = spec["record"]
        for _ in range(successes):
            factories.outcome(pool, history, succeeded=True)
        for _ in range(failures):
            factories.outcome(pool, history, succeeded=False)
        pools.append((pool, spec))
    everyone = quotas.plan_create(slug="everyone", name="Everyone", is_default=True)
    for slug in FLAVORS:
        quotas.plan_flavor_quota_set(
            plan=everyone,
            flavor=factories.flavor(slug),
            values={
                "guaranteed_gpus": 0,
                "max_gpus": 16,
                "monthly_gpu_hours": None,
                "max_job_hours": "2",
                "max_concurrent_jobs": 10,
            },
        )
    return pools


@EACH_DATABASE
@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    specs=st.lists(pool_spec, min_size=1, max_size=5),
    org_policy=residency_spec,
    job_policy=st.one_of(st.just(ANYWHERE), st.just(ANYWHERE), residency_spec),
    job_gpus=st.integers(1, 4),
    job_flavor=st.sampled_from([*[FLAVORS[0]] * 5, FLAVORS[1]]),
)
def test_the_admission_pass_never_places_a_job_outside_its_residency(
    database, specs, org_policy, job_policy, job_gpus, job_flavor
) -> None:
    check_database(database)
    with transaction.atomic():
        pools = market(specs)
        customer = organization_create(name="Customer", slug="customer", country="FR")
        topup_record(organization=customer, amount=Decimal("100000"), reference="test-customer")
        services.residency_policy_set(organization=customer, **org_policy)
        job = factories.job(customer, gpus=job_gpus, flavor_slug=job_flavor, residency=job_policy)

        quotas.admission_pass_run()

        feasible = [
            pool
            for pool, spec in pools
            if spec["flavor"] == job_flavor
            and spec["gpus"] >= job_gpus
            and allowed(org_policy, spec["country"])
            and allowed(job_policy, spec["country"])
        ]
        job = FineTuningJob.objects.get(pk=job.pk)
        placement = Placement.objects.filter(job=job).select_related("pool__flavor").first()
        if placement is None:
            event("waits: no pool meets its constraints")
            assert job.status == JobStatus.QUEUED and job.pending_reason
            assert feasible == [], (job.pending_reason, [p.public_id for p in feasible])
        else:
            event("admitted")
            assert job.status == JobStatus.ADMITTED
            assert allowed(org_policy, placement.pool.country), job.placement_reason
            assert allowed(job_policy, placement.pool.country), job.placement_reason
            assert placement.pool.flavor.slug == job_flavor
            assert placement.pool in feasible
            assert placement.pool.public_id in job.placement_reason
            # Nothing else runs here: every feasible pool has its GPUs free, so the ordering
            # applies to all of them.
            record = {pool.pk: expected_reliability(spec) for pool, spec in pools}
            best = max(record[p.pk] for p in feasible)
            top = [p for p in feasible if record[p.pk] >= best - Fraction(1, 20)]
            cheapest = min(p.price_per_gpu_hour for p in top)
            chosen = placement.pool
            assert chosen in top, (job.placement_reason, record[chosen.pk], best)
            assert chosen.price_per_gpu_hour == cheapest, (job.placement_reason, cheapest)
            assert record[chosen.pk] == max(
                record[p.pk] for p in top if p.price_per_gpu_hour == cheapest
            )
            if min(p.price_per_gpu_hour for p in feasible) < cheapest:
                event("a cheaper but less reliable pool lost")
            elif any(p.price_per_gpu_hour > cheapest for p in feasible):
                event("a dearer pool lost")
        transaction.set_rollback(True)
