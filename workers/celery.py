"""The Celery application. Broker: Redis when REDIS_URL is set, else kombu's filesystem transport."""

from __future__ import annotations

import os
from typing import Any

from celery import Celery, bootsteps
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
    # Ride out broker outages of any length (the default gives up after 100 tries, ~50 min).
    broker_connection_retry=True,
    broker_connection_max_retries=None,
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


class Heartbeat(bootsteps.StartStopStep):
    """Marks this worker alive from its consumer loop (workers/heartbeat.py), every
    PARTAGE_HEARTBEAT_SECONDS while it is connected; restarted with the consumer after a
    broker outage."""

    requires = ("celery.worker.consumer.tasks:Tasks",)  # alive means consuming

    def __init__(self, parent: Any, **kwargs: Any) -> None:
        self.timer_entry: Any = None
        super().__init__(parent, **kwargs)

    def start(self, parent: Any) -> None:
        from django.conf import settings

        self.beat(parent.hostname)
        self.timer_entry = parent.timer.call_repeatedly(
            settings.PARTAGE_HEARTBEAT_SECONDS, self.beat, (parent.hostname,), priority=10
        )

    def stop(self, parent: Any) -> None:
        if self.timer_entry is not None:
            self.timer_entry.cancel()
            self.timer_entry = None

    shutdown = stop

    @staticmethod
    def beat(hostname: str) -> None:
        from django.conf import settings

        from workers.heartbeat import WORKER_PREFIX, heartbeat_file_touch, heartbeat_record

        heartbeat_file_touch(settings.PARTAGE_WORKER_HEARTBEAT_FILE)
        heartbeat_record(WORKER_PREFIX + hostname)


app.steps["consumer"].add(Heartbeat)
