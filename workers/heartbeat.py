"""Heartbeats: who last showed signs of life, and when.

Each Celery worker marks `worker:<hostname>` every PARTAGE_HEARTBEAT_SECONDS from its consumer
loop (a worker stuck or dead stops marking), and touches PARTAGE_WORKER_HEARTBEAT_FILE, which
its Kubernetes liveness probe reads (`python -m workers.health`). The periodic passes mark
`task:<name>` when they run, so a dead beat shows too. /readyz and /metrics read the marks.

With Redis the marks are one hash (HSET is atomic per worker); on the embedded default, one
worker and the web share the file cache.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any

log = logging.getLogger("partage.heartbeat")

KEY = "partage:heartbeats"
WORKER_PREFIX = "worker:"
FORGET_AFTER_SECONDS = 24 * 3600  # a worker gone for a day is dropped from the list


def _redis() -> Any:
    import redis
    from django.conf import settings

    return redis.Redis.from_url(settings.REDIS_URL, socket_timeout=2, socket_connect_timeout=2)


def heartbeat_record(source: str, *, at: float | None = None) -> None:
    """Mark `source` alive now (Unix seconds). Never raises: a heartbeat is best effort."""
    from django.conf import settings
    from django.core.cache import cache

    at = time.time() if at is None else at
    try:
        if settings.REDIS_URL:
            client = _redis()
            client.hset(KEY, source, repr(at))
            client.expire(KEY, FORGET_AFTER_SECONDS)
        else:
            beats = cache.get(KEY) or {}
            beats[source] = at
            cache.set(KEY, beats, timeout=None)
    except Exception as e:  # the broker or cache is down: the next beat tries again
        log.warning("heartbeat %s not recorded: %s", source, e)


def heartbeats() -> dict[str, float]:
    """Every known source and its last mark (Unix seconds); raises if the store is down."""
    from django.conf import settings
    from django.core.cache import cache

    if settings.REDIS_URL:
        raw = _redis().hgetall(KEY)
        beats = {k.decode(): float(v) for k, v in raw.items()}
    else:
        beats = dict(cache.get(KEY) or {})
    horizon = time.time() - FORGET_AFTER_SECONDS
    return {source: at for source, at in beats.items() if at >= horizon}


def ages(now: float | None = None) -> dict[str, float]:
    """Seconds since each source's last mark."""
    now = time.time() if now is None else now
    return {source: max(now - at, 0.0) for source, at in heartbeats().items()}


def workers_alive(max_age: float, now: float | None = None) -> list[str]:
    return sorted(
        source.removeprefix(WORKER_PREFIX)
        for source, age in ages(now).items()
        if source.startswith(WORKER_PREFIX) and age <= max_age
    )


def heartbeat_file_touch(path: str | os.PathLike[str]) -> None:
    target = Path(path)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        target.touch()
    except OSError as e:
        log.warning("heartbeat file %s not touched: %s", target, e)


def heartbeat_file_age(path: str | os.PathLike[str]) -> float | None:
    """Seconds since the file was touched, or None when it does not exist."""
    try:
        return max(time.time() - Path(path).stat().st_mtime, 0.0)
    except FileNotFoundError:
        return None
