"""/v1/quotas, /v1/usage and the staff routes: tenancy, staff-only, audited changes, clear
errors that write nothing, and query counts that do not grow with the queue."""

from __future__ import annotations

from typing import Any

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from rest_framework.test import APIClient

from marketplace.quotas import services as quotas
from marketplace.quotas.models import FlavorQuotaOverride, QuotaAuditEntry
from tests.quotas.conftest import job_submit, plan_make, pool_make

pytestmark = pytest.mark.django_db


@pytest.fixture
def setup(h100: Any, org_a: Any, org_b: Any) -> Any:
    pool_make(flavor=h100, gpus=8)
    plan_make(h100, guaranteed=2, max_gpus=4, budget="500", max_job_hours="10")
    quotas.org_quota_override_set(organization=org_b, flavor=h100, values={"max_gpus": 8})
    from marketplace.billing.services import topup_record

    topup_record(organization=org_a, amount="100000", reference="t-a")
    return h100


@pytest.fixture
def staff_client(carol: Any) -> APIClient:
    client = APIClient()
    client.force_login(carol)
    return client


def test_org_sees_only_its_own_quota_and_usage(
    setup: Any, org_a: Any, client_a: APIClient, client_b: APIClient
) -> None:
    job_submit(org_a, gpus=2)
    assert len(quotas.admission_pass()) == 1
    job_submit(org_a, gpus=4)
    quotas.admission_pass()
    body = client_a.get("/v1/quotas").json()
    assert body["object"] == "list"
    [row] = body["data"]
    assert (row["flavor"], row["guaranteed_gpus"], row["max_gpus"], row["used_gpus"]) == (
        "h100-80g",
        2,
        4,
        2,
    )
    assert row["running_jobs"] == 1 and row["queued_jobs"] == 1
    assert row["gpu_hours_used"] == 20.0 and row["monthly_gpu_hours"] == 500.0
    [other] = client_b.get("/v1/quotas").json()["data"]
    assert (other["max_gpus"], other["used_gpus"], other["queued_jobs"]) == (8, 0, 0)
    assert "override" in other["source"]
    usage = client_a.get("/v1/usage").json()
    assert (
        usage["data"][0]["gpu_hours_used"] == 20.0 and usage["period_start"] < usage["period_end"]
    )


def test_quota_list_query_count_does_not_grow_with_jobs(
    setup: Any, org_a: Any, client_a: APIClient
) -> None:
    def count() -> int:
        with CaptureQueriesContext(connection) as ctx:
            assert client_a.get("/v1/quotas").status_code == 200
        return len(ctx.captured_queries)

    job_submit(org_a)
    quotas.admission_pass()
    count()  # warm-up: the key's first use of the minute records last_used_at
    before = count()
    for _ in range(5):
        job_submit(org_a)
    quotas.admission_pass()
    assert count() == before


def test_staff_routes_refuse_organizations(setup: Any, client_a: APIClient) -> None:
    for method, url in [
        ("get", "/v1/admin/quotas"),
        ("get", "/v1/admin/queue"),
        ("patch", "/v1/admin/organizations/org-a/quotas/h100-80g"),
        ("get", "/v1/admin/quota_audit"),
    ]:
        response = getattr(client_a, method)(url, {}, format="json")
        assert response.status_code == 403, url
        assert response.json()["error"]["type"] == "permission_error"
    assert FlavorQuotaOverride.objects.filter(organization__slug="org-a").count() == 0


def test_staff_change_is_audited_with_who_and_old_and_new(
    setup: Any, org_a: Any, carol: Any, staff_client: APIClient
) -> None:
    response = staff_client.patch(
        "/v1/admin/organizations/org-a/quotas/h100-80g",
        {"max_gpus": 6, "guaranteed_gpus": 3},
        format="json",
    )
    assert response.status_code == 200, response.json()
    assert (response.json()["max_gpus"], response.json()["guaranteed_gpus"]) == (6, 3)
    entries = {e.field: e for e in QuotaAuditEntry.objects.filter(organization=org_a)}
    assert (
        entries["max_gpus"].old_value == "(plan default)" and entries["max_gpus"].new_value == "6"
    )
    assert entries["max_gpus"].changed_by == carol and entries["max_gpus"].via == "api"
    audit = staff_client.get("/v1/admin/quota_audit", {"organization": "org-a"}).json()
    assert {e["field"] for e in audit["data"]} == {"max_gpus", "guaranteed_gpus"}
    assert all(e["changed_by"] == "carol" for e in audit["data"])


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"max_gpus": -1}, "max_gpus"),
        ({"max_gpu": 3}, "max_gpu"),
        ({"guaranteed_gpus": 9}, "guaranteed_gpus"),
        ({"max_job_hours": "abc"}, "max_job_hours"),
    ],
)
def test_bad_quota_change_is_explained_and_writes_nothing(
    setup: Any, staff_client: APIClient, body: dict[str, Any], param: str
) -> None:
    before = QuotaAuditEntry.objects.count()
    response = staff_client.patch(
        "/v1/admin/organizations/org-a/quotas/h100-80g", body, format="json"
    )
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["param"] == param and "organization org-a, flavor h100-80g" in error["message"]
    assert QuotaAuditEntry.objects.count() == before
    assert not FlavorQuotaOverride.objects.filter(organization__slug="org-a").exists()


def test_staff_sees_every_org_and_the_queue(
    setup: Any, org_a: Any, org_b: Any, staff_client: APIClient
) -> None:
    for _ in range(3):
        job_submit(org_a, gpus=2)
    quotas.admission_pass()
    orgs = staff_client.get("/v1/admin/quotas").json()["data"]
    by_slug = {o["organization"]: o for o in orgs}
    assert by_slug["org-a"]["flavors"][0]["used_gpus"] == 4
    assert by_slug["org-b"]["flavors"][0]["max_gpus"] == 8
    [pool] = staff_client.get("/v1/admin/queue").json()["data"]
    assert pool["used_gpus"] == 4 and pool["queued_jobs"] == 1
    assert pool["queue"][0]["pending_reason"].startswith("waiting: your organization is using 4")
    response = staff_client.put("/v1/admin/organizations/org-b/plan", {"weight": 3}, format="json")
    assert response.status_code == 200 and response.json()["weight"] == 3.0


def test_a_job_that_could_never_run_is_a_400_that_writes_nothing(
    setup: Any, client_a: APIClient, upload: Any
) -> None:
    from marketplace.finetuning.models import FineTuningJob
    from tests.conftest import chat_lines, jsonl

    file_id = upload(jsonl(chat_lines(8))).json()["id"]
    body = {"model": "partage/tiny-llama", "training_file": file_id, "gpu_flavor": "h100-80g"}
    response = client_a.post("/v1/fine_tuning/jobs", {**body, "gpu_count": 6}, format="json")
    assert response.status_code == 400, response.content
    error = response.json()["error"]
    assert error["param"] == "gpu_count"
    assert error["message"] == (
        "This job needs 6 H100 GPUs, more than your organization's maximum of 4; "
        "ask for 4 or fewer, or ask staff to raise it."
    )
    assert not FineTuningJob.objects.exists()
    created = client_a.post("/v1/fine_tuning/jobs", {**body, "gpu_count": 4}, format="json")
    assert created.status_code == 200, created.content
    job = created.json()
    assert job["status"] == "queued"
    assert job["partage"]["pending_reason"] == (
        "waiting: in the admission queue; the GPUs it needs are free now"
    )
    assert job["partage"]["estimated_start"] is not None
