"""Every quota change is audited: who, when, through what, the old value and the new one; a
change that changes nothing, or is refused, leaves no entry; the trail replays to the rows."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import time_machine
from django.test import Client

from marketplace.errors import InvalidInput
from marketplace.quotas import services as quotas
from marketplace.quotas.models import (
    QUOTA_FIELDS,
    FlavorQuotaOverride,
    OrganizationQuota,
    Plan,
    PlanFlavorQuota,
    QuotaAuditEntry,
)
from marketplace.quotas.services.changes import PLAN_DEFAULT

pytestmark = pytest.mark.django_db

T0 = datetime(2026, 11, 12, 10, 0, tzinfo=UTC)


def trail(**scope: Any) -> list[tuple[str, str, str]]:
    return [
        (e.field, e.old_value, e.new_value)
        for e in QuotaAuditEntry.objects.filter(**scope).order_by("id")
    ]


def test_each_service_records_who_when_old_and_new(h100: Any, org_a: Any, carol: Any) -> None:
    with time_machine.travel(T0, tick=False) as clock:
        starter = quotas.plan_create(slug="starter", name="Starter", is_default=True, actor=carol)
        assert trail(plan=starter) == [("plan", "", "created starter")]
        quotas.plan_flavor_quota_set(
            plan=starter,
            flavor=h100,
            values={"guaranteed_gpus": 1, "max_gpus": 4, "max_job_hours": 8},
            actor=carol,
            via="api",
        )
        assert set(trail(plan=starter, flavor=h100)) == {
            ("guaranteed_gpus", "", "1"),
            ("max_gpus", "", "4"),
            ("max_job_hours", "", "8.00"),
            # defaults the row was created with are part of the change too
            ("monthly_gpu_hours", "", "(unlimited)"),
            ("max_concurrent_jobs", "", "10"),
        }
        entry = QuotaAuditEntry.objects.filter(plan=starter, field="max_gpus").get()
        assert (entry.changed_by, entry.via, entry.changed_at) == (carol, "api", T0)

        clock.shift(timedelta(hours=1))
        QuotaAuditEntry.objects.all().delete()  # only what follows
        quotas.plan_flavor_quota_set(
            plan=starter, flavor=h100, values={"max_gpus": 6, "guaranteed_gpus": 1}, actor=carol
        )
        assert trail() == [("max_gpus", "4", "6")]  # guaranteed_gpus did not change: no entry
        assert QuotaAuditEntry.objects.get().changed_at == T0 + timedelta(hours=1)

        QuotaAuditEntry.objects.all().delete()
        quotas.org_plan_set(organization=org_a, plan=starter, weight=3, actor=carol)
        assert trail(organization=org_a) == [
            ("plan", PLAN_DEFAULT, "starter"),
            ("weight", PLAN_DEFAULT, "3.00"),
        ]
        quotas.org_plan_set(organization=org_a, plan=starter, weight=3, actor=carol)
        assert len(trail(organization=org_a)) == 2  # same values again: nothing new

        QuotaAuditEntry.objects.all().delete()
        quotas.org_quota_override_set(
            organization=org_a, flavor=h100, values={"max_gpus": 10}, actor=carol
        )
        quotas.org_quota_override_set(
            organization=org_a, flavor=h100, values={"budget_unlimited": True}, actor=carol
        )
        quotas.org_quota_override_set(
            organization=org_a, flavor=h100, values={"max_gpus": None}, actor=carol
        )
        assert trail(organization=org_a, flavor=h100) == [
            ("max_gpus", PLAN_DEFAULT, "10"),
            ("budget_unlimited", "False", "True"),
            ("max_gpus", "10", PLAN_DEFAULT),
        ]
        assert all(e.changed_by == carol for e in QuotaAuditEntry.objects.all())


def test_a_new_default_plan_audits_the_one_it_replaces(carol: Any) -> None:
    old = quotas.plan_create(slug="old", name="Old", is_default=True)
    new = quotas.plan_create(slug="new", name="New", actor=carol)
    quotas.plan_update(plan=new, name="New", weight=2, is_default=True, actor=carol)
    old.refresh_from_db()
    assert old.is_default is False
    assert trail(plan=old) == [("plan", "", "created old"), ("is_default", "True", "False")]
    assert trail(plan=new)[1:] == [("weight", "1.00", "2.00"), ("is_default", "False", "True")]
    third = quotas.plan_create(slug="third", name="Third", is_default=True, actor=carol)
    assert trail(plan=new)[-1] == ("is_default", "True", "False")
    assert list(Plan.objects.filter(is_default=True)) == [third]


def test_refused_change_leaves_no_trace(h100: Any, org_a: Any, carol: Any) -> None:
    plan = quotas.plan_create(slug="p", name="P", is_default=True)
    quotas.plan_flavor_quota_set(
        plan=plan, flavor=h100, values={"guaranteed_gpus": 1, "max_gpus": 2, "max_job_hours": 1}
    )
    before = QuotaAuditEntry.objects.count()
    with pytest.raises(InvalidInput, match="cannot exceed max_gpus"):
        quotas.org_quota_override_set(
            organization=org_a, flavor=h100, values={"guaranteed_gpus": 5}, actor=carol
        )
    with pytest.raises(InvalidInput, match="max_job_hours must be more than 0"):
        quotas.plan_flavor_quota_set(plan=plan, flavor=h100, values={"max_job_hours": 0})
    for weight in ("abc", 0, "NaN", True):
        with pytest.raises(InvalidInput, match=r"weight must be a number from 0\.01 to 9999\.99"):
            quotas.org_plan_set(organization=org_a, plan=plan, weight=weight, actor=carol)
    assert QuotaAuditEntry.objects.count() == before
    assert not FlavorQuotaOverride.objects.filter(organization=org_a).exists()
    assert not OrganizationQuota.objects.filter(organization=org_a, plan=plan).exists()
    assert PlanFlavorQuota.objects.get(plan=plan).max_job_hours == 1


def test_the_trail_replays_to_the_current_values(h100: Any, org_a: Any, org_b: Any) -> None:
    """Starting from nothing, applying each entry's new value in order gives exactly the rows
    that are stored: no write path skips the audit."""
    plan = quotas.plan_create(slug="p", name="P", is_default=True)
    changes: list[tuple[Any, dict[str, Any]]] = [
        (org_a, {"max_gpus": 8, "guaranteed_gpus": 2}),
        (org_b, {"monthly_gpu_hours": "120.5"}),
        (org_a, {"guaranteed_gpus": None, "max_concurrent_jobs": 3}),
        (org_b, {"budget_unlimited": True}),
        (org_a, {"max_gpus": 9, "max_job_hours": "2.5"}),
        (org_b, {"monthly_gpu_hours": "99"}),  # a budget again: unlimited is switched off
    ]
    quotas.plan_flavor_quota_set(
        plan=plan, flavor=h100, values={"max_gpus": 16, "max_job_hours": 4}
    )
    for org, values in changes:
        quotas.org_quota_override_set(organization=org, flavor=h100, values=values)
    for org in (org_a, org_b):
        replayed: dict[str, str] = {}
        for field, old, new in trail(organization=org, flavor=h100):
            assert (
                replayed.get(field, PLAN_DEFAULT if field != "budget_unlimited" else "False") == old
            )
            replayed[field] = new
        row = FlavorQuotaOverride.objects.get(organization=org, flavor=h100)
        for field in (*QUOTA_FIELDS, "budget_unlimited"):
            value = getattr(row, field)
            stored = PLAN_DEFAULT if value is None else str(value)
            default = "False" if field == "budget_unlimited" else PLAN_DEFAULT
            assert replayed.get(field, default) == stored, (org.slug, field)


def test_admin_cannot_delete_quota_rows_unaudited(h100: Any, org_a: Any, carol: Any) -> None:
    carol.is_superuser = True
    carol.save()
    client = Client()
    client.force_login(carol)
    plan = quotas.plan_create(slug="p", name="P", is_default=True)
    row = quotas.plan_flavor_quota_set(plan=plan, flavor=h100, values={"max_gpus": 4})
    org_row = quotas.org_plan_set(organization=org_a, plan=plan, weight=2)
    for url in (
        f"/admin/quotas/plan/{plan.pk}/delete/",
        f"/admin/quotas/planflavorquota/{row.pk}/delete/",
        f"/admin/quotas/organizationquota/{org_row.pk}/delete/",
    ):
        assert client.post(url, {"post": "yes"}).status_code == 403, url
    assert Plan.objects.filter(pk=plan.pk).exists()
    assert OrganizationQuota.objects.filter(pk=org_row.pk).exists()

    overrides = [
        quotas.org_quota_override_set(organization=org_a, flavor=h100, values={"max_gpus": 2})
    ]
    response = client.post(
        "/admin/quotas/flavorquotaoverride/",
        {"action": "delete_selected", "_selected_action": [o.pk for o in overrides], "post": "yes"},
    )
    assert response.status_code == 302
    assert not FlavorQuotaOverride.objects.exists()
    last = QuotaAuditEntry.objects.filter(organization=org_a, field="max_gpus").latest("id")
    assert (last.old_value, last.new_value, last.changed_by, last.via) == (
        "2",
        PLAN_DEFAULT,
        carol,
        "admin",
    )
