"""Rate limits per API key, counted in the shared cache (Redis in production), fixed windows.

The limit is PARTAGE_API_RATE_LIMIT requests per PARTAGE_API_RATE_WINDOW_SECONDS. Over it, the
answer is 429 with Retry-After: the seconds until the window ends.
"""

from __future__ import annotations

import logging
import math
import time
from typing import Any

from django.conf import settings
from django.core.cache import cache
from rest_framework.request import Request
from rest_framework.throttling import BaseThrottle

from marketplace.api.authentication import ApiKeyPrincipal

logger = logging.getLogger("partage.api")


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
        bucket = int(now // window)
        cache_key = f"api-rate:{principal.key.pk}:{bucket}"
        try:
            try:
                count = cache.incr(cache_key)  # one round trip on the hot path
            except ValueError:  # first request of the window
                count = 1 if cache.add(cache_key, 1, timeout=window * 2) else cache.incr(cache_key)
        except Exception:  # the cache is down: serve rather than refuse everyone
            logger.warning("rate-limit cache unavailable", exc_info=True)
            return True
        if count > limit:
            self.retry_after = max((bucket + 1) * window - now, 1)
            return False
        return True

    def wait(self) -> float | None:
        return math.ceil(self.retry_after) if self.retry_after else None
