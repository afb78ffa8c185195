"""/v1 quota responses against the OpenAPI schema, with real plans, overrides, jobs and audit.

The fuzz test (tests/api/test_schemathesis.py) calls these routes with an organization's key:
it meets empty lists and the staff routes' 403s. This one builds a queue, running jobs,
overrides and audited changes, calls each route (the staff ones through a staff session, the
only way the views let staff in: an API key acts for an organization and is never staff),
checks the responses with schemathesis' checks, and checks that every object carries exactly
the documented fields (the schema does not forbid extra ones, so a field added to a view but
not to serializers_quotas.py would otherwise pass unnoticed).
"""

from __future__ import annotations

from typing import Any

import pytest
from django.test import Client

from marketplace.quotas import services as quotas
from marketplace.quotas.models import OrganizationQuota, QuotaAuditEntry
from tests.api.schema_checks import (
    CHECKS,
    assert_exact_fields,
    documented,
    schema,
)
from tests.capacity import factories as capacity_factories
from tests.quotas.conftest import job_submit, plan_make, pool_make

pytestmark = pytest.mark.django_db

CSRF = "a" * 32  # staff sessions are cookie-authenticated: DRF checks CSRF on writes


@pytest.fixture
def world(
    h100: Any, org_a: Any, org_b: Any, key_a: str, carol: Any, wsgi_calls: None
) -> dict[str, Any]:
    """An 8-GPU H100 pool; the default plan guarantees 2 and caps at 4 GPUs, 500 GPU-hours.
    Org A runs two 2-GPU jobs and queues a third; org B has an audited override (8 GPUs, no
    budget cap) and a weight of its own; an A100 flavor exists that no pool offers."""
    pool_make(flavor=h100, gpus=8)
    plan_make(h100, guaranteed=2, max_gpus=4, budget="500", max_job_hours="10")
    from marketplace.billing.services import topup_record

    topup_record(organization=org_a, amount="100000", reference="t-a")
    quotas.org_quota_override_set(
        organization=org_b,
        flavor=h100,
        values={"max_gpus": 8, "budget_unlimited": True},
        actor=carol,
        via=QuotaAuditEntry.Via.API,
    )
    quotas.org_plan_set(organization=org_b, plan=None, weight=3)
    for _ in range(3):
        job_submit(org_a, gpus=2)
    quotas.admission_pass()
    client = Client()
    client.force_login(carol)
    return {
        "key_a": key_a,
        "session": client.cookies["sessionid"].value,
        "a100": capacity_factories.flavor("a100-40g", model_name="NVIDIA A100", memory_gb=40),
    }


def call(
    world: dict[str, Any],
    path: str,
    method: str = "GET",
    *,
    staff: bool,
    path_parameters: dict[str, str] | None = None,
    query: dict[str, Any] | None = None,
    body: Any = None,
) -> Any:
    """One schemathesis-checked call: a staff session, or org A's key."""
    kwargs: dict[str, Any] = {"path_parameters": path_parameters or {}, "query": query or {}}
    if body is not None:
        kwargs.update(body=body, media_type="application/json")
    if staff:
        kwargs["cookies"] = {"sessionid": world["session"], "csrftoken": CSRF}
        headers = {"X-CSRFToken": CSRF}
    else:
        headers = {"Authorization": f"Bearer {world['key_a']}"}
    case = schema[path][method].Case(**kwargs)
    return case.call_and_validate(headers=headers, checks=CHECKS)


def checked(response: Any, path: str, method: str = "GET") -> Any:
    assert response.status_code == 200, response.text
    body = response.json()
    assert_exact_fields(documented(path, method), body)
    if body.get("object") == "list":
        assert body["data"], f"{path} returned an empty list: nothing was checked"
    return body


def test_quotas_and_usage_match_the_schema_exactly(world: dict[str, Any]) -> None:
    body = checked(call(world, "/v1/quotas", staff=False), "/v1/quotas")
    [row] = body["data"]
    assert (row["flavor"], row["used_gpus"], row["queued_jobs"]) == ("h100-80g", 4, 1)
    assert row["monthly_gpu_hours"] == 500.0 and row["gpu_hours_used"] == 40.0
    usage = checked(call(world, "/v1/usage", staff=False), "/v1/usage")
    assert usage["period_start"] < usage["period_end"] == row["budget_resets_at"]
    assert usage["data"][0]["running_jobs"] == 2


def test_staff_quotas_match_the_schema_exactly(world: dict[str, Any]) -> None:
    body = checked(call(world, "/v1/admin/quotas", staff=True), "/v1/admin/quotas")
    by_slug = {o["organization"]: o for o in body["data"]}
    assert by_slug["org-a"]["flavors"][0]["used_gpus"] == 4
    org_b = by_slug["org-b"]
    assert org_b["weight"] == 3.0 and org_b["plan"] is not None
    # A nullable field holding null, checked against the schema too.
    assert org_b["flavors"][0]["monthly_gpu_hours"] is None
    assert org_b["flavors"][0]["source"].endswith("+ override")


