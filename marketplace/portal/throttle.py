"""Login throttling: after too many failures for one username from one address, wait a while.

Counts live in the cache (Redis in production), keyed by a hash of username and client IP, so a
locked-out attacker cannot lock the real user out from the user's own address.
"""

from __future__ import annotations

import hashlib
import time

from django.conf import settings
from django.core.cache import cache

FAILURE_LIMIT = getattr(settings, "PORTAL_LOGIN_FAILURE_LIMIT", 5)
WINDOW_SECONDS = getattr(settings, "PORTAL_LOGIN_WINDOW_SECONDS", 15 * 60)


def _key(kind: str, username: str, ip: str) -> str:
    digest = hashlib.sha256(f"{username.strip().lower()}|{ip}".encode()).hexdigest()[:32]
    return f"portal:login:{kind}:{digest}"


def login_retry_after(*, username: str, ip: str) -> int:
    """Seconds until this username may try again from this address; 0 when it may now."""
    until = cache.get(_key("until", username, ip))
    if until is None:
        return 0
    return max(0, int(until - time.time()))


def login_failure_record(*, username: str, ip: str) -> int:
    """Count one failure; returns the failures so far in the window."""
    key = _key("count", username, ip)
    cache.add(key, 0, timeout=WINDOW_SECONDS)
    try:
        failures = cache.incr(key)
    except ValueError:  # expired between add and incr
        cache.set(key, 1, timeout=WINDOW_SECONDS)
        failures = 1
    if failures >= FAILURE_LIMIT:
        cache.set(_key("until", username, ip), time.time() + WINDOW_SECONDS, timeout=WINDOW_SECONDS)
    return int(failures)


def login_success_record(*, username: str, ip: str) -> None:
    cache.delete_many([_key("count", username, ip), _key("until", username, ip)])
