"""On PostgreSQL (and Redis), with real threads: idempotency under concurrent duplicates, and a
rate limit that holds when many requests race for the last slots."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable
from typing import Any

import pytest
from django.db import connection
from rest_framework.test import APIClient

from marketplace.api.models import IdempotencyRecord, WebhookEndpoint

pytestmark = [pytest.mark.pg, pytest.mark.django_db(transaction=True)]

THREADS = 8


def _race(count: int, work: Callable[[int], Any]) -> list[Any]:
    barrier = threading.Barrier(count)
    results: list[Any] = [None] * count

    def run(index: int) -> None:
        try:
            barrier.wait(timeout=30)
            results[index] = work(index)
        except Exception as e:  # report, don't hide
            results[index] = e
        finally:
            connection.close()

    threads = [threading.Thread(target=run, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    return results


def _client(secret: str) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {secret}")
    return client


@pytest.fixture(autouse=True)
def _needs_postgres() -> None:
    if connection.vendor != "postgresql":
        pytest.skip("race tests need PostgreSQL: run with DATABASE_URL=postgres://… -m pg")


HOOK = {"name": "h", "url": "https://93.184.216.34/hook", "event_types": ["fine_tuning.job.failed"]}


def test_concurrent_duplicates_get_one_object_and_the_same_answer(key_a: str) -> None:
    key = str(uuid.uuid4())

    def post(_: int) -> Any:
        return _client(key_a).post(
            "/v1/webhook_endpoints", HOOK, format="json", HTTP_IDEMPOTENCY_KEY=key
        )

    responses = _race(THREADS, post)
    assert all(not isinstance(r, Exception) for r in responses), responses
    assert [r.status_code for r in responses] == [200] * THREADS, [r.content for r in responses]
    bodies = [r.json() for r in responses]
    assert all(b == bodies[0] for b in bodies)
    assert WebhookEndpoint.objects.count() == 1
    assert IdempotencyRecord.objects.filter(key=key).count() == 1
    assert sum(r.headers.get("Idempotent-Replayed") == "true" for r in responses) == THREADS - 1


def test_concurrent_different_bodies_with_one_key_create_once(key_a: str) -> None:
    key = str(uuid.uuid4())

    def post(index: int) -> Any:
        body = {**HOOK, "name": f"hook-{index % 2}"}
        return _client(key_a).post(
            "/v1/webhook_endpoints", body, format="json", HTTP_IDEMPOTENCY_KEY=key
        )

    responses = _race(THREADS, post)
    codes = sorted(r.status_code for r in responses)
    assert set(codes) <= {200, 409}
    winner = WebhookEndpoint.objects.get()
    # Every 200 is the winner's answer; every other body was refused.
    for response in responses:
        if response.status_code == 200:
            assert response.json()["id"] == winner.id
        else:
            assert response.json()["error"]["code"] == "idempotency_key_reused"
    assert codes.count(200) == THREADS // 2  # the winner's twin bodies replay it


def test_rate_limit_holds_under_a_race(key_a: str, settings: Any) -> None:
    settings.CACHES = {
        "default": {
            "BACKEND": "django.core.cache.backends.redis.RedisCache",
            "LOCATION": settings.REDIS_URL or "redis://127.0.0.1:6379/6",
            "KEY_PREFIX": f"api-test-{uuid.uuid4().hex}",
        }
    }
    settings.PARTAGE_API_RATE_LIMIT = 5
    settings.PARTAGE_API_RATE_WINDOW_SECONDS = 3600

    responses = _race(12, lambda _: _client(key_a).get("/v1/files"))
    codes = sorted(r.status_code for r in responses)
    assert codes == [200] * 5 + [429] * 7, codes
    assert all(int(r.headers["Retry-After"]) > 0 for r in responses if r.status_code == 429)
