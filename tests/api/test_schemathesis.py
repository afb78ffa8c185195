"""Fuzz every /v1 operation from the OpenAPI schema (schemathesis) with its default checks, all
of them: no 5xx, every response matches the schema, valid requests are accepted and invalid
ones refused. So the schema must describe exactly what the server does. Bounded: a few
examples per operation."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import HealthCheck, settings

from tests.api.schema_checks import CHECKS, schema


@pytest.fixture
def fuzz_key(key_a: str, settings: Any, wsgi_calls: None) -> str:
    settings.PARTAGE_SSE_MAX_SECONDS = 1
    return key_a


# Issue 14 point 9 is not finished for these operations: the server refuses, with a 400, requests
# whose every field matches the schema, for reasons the schema does not state yet (an unknown
# flavor, pool, model or file, a period that is no month, end before start, a URL that does not
# resolve, contents that are not JSONL), or accepts a number where the schema says string, or
# an unknown query parameter. They
# are still fuzzed, with the response checks (no 5xx, conforming responses); every other
# operation gets all of schemathesis' default checks. Remove an entry once it passes them.
NOT_YET_TRUE = {
    "POST /v1/api_keys": "resources: [0] is accepted (DRF CharField coerces numbers)",
    "POST /v1/billing/topups": "an unknown organization or malformed amount is a 400",
    "GET /v1/billing/usage": "period 0000-00 matches the pattern; an unknown cursor is a 400",
    "POST /v1/bookings": "unknown flavor or pool, end before start: 400",
    "POST /v1/bookings/quote": "unknown flavor or pool, end before start: 400",
    "GET /v1/files": "unknown query parameters are ignored, where the schema forbids them "
    "(every list may show this with other examples: the server refuses no unknown parameter)",
    "POST /v1/files": "contents that are not JSONL are a 400",
    "POST /v1/fine_tuning/jobs": "an unknown model or training file is a 400",
    "GET /v1/offers": "an unknown country or flavor is a 400",
    "POST /v1/placement_estimate": "an unknown flavor is a 400",
    "POST /v1/pools": "the schema marks no field required; the server needs them",
    "PATCH /v1/pools/{pool_id}": "out-of-range values and unknown fields are a 400",
    "POST /v1/webhook_endpoints": "url must be http(s) and resolve; event types from the catalog",
    "POST /v1/webhook_endpoints/{webhook_endpoint_id}/rotate_secret": "control characters "
    "in the id are a 400",
    "POST /v1/webhook_endpoints/{webhook_endpoint_id}/test": "a NUL character anywhere in the "
    "body is a 400 (PostgreSQL stores none), where the schema allows it in any string",
    "PATCH /v1/billing/settings": "low_balance_threshold is any JSON in the schema (an object "
    "passes); the server wants a decimal string or null: 400",
    "POST /v1/chat/completions": "an unknown model is OpenAI's 404 model_not_found for a "
    "schema-valid request",
    "POST /v1/organization/retention": "retention_days null is accepted (the platform default) "
    "where the schema requires an integer",
}


@pytest.mark.django_db
@schema.parametrize()
@settings(
    max_examples=6,
    deadline=None,
    derandomize=True,
    suppress_health_check=list(HealthCheck),
)
def test_every_operation_keeps_to_the_schema(case: Any, fuzz_key: str) -> None:
    headers = {"Authorization": f"Bearer {fuzz_key}"}
    if case.operation.label in NOT_YET_TRUE:
        case.call_and_validate(headers=headers, checks=CHECKS)
    else:
        case.call_and_validate(headers=headers)  # schemathesis' default checks, all of them


def test_the_unfinished_list_names_real_operations() -> None:
    labels = {operation.label for operation in _operations()}
    assert set(NOT_YET_TRUE) <= labels, set(NOT_YET_TRUE) - labels


def _operations() -> list[Any]:
    return [result.ok() for result in schema.get_all_operations()]


@pytest.fixture
def populated(org_a: Any, fuzz_key: str, settings: Any) -> dict[str, str]:
    """Real objects of org A, so that successful responses are checked too, not only errors."""
    from marketplace.api.webhooks import services as webhooks
    from tests.api.factories import job_for

    settings.PARTAGE_WEBHOOK_ALLOW_PRIVATE = True
    job = job_for(org_a, status="succeeded", events=4, checkpoints=2)
    running = job_for(org_a, status="running", events=1)
    endpoint = webhooks.webhook_endpoint_create(
        organization=org_a,
        name="h",
        url="http://127.0.0.1:9/h",
        event_types=["fine_tuning.job.failed"],
    )
    event = webhooks.webhook_event_emit(
        organization=org_a, event_type="fine_tuning.job.failed", data={"id": job.id}
    )
    webhooks.webhook_deliveries_sweep()  # one failed attempt (nothing listens on port 9)
    return {
        "job_id": job.id,
        "running_job_id": running.id,
        "file_id": job.training_file_id,
        "model_id": job.fine_tuned_model,
        "webhook_endpoint_id": endpoint.id,
        "delivery_id": event.deliveries.get().id,
        "key_id": f"key_{org_a.api_keys.get().pk}",
    }


DETAIL_GETS = [
    ("/v1/files", {}),
    ("/v1/files/{file_id}", {"file_id"}),
    ("/v1/files/{file_id}/content", {"file_id"}),
    ("/v1/fine_tuning/jobs", {}),
    ("/v1/fine_tuning/jobs/{job_id}", {"job_id"}),
    ("/v1/fine_tuning/jobs/{job_id}/events", {"job_id"}),
    ("/v1/fine_tuning/jobs/{job_id}/events/stream", {"job_id"}),
    ("/v1/fine_tuning/jobs/{job_id}/checkpoints", {"job_id"}),
    ("/v1/models", {}),
    ("/v1/models/{model_id}", {"model_id"}),
    ("/v1/webhook_endpoints", {}),
    ("/v1/webhook_endpoints/{webhook_endpoint_id}", {"webhook_endpoint_id"}),
    ("/v1/webhook_deliveries", {}),
    ("/v1/webhook_deliveries/{delivery_id}", {"delivery_id"}),
    ("/v1/webhook_event_types", {}),
    ("/v1/organization", {}),
    ("/v1/organization/members", {}),
    ("/v1/api_keys", {}),
    ("/v1/api_keys/{key_id}", {"key_id"}),
]


@pytest.mark.django_db
@pytest.mark.parametrize(("path", "params"), DETAIL_GETS)
def test_successful_reads_match_the_schema(
    path: str, params: set[str], populated: dict[str, str], fuzz_key: str
) -> None:
    operation = schema[path]["GET"]
    case = operation.Case(path_parameters={name: populated[name] for name in params})
    response = case.call_and_validate(
        headers={"Authorization": f"Bearer {fuzz_key}"}, checks=CHECKS
    )
    assert response.status_code == 200, response.text
    if path.endswith("s") and "data" in response.text:
        assert response.json()["data"], f"{path} returned an empty list: nothing was checked"


@pytest.mark.django_db
def test_job_actions_match_the_schema(populated: dict[str, str], fuzz_key: str) -> None:
    for action in ("pause", "cancel"):
        operation = schema[f"/v1/fine_tuning/jobs/{{job_id}}/{action}"]["POST"]
        case = operation.Case(path_parameters={"job_id": populated["running_job_id"]})
        response = case.call_and_validate(
            headers={"Authorization": f"Bearer {fuzz_key}"}, checks=CHECKS
        )
        assert response.status_code in (200, 409), response.text


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("path", "param"),
    [
        ("/v1/files/{file_id}", "file_id"),
        ("/v1/webhook_endpoints/{webhook_endpoint_id}", "webhook_endpoint_id"),
    ],
)
def test_successful_deletes_match_the_schema(
    path: str, param: str, populated: dict[str, str], fuzz_key: str
) -> None:
    case = schema[path]["DELETE"].Case(path_parameters={param: populated[param]})
    response = case.call_and_validate(
        headers={"Authorization": f"Bearer {fuzz_key}"}, checks=CHECKS
    )
    assert response.status_code == 200 and response.json()["deleted"] is True, response.text
