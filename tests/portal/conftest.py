"""Portal fixtures: a private in-memory cache (login throttling), logged-in browsers of tenants."""

from __future__ import annotations

from typing import Any

import pytest
from django.test import Client

from marketplace.accounts.models import User


@pytest.fixture(autouse=True)
def _private_cache(settings: Any) -> None:
    settings.CACHES = {
        "default": {
            "BACKEND": "django.core.cache.backends.locmem.LocMemCache",
            "LOCATION": "portal",
        }
    }
    from django.core.cache import cache

    cache.clear()


def logged_in(user: User) -> Client:
    client = Client()
    client.force_login(user)
    return client


@pytest.fixture
def alice_web(alice: User) -> Client:
    return logged_in(alice)


@pytest.fixture
def bob_web(bob: User) -> Client:
    return logged_in(bob)


@pytest.fixture
def carol_web(carol: User) -> Client:
    return logged_in(carol)


def make_file(org: Any, content: bytes | None = None, name: str = "train.jsonl") -> Any:
    import io

    from marketplace.finetuning.services import file_create
    from tests.conftest import chat_lines, jsonl

    data = content if content is not None else jsonl(chat_lines(8))
    return file_create(organization=org, stream=io.BytesIO(data), filename=name, size=len(data))


def make_job(org: Any, captured: Any, **kwargs: Any) -> Any:
    """A queued job; the admission callbacks are captured, not run, so nothing trains."""
    from marketplace.finetuning.services import job_create

    file = make_file(org)
    with captured(execute=False):
        return job_create(
            organization=org, model="partage/tiny-llama", training_file=file.id, **kwargs
        )


def assert_list_queries_flat(
    client: Client, url: str, org: Any, captured: Any, assert_max_queries: Any
) -> None:
    """The page sends no more queries with six jobs than with one."""
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    make_job(org, captured)
    with CaptureQueriesContext(connection) as one:
        assert client.get(url).status_code == 200
    for _ in range(5):
        make_job(org, captured)
    with assert_max_queries(len(one.captured_queries)):
        assert client.get(url).status_code == 200