def test_staff_queue_matches_the_schema_exactly(world: dict[str, Any]) -> None:
    body = checked(call(world, "/v1/admin/queue", staff=True), "/v1/admin/queue")
    [pool] = body["data"]
    assert (pool["capacity_gpus"], pool["used_gpus"], pool["queued_jobs"]) == (8, 4, 1)
    [entry] = pool["queue"]
    assert entry["organization"] == "org-a" and entry["gpus"] == 2
    assert entry["pending_reason"]


def test_staff_quota_audit_matches_the_schema_exactly(world: dict[str, Any]) -> None:
    path = "/v1/admin/quota_audit"
    body = checked(call(world, path, staff=True), path)
    assert {e["field"] for e in body["data"]} >= {"max_gpus", "budget_unlimited", "weight"}
    assert {e["changed_by"] for e in body["data"]} == {"carol", None}  # API vs service
    first = checked(
        call(world, path, staff=True, query={"organization": "org-b", "limit": 1}), path
    )
    assert first["has_more"] is True and len(first["data"]) == 1
    second = checked(
        call(world, path, staff=True, query={"organization": "org-b", "after": first["last_id"]}),
        path,
    )
    assert first["last_id"] not in {e["id"] for e in second["data"]}


def test_staff_quota_change_matches_the_schema_exactly(world: dict[str, Any]) -> None:
    path = "/v1/admin/organizations/{organization}/quotas/{flavor}"
    response = call(
        world,
        path,
        "PATCH",
        staff=True,
        path_parameters={"organization": "org-a", "flavor": "h100-80g"},
        body={"max_gpus": 6, "monthly_gpu_hours": 12.5, "max_job_hours": None},
    )
    body = checked(response, path, "PATCH")
    assert (body["object"], body["max_gpus"], body["monthly_gpu_hours"]) == ("quota", 6, 12.5)
    assert body["max_job_hours"] == 10.0  # back to the plan's


def test_quota_change_for_a_flavor_no_pool_offers_answers_its_quota(
    world: dict[str, Any],
) -> None:
    """It was a 500 (StopIteration): the usage rows leave out flavors nobody can run on."""
    path = "/v1/admin/organizations/{organization}/quotas/{flavor}"
    response = call(
        world,
        path,
        "PATCH",
        staff=True,
        path_parameters={"organization": "org-a", "flavor": "a100-40g"},
        body={"max_gpus": 2},
    )
    body = checked(response, path, "PATCH")
    assert (body["flavor"], body["max_gpus"], body["used_gpus"]) == ("a100-40g", 2, 0)


def test_staff_plan_change_matches_the_schema_exactly(world: dict[str, Any], org_b: Any) -> None:
    path = "/v1/admin/organizations/{organization}/plan"
    for sent, weight in [({"weight": 2.5}, 2.5), ({"plan": None}, None)]:
        response = call(
            world, path, "PUT", staff=True, path_parameters={"organization": "org-b"}, body=sent
        )
        body = checked(response, path, "PUT")
        assert body["organization_id"] == org_b.public_id and body["weight"] == weight


@pytest.mark.parametrize("sent", [[], ["weight", 2], "pro", 3])
def test_plan_change_that_is_no_object_is_a_400_and_writes_nothing(
    world: dict[str, Any], org_b: Any, sent: Any
) -> None:
    """It was read as {} and put the organization back on the default plan and weight."""
    before = QuotaAuditEntry.objects.count()
    response = call(
        world,
        "/v1/admin/organizations/{organization}/plan",
        "PUT",
        staff=True,
        path_parameters={"organization": "org-b"},
        body=sent,
    )
    assert response.status_code == 400, response.text
    assert "JSON object" in response.json()["error"]["message"]
    assert QuotaAuditEntry.objects.count() == before
    assert OrganizationQuota.objects.get(organization=org_b).weight == 3


@pytest.mark.parametrize("after", ["²", "99999999999999999999999", "x", "-1"])
def test_audit_cursor_that_is_no_entry_id_is_a_clear_404_or_a_page(
    world: dict[str, Any], after: str
) -> None:
    """ "²" passes str.isdigit() but not int(): it was a 500. Any string is a cursor by the
    schema; one that names no entry is not found."""
    response = call(world, "/v1/admin/quota_audit", staff=True, query={"after": after})
    if after.isascii() and after.isdigit():  # a number past every id: the whole list
        assert response.status_code == 200, response.text
    else:
        assert response.status_code == 404, response.text
        assert response.json()["error"]["param"] == "after"


def test_staff_routes_refuse_an_organization_key_as_documented(world: dict[str, Any]) -> None:
    for path, method in [
        ("/v1/admin/quotas", "GET"),
        ("/v1/admin/queue", "GET"),
        ("/v1/admin/quota_audit", "GET"),
    ]:
        response = call(world, path, method, staff=False)
        assert response.status_code == 403, response.text
