"""kombu's Redis transport, made to survive a broker outage with work held for later.

Why: when the broker connection breaks, Celery first `collect()`s the connection, then closes
it. In kombu 5.7, collect's close of the channel stops at the read of the broken socket (a
ConnectionError, swallowed), before the channel is marked closed, and collect then detaches
the transport. The second close runs the whole channel close again, with no transport left:
restoring the unacknowledged messages (every countdown/eta task the worker holds) needs a new
Redis pool, whose parameters come from the detached transport: `AttributeError: 'NoneType'
object has no attribute 'hostname'`. That is not a connection error, so the worker dies.

Here the channel's close goes through in one pass, whatever the socket says; the messages it
could not put back while Redis was down are put back by the next channel that connects (they
are still in Redis' unacked hash, see `restore_by_tag`), so a countdown task runs once, on
time or as soon as the broker is back, instead of an hour later (visibility_timeout).
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from kombu.transport import redis

log = logging.getLogger("partage.broker")

# Delivery tags whose restore failed because Redis was unreachable, by unacked hash key.
_unrestored: dict[str, set[str]] = {}
_unrestored_lock = threading.Lock()


def _remember(unacked_key: str, tags: set[str]) -> None:
    with _unrestored_lock:
        _unrestored.setdefault(unacked_key, set()).update(tags)


def _take(unacked_key: str) -> set[str]:
    with _unrestored_lock:
        return _unrestored.pop(unacked_key, set())


class QoS(redis.QoS):
    def restore_unacked(self, client: Any = None) -> None:
        tags = set(self._delivered)
        try:
            if self.channel.connection is None or self.channel.connection.client is None:
                raise redis.redis.ConnectionError("the broker connection is already closed")
            super().restore_unacked(client)
        except (redis.redis.ConnectionError, redis.redis.TimeoutError, OSError) as e:
            self._delivered.clear()
            _remember(self.unacked_key, tags)
            log.warning(
                "broker unreachable: %d unacknowledged message(s) will be restored on reconnect "
                "(%s)",
                len(tags),
                e,
            )


class Channel(redis.Channel):
    QoS = QoS

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)  # connects (PING), or raises
        self._restore_unrestored()

    def _restore_unrestored(self) -> None:
        tags = _take(self.unacked_key)
        if not tags:
            return
        restored = 0
        try:
            for tag in sorted(tags):
                self.qos.restore_by_tag(tag, leftmost=True)
                tags.discard(tag)
                restored += 1
        except (redis.redis.ConnectionError, redis.redis.TimeoutError, OSError):
            _remember(self.unacked_key, tags)  # down again: the next channel tries
            raise
        finally:
            if restored:
                log.warning("restored %d message(s) held when the broker went away", restored)

    def close(self) -> None:
        if self._in_poll and not self.closed:
            # The pending BRPOP's socket is broken: there is nothing to read, and raising
            # here would leave the channel half-closed (see the module docstring).
            try:
                self._brpop_read()
            except redis.Empty:
                pass
            except (redis.redis.ConnectionError, redis.redis.TimeoutError, OSError):
                self._in_poll = False
        super().close()


class Transport(redis.Transport):
    Channel = Channel
