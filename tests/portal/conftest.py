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
