"""/v1 conventions: one error shape, idempotency, rate limits, key scopes, accounts endpoints,
webhook endpoints through the API, the SSE event stream, fixed query counts, offline docs."""

from __future__ import annotations

import json
from typing import Any

import pytest
from django.contrib.staticfiles import finders
from rest_framework.test import APIClient

from marketplace.accounts.models import ApiKey
from marketplace.accounts.services import api_key_create
from marketplace.api.errors import exception_handler
from marketplace.api.models import IdempotencyRecord, WebhookDelivery
from marketplace.finetuning.models import File, FineTuningJob
from tests.api.factories import job_for
from tests.conftest import chat_lines, jsonl

pytestmark = pytest.mark.django_db


def _client(secret: str) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {secret}")
    return client


def _error(response: Any, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.content
    body = response.json()
    assert set(body) == {"error"}
    assert {"message", "type", "param", "code"} <= set(body["error"])
    assert body["error"]["message"]
    return body["error"]


# ---------------------------------------------------------------- errors


def test_unknown_route_wrong_method_and_auth_failures_use_the_error_shape(
    client_a: APIClient,
) -> None:
    assert _error(client_a.get("/v1/no/such/route"), 404)["code"] == "unknown_url"
    assert _error(client_a.put("/v1/fine_tuning/jobs"), 405)["code"] == "method_not_allowed"
    assert _error(client_a.get("/v1/files/file-nope"), 404)["param"] == "file_id"
    assert _error(APIClient().get("/v1/files"), 401)["type"] == "authentication_error"
    assert _error(_client("sk-ptg-wrong").get("/v1/files"), 401)["type"] == "authentication_error"
    invalid = _error(client_a.post("/v1/fine_tuning/jobs", {"model": "x"}, format="json"), 400)
    assert invalid["param"] == "training_file"


def test_an_unexpected_exception_becomes_a_500_in_the_error_shape() -> None:
    response = exception_handler(RuntimeError("secret detail"), {"view": None})
    assert response is not None and response.status_code == 500
    assert response.data["error"]["code"] == "internal_error"
    assert "secret detail" not in json.dumps(response.data)


# ---------------------------------------------------------------- idempotency


def test_same_key_same_body_replays_and_creates_once(client_a: APIClient, upload: Any) -> None:
    file_id = upload(jsonl(chat_lines(4))).json()["id"]
    body = {"model": "partage/tiny-llama", "training_file": file_id, "seed": 3}
    first = client_a.post("/v1/fine_tuning/jobs", body, format="json", HTTP_IDEMPOTENCY_KEY="k-1")
    again = client_a.post("/v1/fine_tuning/jobs", body, format="json", HTTP_IDEMPOTENCY_KEY="k-1")
    assert first.status_code == again.status_code == 200
    assert again.json() == first.json()
    assert again.headers["Idempotent-Replayed"] == "true"
    assert FineTuningJob.objects.count() == 1
    other = client_a.post(
        "/v1/fine_tuning/jobs", {**body, "seed": 4}, format="json", HTTP_IDEMPOTENCY_KEY="k-1"
    )
    assert _error(other, 409)["code"] == "idempotency_key_reused"
    assert FineTuningJob.objects.count() == 1
    # Without a key, each POST creates.
    client_a.post("/v1/fine_tuning/jobs", body, format="json")
    assert FineTuningJob.objects.count() == 2


def test_idempotent_multipart_upload_hashes_the_file_bytes(client_a: APIClient) -> None:
    from django.core.files.uploadedfile import SimpleUploadedFile

    def send(content: bytes) -> Any:
        return client_a.post(
            "/v1/files",
            {"file": SimpleUploadedFile("t.jsonl", content), "purpose": "fine-tune"},
            format="multipart",
            HTTP_IDEMPOTENCY_KEY="upload-1",
        )

    first, again = send(jsonl(chat_lines(3))), send(jsonl(chat_lines(3)))
    assert first.status_code == again.status_code == 200
    assert first.json()["id"] == again.json()["id"]
    assert File.objects.count() == 1
    assert _error(send(jsonl(chat_lines(5))), 409)["code"] == "idempotency_key_reused"


def test_a_failed_request_is_not_stored_and_keys_are_per_org(
    client_a: APIClient, client_b: APIClient
) -> None:
    bad = {"model": "partage/tiny-llama", "training_file": "file-missing"}
    assert (
        client_a.post(
            "/v1/fine_tuning/jobs", bad, format="json", HTTP_IDEMPOTENCY_KEY="k"
        ).status_code
        == 400
    )
    assert not IdempotencyRecord.objects.exists()
    hook = {
        "name": "h",
        "url": "https://93.184.216.34/h",
        "event_types": ["fine_tuning.job.failed"],
    }
    a = client_a.post("/v1/webhook_endpoints", hook, format="json", HTTP_IDEMPOTENCY_KEY="same")
    b = client_b.post("/v1/webhook_endpoints", hook, format="json", HTTP_IDEMPOTENCY_KEY="same")
    assert a.status_code == b.status_code == 200
    assert a.json()["id"] != b.json()["id"]


def test_bad_idempotency_keys_are_explained(client_a: APIClient) -> None:
    response = client_a.post("/v1/files", {}, HTTP_IDEMPOTENCY_KEY="x" * 256)
    assert _error(response, 400)["param"] == "Idempotency-Key"


# ---------------------------------------------------------------- rate limits


@pytest.fixture
def private_cache(settings: Any) -> None:
    settings.CACHES = {
        "default": {
            "BACKEND": "django.core.cache.backends.locmem.LocMemCache",
            "LOCATION": "api-tests",
        }
    }
    from django.core.cache import cache

    cache.clear()


def test_rate_limit_per_key_answers_429_with_retry_after(
    client_a: APIClient, client_b: APIClient, settings: Any, private_cache: None
) -> None:
    settings.PARTAGE_API_RATE_LIMIT = 3
    settings.PARTAGE_API_RATE_WINDOW_SECONDS = 60
    assert [client_a.get("/v1/files").status_code for _ in range(3)] == [200, 200, 200]
    limited = client_a.get("/v1/files")
    assert _error(limited, 429)["type"] == "rate_limit_error"
    assert 1 <= int(limited.headers["Retry-After"]) <= 60
    assert client_b.get("/v1/files").status_code == 200  # another key has its own budget


# ---------------------------------------------------------------- key scopes and accounts


def test_read_only_and_resource_limited_keys(org_a: Any, alice: Any) -> None:
    reader = _client(api_key_create(organization=org_a, name="r", read_only=True).secret)
    assert reader.get("/v1/fine_tuning/jobs").status_code == 200
    assert (
        _error(reader.post("/v1/fine_tuning/jobs", {}, format="json"), 403)["type"]
        == "permission_error"
    )
    files_only = _client(api_key_create(organization=org_a, name="f", resources=["files"]).secret)
    assert files_only.get("/v1/files").status_code == 200
    assert "limited to files" in _error(files_only.get("/v1/fine_tuning/jobs"), 403)["message"]
    hooks_only = _client(
        api_key_create(organization=org_a, name="w", resources=["webhooks"]).secret
    )
    assert hooks_only.get("/v1/webhook_endpoints").status_code == 200
    assert hooks_only.get("/v1/webhook_deliveries").status_code == 200
    assert hooks_only.get("/v1/files").status_code == 403


def test_a_key_cannot_mint_a_wider_key(org_a: Any) -> None:
    reader = _client(api_key_create(organization=org_a, name="r", read_only=True).secret)
    assert reader.post("/v1/api_keys", {"name": "x"}, format="json").status_code == 403
    keys_only = _client(api_key_create(organization=org_a, name="k", resources=["api_keys"]).secret)
    wider = keys_only.post("/v1/api_keys", {"name": "x", "resources": ["files"]}, format="json")
    assert _error(wider, 403)["param"] == "resources"
    unlimited = keys_only.post("/v1/api_keys", {"name": "x"}, format="json")
    assert _error(unlimited, 403)["param"] == "resources"
    same = keys_only.post("/v1/api_keys", {"name": "x", "resources": ["api_keys"]}, format="json")
    assert same.status_code == 200


def test_api_keys_show_the_secret_once_and_revoke(client_a: APIClient, org_a: Any) -> None:
    created = client_a.post("/v1/api_keys", {"name": "ci", "read_only": True}, format="json").json()
    secret = created["secret"]
    assert secret.startswith("sk-ptg-") and created["read_only"] is True
    listed = client_a.get("/v1/api_keys").json()
    assert created["id"] in [k["id"] for k in listed["data"]]
    assert all("secret" not in k for k in listed["data"])
    assert "secret" not in client_a.get(f"/v1/api_keys/{created['id']}").json()
    assert _client(secret).get("/v1/files").status_code == 200
    revoked = client_a.post(f"/v1/api_keys/{created['id']}/revoke").json()
    assert revoked["revoked_at"] is not None
    assert _client(secret).get("/v1/files").status_code == 401
    assert ApiKey.objects.get(pk=int(created["id"].removeprefix("key_"))).revoked_at is not None


def test_organization_and_members(client_a: APIClient, org_a: Any, alice: Any) -> None:
    org = client_a.get("/v1/organization").json()
    assert org["id"] == org_a.public_id and org["object"] == "organization"
    members = client_a.get("/v1/organization/members").json()
    assert [(m["username"], m["role"]) for m in members["data"]] == [("alice", "owner")]


# ---------------------------------------------------------------- webhook endpoints via the API


def test_webhook_endpoints_crud_test_and_delivery_log(
    client_a: APIClient,
    webhook_receiver: Any,
    eager_celery: None,
    django_capture_on_commit_callbacks: Any,
) -> None:
    created = client_a.post(
        "/v1/webhook_endpoints",
        {"name": "jobs", "url": webhook_receiver.url, "event_types": ["fine_tuning.job.succeeded"]},
        format="json",
    ).json()
    assert created["object"] == "webhook_endpoint" and created["signing_secret"].startswith(
        "whsec_"
    )
    endpoint_id = created["id"]
    shown = client_a.get(f"/v1/webhook_endpoints/{endpoint_id}").json()
    assert "signing_secret" not in shown and shown["signing_secret_hint"].startswith("whsec_")
    updated = client_a.post(
        f"/v1/webhook_endpoints/{endpoint_id}", {"name": "renamed"}, format="json"
    ).json()
    assert updated["name"] == "renamed"
    test = client_a.post(
        f"/v1/webhook_endpoints/{endpoint_id}/test",
        {"event_type": "fine_tuning.job.failed"},
        format="json",
    ).json()
    assert test["status_code"] == 200 and test["object"] == "webhook_endpoint.test"
    assert json.loads(webhook_receiver.received[0].body)["type"] == "fine_tuning.job.failed"
    log = client_a.get("/v1/webhook_deliveries").json()["data"]
    assert [a["status_code"] for a in log[0]["attempts"]] == [200]
    with django_capture_on_commit_callbacks(execute=True):
        client_a.post(f"/v1/webhook_deliveries/{log[0]['id']}/redeliver")
    redelivered = client_a.get(f"/v1/webhook_deliveries/{log[0]['id']}").json()
    assert redelivered["attempt_count"] == 2 and redelivered["status"] == "succeeded"
    assert len(webhook_receiver.received) == 2
    rotated = client_a.post(
        f"/v1/webhook_endpoints/{endpoint_id}/rotate_secret", {}, format="json"
    ).json()
    assert rotated["signing_secret"] != created["signing_secret"]
    deleted = client_a.delete(f"/v1/webhook_endpoints/{endpoint_id}").json()
    assert deleted == {"id": endpoint_id, "object": "webhook_endpoint.deleted", "deleted": True}
    assert client_a.get(f"/v1/webhook_endpoints/{endpoint_id}").status_code == 404
    assert WebhookDelivery.objects.count() == 1


def test_webhook_endpoint_refuses_internal_urls_and_unknown_events(
    client_a: APIClient, settings: Any
) -> None:
    settings.PARTAGE_WEBHOOK_ALLOW_PRIVATE = False
    internal = client_a.post(
        "/v1/webhook_endpoints",
        {"name": "x", "url": "http://169.254.169.254/", "event_types": ["fine_tuning.job.failed"]},
        format="json",
    )
    assert _error(internal, 400)["code"] == "webhook_url_not_allowed"
    unknown = client_a.post(
        "/v1/webhook_endpoints",
        {"name": "x", "url": "https://93.184.216.34/", "event_types": ["job.done"]},
        format="json",
    )
    assert _error(unknown, 400)["param"] == "event_types.0"


# ---------------------------------------------------------------- SSE


def _sse_events(response: Any) -> list[dict[str, str]]:
    text = b"".join(response.streaming_content).decode()
    events = []
    for block in text.split("\n\n"):
        fields = dict(
            line.split(": ", 1)
            for line in block.splitlines()
            if ": " in line and not line.startswith(":")
        )
        if fields:
            events.append(fields)
    return events


def test_event_stream_sends_every_event_then_ends_and_resumes(
    client_a: APIClient, org_a: Any
) -> None:
    job = job_for(org_a, status="succeeded", events=5)
    events = _sse_events(client_a.get(f"/v1/fine_tuning/jobs/{job.id}/events/stream"))
    ids = [e["id"] for e in events if e.get("event") == "fine_tuning.job.event"]
    assert ids == ["1", "2", "3", "4", "5"]
    assert json.loads(events[1]["data"])["object"] == "fine_tuning.job.event"
    assert events[-1]["event"] == "end" and json.loads(events[-1]["data"]) == {
        "status": "succeeded"
    }
    resumed = _sse_events(
        client_a.get(f"/v1/fine_tuning/jobs/{job.id}/events/stream", HTTP_LAST_EVENT_ID="3")
    )
    assert [e["id"] for e in resumed if "id" in e] == ["4", "5"]
    bad = client_a.get(f"/v1/fine_tuning/jobs/{job.id}/events/stream", HTTP_LAST_EVENT_ID="x")
    assert _error(bad, 400)["param"] == "Last-Event-ID"


def test_event_stream_of_a_running_job_stops_at_the_time_limit(
    client_a: APIClient, org_a: Any, settings: Any
) -> None:
    settings.PARTAGE_SSE_MAX_SECONDS = 0
    job = job_for(org_a, status="running", events=2)
    events = _sse_events(client_a.get(f"/v1/fine_tuning/jobs/{job.id}/events/stream"))
    assert [e.get("id") for e in events if "id" in e] == ["1", "2"]
    assert all(e.get("event") != "end" for e in events)


# ---------------------------------------------------------------- query counts


def _rate_counter_queries() -> int:
    """The rate limit's one atomic UPSERT, when the database keeps the count (no Redis)."""
    from django.conf import settings

    return 0 if settings.REDIS_URL or not settings.PARTAGE_API_RATE_LIMIT else 1


@pytest.mark.parametrize("count", [1, 100])
def test_job_list_costs_a_fixed_number_of_queries(
    client_a: APIClient, org_a: Any, count: int, django_assert_num_queries: Any
) -> None:
    for _ in range(count):
        job_for(org_a, events=0, checkpoints=0)
    client_a.get("/v1/files")  # records the key's last use (at most once a minute)
    with django_assert_num_queries(2 + _rate_counter_queries()):  # the key, the page
        response = client_a.get("/v1/fine_tuning/jobs?limit=100")
    assert len(response.json()["data"]) == count


def test_job_retrieve_costs_a_fixed_number_of_queries(
    client_a: APIClient, org_a: Any, django_assert_num_queries: Any
) -> None:
    job = job_for(org_a)
    client_a.get("/v1/files")
    with django_assert_num_queries(2 + _rate_counter_queries()):  # the key, the job
        assert client_a.get(f"/v1/fine_tuning/jobs/{job.id}").status_code == 200


@pytest.mark.parametrize("count", [1, 30])
def test_delivery_log_costs_a_fixed_number_of_queries(
    client_a: APIClient, org_a: Any, count: int, django_assert_num_queries: Any, settings: Any
) -> None:
    from marketplace.api.webhooks import services

    settings.PARTAGE_WEBHOOK_ALLOW_PRIVATE = True
    services.webhook_endpoint_create(
        organization=org_a,
        name="h",
        url="http://127.0.0.1:9/h",
        event_types=["fine_tuning.job.failed"],
    )
    for i in range(count):
        services.webhook_event_emit(
            organization=org_a, event_type="fine_tuning.job.failed", data={"id": f"j{i}"}
        )
    client_a.get("/v1/files")
    # the key, the deliveries with their events, the attempts
    with django_assert_num_queries(3 + _rate_counter_queries()):
        response = client_a.get("/v1/webhook_deliveries?limit=100")
    assert len(response.json()["data"]) == count


# ---------------------------------------------------------------- schema and docs


def test_schema_and_docs_are_served_without_a_key_and_offline(client: Any) -> None:
    schema = client.get("/v1/openapi.json").json()
    assert schema["openapi"].startswith("3.")
    assert "/v1/fine_tuning/jobs" in schema["paths"] and "/v1/webhook_endpoints" in schema["paths"]
    assert not any(p.startswith("/internal") for p in schema["paths"])
    create = schema["paths"]["/v1/fine_tuning/jobs"]["post"]
    assert any(p["name"] == "Idempotency-Key" for p in create["parameters"])
    assert "429" in create["responses"]
    docs = client.get("/v1/docs").content.decode()
    assert "/static/drf_spectacular_sidecar/swagger-ui-dist/swagger-ui-bundle.js" in docs
    assert "cdn" not in docs.lower()
    assert finders.find("drf_spectacular_sidecar/swagger-ui-dist/swagger-ui-bundle.js")
    assert client.get("/v1/redoc").status_code == 200
