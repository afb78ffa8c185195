"""Prometheus metrics: jobs by state, queue depth, dispatch latency, GPU-seconds, API latency.

Counts that the database knows (jobs by state, GPU-seconds) are read from it at scrape time,
so every process reports the same truth. Latencies are observed in the process that measures
them (executor, reconciler); set PROMETHEUS_MULTIPROC_DIR to aggregate worker processes.
`render()` is what the web's /metrics serves (marketplace/api/internal.py); Celery workers and
the reconciler serve their own on PARTAGE_METRICS_PORT (`exporter_start`).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
    multiprocess,
    start_http_server,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.registry import REGISTRY, Collector

# Multiprocess mode writes one file per process and metric there, from the first metric on.
if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
    os.makedirs(os.environ["PROMETHEUS_MULTIPROC_DIR"], exist_ok=True)

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)

K8S_API_SECONDS = Histogram(
    "partage_k8s_api_request_seconds",
    "Kubernetes API calls made by the executor, by operation and outcome.",
    ["operation", "status"],
    buckets=LATENCY_BUCKETS,
)
DISPATCH_API_SECONDS = Histogram(
    "partage_dispatch_create_seconds",
    "Time to create (or adopt) one attempt's Job, retries included.",
    buckets=LATENCY_BUCKETS,
)
DISPATCH_LATENCY_SECONDS = Histogram(
    "partage_dispatch_latency_seconds",
    "From the job's creation through the API to its first Job appearing on the cluster.",
    buckets=LATENCY_BUCKETS,
)
K8S_JOBS_CREATED = Counter("partage_k8s_jobs_created_total", "Jobs created on a cluster.")
K8S_JOBS_ADOPTED = Counter(
    "partage_k8s_jobs_adopted_total", "Creates answered 409 where the existing Job was ours."
)
RECONCILER_EVENTS = Counter(
    "partage_reconciler_events_total",
    "Watch events handled, by resource and type.",
    ["resource", "type"],
)
RECONCILER_RELISTS = Counter(
    "partage_reconciler_relists_total", "Relists after a watch's resourceVersion expired (410)."
)


def observe_k8s_call(operation: str, status: str, seconds: float) -> None:
    K8S_API_SECONDS.labels(operation=operation, status=status).observe(seconds)


class DatabaseCollector(Collector):
    """Jobs by state, broker queue depth and GPU-seconds, read when Prometheus scrapes."""

    def collect(self) -> Iterator[Any]:
        from django.db.models import Count, Sum

        from marketplace.finetuning.models import FineTuningJob, JobAttempt

        jobs = GaugeMetricFamily(
            "partage_jobs", "Fine-tuning jobs by internal state.", labels=["state"]
        )
        counts = dict(
            FineTuningJob.objects.values_list("status").annotate(n=Count("pk")).order_by()
        )
        for state in FineTuningJob._meta.get_field("status").choices or []:
            jobs.add_metric([state[0]], counts.get(state[0], 0))
        yield jobs
        gpu = CounterMetricFamily(
            "partage_gpu_seconds",
            "GPU-seconds of ended attempts, by GPU flavor.",
            labels=["flavor"],
        )
        rows = (
            JobAttempt.objects.filter(ended_at__isnull=False)
            .values_list("job__gpu_flavor")
            .annotate(total=Sum("gpu_seconds"))
            .order_by()
        )
        for flavor, total in rows:
            gpu.add_metric([flavor or "unspecified"], float(total or 0))
        yield gpu
        yield from heartbeat_metrics()
        depth = queue_depth()
        if depth is not None:
            queue = GaugeMetricFamily(
                "partage_queue_depth", "Messages waiting in the Celery queue."
            )
            queue.add_metric([], depth)
            yield queue


def heartbeat_metrics() -> Iterator[Any]:
    """Seconds since each worker and periodic pass last showed life, and live workers."""
    from django.conf import settings

    from workers import heartbeat

    try:
        ages = heartbeat.ages()
    except Exception:  # the store is down: the broker check and its alert say so
        return
    age = GaugeMetricFamily(
        "partage_heartbeat_age_seconds",
        "Seconds since the last heartbeat, by source (worker:<host>, task:<periodic task>).",
        labels=["source"],
    )
    for source, seconds in sorted(ages.items()):
        age.add_metric([source], seconds)
    yield age
    alive = GaugeMetricFamily(
        "partage_workers_alive",
        "Celery workers whose last heartbeat is within PARTAGE_HEARTBEAT_MAX_AGE_SECONDS.",
    )
    max_age = settings.PARTAGE_HEARTBEAT_MAX_AGE_SECONDS
    alive.add_metric(
        [],
        sum(1 for s, a in ages.items() if s.startswith(heartbeat.WORKER_PREFIX) and a <= max_age),
    )
    yield alive


def queue_depth(queue: str = "celery") -> int | None:
    """Length of the Redis list that holds the Celery queue; None without a Redis broker."""
    from django.conf import settings

    url = getattr(settings, "REDIS_URL", None)
    if not url:
        return None
    import redis

    try:
        length: Any = redis.Redis.from_url(url, socket_timeout=2).llen(queue)
        return int(length)
    except redis.RedisError:
        return None


def process_registry() -> CollectorRegistry:
    """This process's metrics, or every process's under PROMETHEUS_MULTIPROC_DIR."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return registry
    return REGISTRY


def exporter_start(port: int | str | None = None) -> int | None:
    """Serve this process's metrics on `port` (default: PARTAGE_METRICS_PORT), for processes
    without a web view: Celery workers, the reconciler. Returns the port, or None when unset."""
    port = port or os.environ.get("PARTAGE_METRICS_PORT")
    if not port:
        return None
    start_http_server(int(port), registry=process_registry())
    return int(port)


def render() -> tuple[bytes, str]:
    """The exposition text and its content type."""
    database = CollectorRegistry()
    database.register(DatabaseCollector())
    return generate_latest(process_registry()) + generate_latest(database), CONTENT_TYPE_LATEST
