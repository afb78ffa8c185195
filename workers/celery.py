"""The Celery application. Broker: Redis when REDIS_URL is set, else kombu's filesystem transport."""

from __future__ import annotations

import os
from typing import Any

from celery import Celery
from celery.signals import worker_init

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "marketplace.settings")

app = Celery("partage")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.conf.update(
    task_acks_late=True,
    task_reject_on_worker_lost=True,
    worker_prefetch_multiplier=1,
    task_ignore_result=True,
    broker_connection_retry_on_startup=True,
    beat_schedule={
        "partage-resync": {"task": "partage.resync", "schedule": 15.0},
        "partage-admission": {"task": "partage.admission_pass", "schedule": 10.0},
    },
)
app.autodiscover_tasks(["workers"], related_name="tasks")


@worker_init.connect
def _metrics_exporter(**kwargs: object) -> None:
    """Serve the worker's own metrics (dispatch, Kubernetes API latency) on PARTAGE_METRICS_PORT."""
    from workers.metrics import exporter_start

    exporter_start()


def task_send(name: str, *args: Any, **options: Any) -> None:
    """Enqueue the task registered as `name` with positional `args`.

    By name, so that the marketplace's services need not import the modules that define the
    tasks (those import the services: a cycle). Eager mode (tests) runs it here, so its module
    is loaded first if this process has not loaded it yet.
    """
    if name not in app.tasks:
        if not app.conf.task_always_eager:
            app.send_task(name, args=args, **options)
            return
        app.loader.import_default_modules()  # autodiscovery: workers/tasks.py and the others
    app.tasks[name].apply_async(args, **options)
