"""`python -m workers.health`: is this pod's Celery worker alive? A Kubernetes liveness probe.

Exits 0 when the worker's consumer loop touched PARTAGE_WORKER_HEARTBEAT_FILE less than
--max-age seconds ago, else 1 with the reason on stderr. The consumer loop stops marking while
the broker is down (it is busy reconnecting, with backoff): a stale file with an unreachable
broker passes, since a broker outage, which the worker rides out, must not get every worker
restarted. A stale file with the broker up is a stuck or dead worker.
"""

from __future__ import annotations

import argparse
import os
import sys

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "marketplace.settings")


def main(argv: list[str] | None = None) -> int:
    from django.conf import settings

    from workers.heartbeat import heartbeat_file_age

    parser = argparse.ArgumentParser(prog="python -m workers.health", description=__doc__)
    parser.add_argument(
        "--max-age",
        type=float,
        default=settings.PARTAGE_HEARTBEAT_MAX_AGE_SECONDS,
        help="seconds without a heartbeat after which the worker counts as dead",
    )
    args = parser.parse_args(argv)
    path = settings.PARTAGE_WORKER_HEARTBEAT_FILE
    age = heartbeat_file_age(path)
    if age is None:
        print(f"worker dead: no heartbeat file at {path} (never started?)", file=sys.stderr)
        return 1
    if age > args.max_age:
        if not broker_reachable():
            print(f"worker waiting for the broker: last heartbeat {age:.0f} s ago")
            return 0
        print(f"worker dead: last heartbeat {age:.0f} s ago (limit {args.max_age:.0f} s)",
              file=sys.stderr)  # fmt: skip
        return 1
    print(f"worker alive: last heartbeat {age:.0f} s ago")
    return 0


def broker_reachable() -> bool:
    from workers.celery import app

    try:
        with app.connection_for_write() as conn:
            conn.ensure_connection(max_retries=1, timeout=5)
        return True
    except Exception:
        return False


if __name__ == "__main__":
    sys.exit(main())
