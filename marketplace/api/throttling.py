"""Rate limits per API key in fixed windows, counted atomically wherever the count is kept.

The limit is PARTAGE_API_RATE_LIMIT requests per PARTAGE_API_RATE_WINDOW_SECONDS. Over it, the
answer is 429 with Retry-After: the seconds until the window ends.

Every request is one atomic increment that returns the new count, so concurrent requests in any
number of web processes can never read the same count and both pass:
- with Redis (REDIS_URL), a Lua script: INCR, and EXPIRE on the window's first request;
- on the embedded default (no Redis), an UPSERT on the key's counter row in the database (one
  row per key, reset when a new window starts). Django's file cache, used before, read and
  wrote the count in two steps and let 2-2.5x the limit through under 50 concurrent clients.
"""

from __future__ import annotations

import functools
import logging
import math
import time
from typing import Any

from django.conf import settings
from django.db import connection
from rest_framework.request import Request
from rest_framework.throttling import BaseThrottle

from marketplace.accounts.models import ApiKey
from marketplace.api.authentication import ApiKeyPrincipal

logger = logging.getLogger("partage.api")

# KEYS[1] the window's counter; ARGV[1] its lifetime in seconds. Returns the new count.
_INCR_LUA = """
local count = redis.call('INCR', KEYS[1])
if count == 1 then redis.call('EXPIRE', KEYS[1], ARGV[1]) end
return count
"""


@functools.cache
def _redis_incr(url: str) -> Any:
    import redis

    client = redis.Redis.from_url(url, socket_timeout=2, socket_connect_timeout=2)
    return client.register_script(_INCR_LUA)


def _count_in_redis(key_prefix: str, window_number: int, window: int) -> int:
    # Named by the key's public prefix (random, unique for ever), not its row id: ids start
    # again at 1 in a recreated database, and would inherit the old key's count in Redis.
    incr = _redis_incr(settings.REDIS_URL)
    return int(incr(keys=[f"partage:api-rate:{key_prefix}:{window_number}"], args=[window * 2]))


# Both sides of SET read the row as it was: a new window restarts the count at 1. The table is
# ApiRateCounter's (its Meta.db_table); the values are parameters.
_UPSERT_COUNT = (
    "INSERT INTO api_rate_counter (api_key_id, window_number, count) VALUES (%s, %s, 1) "
    "ON CONFLICT (api_key_id) DO UPDATE SET count = CASE "
    "WHEN api_rate_counter.window_number = excluded.window_number "
    "THEN api_rate_counter.count + 1 ELSE 1 END, "
    "window_number = excluded.window_number "
    "RETURNING count"
)


def _count_in_database(key_id: int, window_number: int) -> int:
    with connection.cursor() as cursor:
        cursor.execute(_UPSERT_COUNT, [key_id, window_number])
        row = cursor.fetchone()
    return int(row[0])


def request_count(key: ApiKey, *, window_number: int, window: int) -> int:
    """This request's number within the API key's window (1 for the first)."""
    if settings.REDIS_URL:
        return _count_in_redis(key.prefix, window_number, window)
    return _count_in_database(key.pk, window_number)


class ApiKeyRateThrottle(BaseThrottle):
    def __init__(self) -> None:
        self.retry_after: float | None = None

    def allow_request(self, request: Request, view: Any) -> bool:
        principal = request.user
        limit = int(getattr(settings, "PARTAGE_API_RATE_LIMIT", 0))
        if not isinstance(principal, ApiKeyPrincipal) or limit <= 0:
            return True
        window = int(getattr(settings, "PARTAGE_API_RATE_WINDOW_SECONDS", 60))
        now = time.time()
        window_number = int(now // window)
        try:
            count = request_count(principal.key, window_number=window_number, window=window)
        except Exception:  # the counter's store is down: serve rather than refuse everyone
            logger.warning("rate-limit counter unavailable", exc_info=True)
            return True
        if count > limit:
            self.retry_after = max((window_number + 1) * window - now, 1)
            return False
        return True

    def wait(self) -> float | None:
        return math.ceil(self.retry_after) if self.retry_after else None
