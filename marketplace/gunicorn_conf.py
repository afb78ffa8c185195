"""gunicorn settings for the web tier (`gunicorn -c python:marketplace.gunicorn_conf ...`), used by
the embedded default (`partage_up`), the web image and the k8s Deployment alike.

With PROMETHEUS_MULTIPROC_DIR set, each worker writes its metrics to files there; a worker that
exits must be marked dead, or its live gauges keep counting in /metrics.
"""

from __future__ import annotations

import os
from typing import Any

# Idle keep-alive connections stay open this long (gunicorn's default is 2 s). A client reuses
# a pooled connection for up to its own expiry: 5 s for httpx (the openai SDK), 60 s for
# ingress-nginx's upstream keep-alive and cloud load balancers. When the server closes first,
# the close races the client's next request and that request dies with a dropped connection,
# so the server must wait longer than any of them. (The sync worker ignores keep-alive: it
# closes after every response, which never races.)
keepalive = 75


def child_exit(server: Any, worker: Any) -> None:
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(worker.pid)
