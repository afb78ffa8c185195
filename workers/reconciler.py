"""The Kubernetes reconciler: watches training Jobs and Pods on every cluster, applies what ended.

Edge-triggered by watches (resourceVersion, bounded server and client timeouts, relist on 410)
and level-based on every relist and on a periodic pass. It never writes job rows: an ended
attempt goes through `workers.dispatch.attempt_observe` → `services.attempt_ended`, which
applies state, billing and quota exactly once. Jobs whose attempt already ended (or that no
attempt owns) are deleted, so a stale pod cannot keep a GPU. Run: `python -m workers.reconciler`.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
from collections.abc import Iterable
from datetime import datetime
from typing import Any

from workers import metrics
from workers.executors.kubernetes import (
    ClusterRef,
    KubernetesError,
    KubernetesExecutor,
    KubernetesTemporaryError,
    ResourceVersionExpired,
    WatchEvent,
)

logger = logging.getLogger("partage.reconciler")

WATCH_TIMEOUT_SECONDS = 60
# A Job whose attempt ended in Partage is left this long to end by itself before deletion.
STALE_JOB_GRACE_SECONDS = 60.0
RESOURCES = ("jobs", "pods")


@dataclasses.dataclass(frozen=True)
class Target:
    """One namespace on one cluster to watch."""

    ref: ClusterRef
    namespace: str


def targets(executor: KubernetesExecutor) -> list[Target]:
    """Every cluster connection in the database, plus the default cluster when one is set."""
    from marketplace.capacity.models import ClusterConnection

    found = [
        Target(ClusterRef(c.kind, c.credentials_ref, c.name), c.namespace)
        for c in ClusterConnection.objects.order_by("name")
    ]
    default_ref = ClusterRef.for_spec(_blank_spec())
    if default_ref.credentials_ref or default_ref.kind == "in_cluster":
        namespace = executor.config().namespace
        if not any(t.ref == default_ref for t in found):
            found.append(Target(default_ref, namespace))
    return found


def _blank_spec() -> Any:
    from workers.executors.base import LaunchSpec

    return LaunchSpec(
        job_id="", org_id="", attempt=0, name="", callback_url="", token="", base_model=""
    )


# ---------------------------------------------------------------- one event


def _attempt(job_id: str, number: int) -> Any:
    from marketplace.finetuning.models import JobAttempt

    return (
        JobAttempt.objects.select_related("job", "job__organization")
        .filter(job_id=job_id, number=number)
        .first()
    )


def handle(event: WatchEvent, executor: KubernetesExecutor, target: Target) -> str:
    """Apply one watched (or relisted) object. Idempotent; returns what it did."""
    metrics.RECONCILER_EVENTS.labels(resource=event.resource, type=event.type).inc()
    if not event.job_id or not event.attempt:
        return "ignored"
    attempt = _attempt(event.job_id, event.attempt)
    extra = {"job_id": event.job_id, "attempt": event.attempt, "k8s_object": event.name}
    if attempt is None:
        if event.resource == "jobs" and event.type != "DELETED":
            logger.warning("deleting Job %s: no such attempt", event.name, extra=extra)
            executor.delete_job(target.ref, target.namespace, event.name)
            return "deleted-orphan"
        return "unknown"
    extra["org_id"] = attempt.job.organization.public_id
    if attempt.ended_at is not None:
        if event.resource != "jobs" or event.type == "DELETED":
            return "ended"
        # The attempt ended in Partage (the trainer reported it, or it was lost or superseded).
        # The pod's log says more than the trainer's report: keep it before anything deletes it.
        if event.terminal:
            if event.type != "LISTED" or not attempt.logs:
                capture_logs(attempt, executor)
            return "ended"
        if _within_grace(attempt.ended_at):
            return "ending"  # a trainer that reported its end exits on its own in a moment
        # Its Job still runs: delete it so a stale pod cannot keep the GPU.
        capture_logs(attempt, executor)
        logger.info("deleting Job %s: its attempt already ended", event.name, extra=extra)
        executor.delete_job(target.ref, target.namespace, event.name)
        return "deleted-stale"
    if event.resource == "jobs" and event.type == "ADDED" and event.attempt == 1:
        _observe_dispatch_latency(attempt.job.created_at)
    if event.disrupted:
        logger.warning("pod %s disrupted (evicted or preempted)", event.name, extra=extra)
    if event.terminal or (event.resource == "jobs" and event.type == "DELETED"):
        from workers.dispatch import attempt_observe

        phase = attempt_observe(attempt=attempt)  # level-based: asks the cluster itself
        logger.info("attempt observed: %s", phase, extra={**extra, "phase": str(phase)})
        return f"observed-{phase}"
    return "live"


def capture_logs(attempt: Any, executor: KubernetesExecutor) -> bool:
    """Store the pods' log on the attempt (visible to its owner) when it says more."""
    from marketplace.finetuning import services
    from workers.dispatch import launch_spec

    logs = executor.logs(launch_spec(attempt))
    return services.attempt_logs_capture(attempt_id=attempt.pk, logs=logs)


def _within_grace(ended_at: datetime) -> bool:
    """Whether a Job whose attempt ended at `ended_at` may still be finishing on its own."""
    from django.conf import settings
    from django.utils import timezone

    grace = float(getattr(settings, "PARTAGE_K8S_STALE_JOB_GRACE_SECONDS", STALE_JOB_GRACE_SECONDS))
    return (timezone.now() - ended_at).total_seconds() < grace


def _observe_dispatch_latency(created_at: datetime) -> None:
    from django.utils import timezone

    metrics.DISPATCH_LATENCY_SECONDS.observe((timezone.now() - created_at).total_seconds())


def unfinished_attempts(target: Target) -> list[Any]:
    """Launched, unfinished Kubernetes attempts whose Job lives in this target."""
    from marketplace.finetuning.models import JobAttempt

    return list(
        JobAttempt.objects.select_related("job", "job__organization").filter(
            executor="kubernetes",
            ended_at__isnull=True,
            handle__startswith=f"{target.ref.name}/{target.namespace}/",
        )
    )


# ---------------------------------------------------------------- the watch loop


class Watcher:
    """List, then watch from the list's resourceVersion; relist on 410 or on reconnect."""

    def __init__(
        self,
        executor: KubernetesExecutor,
        target: Target,
        resource: str,
        *,
        timeout_seconds: int = WATCH_TIMEOUT_SECONDS,
    ) -> None:
        self.executor = executor
        self.target = target
        self.resource = resource
        self.timeout_seconds = timeout_seconds
        self.version: str | None = None
        self.handled: list[tuple[str, str]] = []  # (event type, result), for tests and debugging

    def relist(self) -> None:
        items, version = self.executor.list_managed(
            self.target.ref, self.target.namespace, self.resource
        )
        for item in items:
            self._apply(item)
        if self.resource == "jobs":
            listed = {(item.job_id, item.attempt) for item in items}
            for attempt in unfinished_attempts(self.target):
                if (attempt.job_id, attempt.number) not in listed:
                    self._observe_vanished(attempt)
        self.version = version

    def _observe_vanished(self, attempt: Any) -> None:
        """A launched attempt whose Job is not listed: its DELETED event may be lost (410)."""
        from workers.dispatch import attempt_observe

        try:
            phase = attempt_observe(attempt=attempt)  # reads the Job itself: no false alarm
        except KubernetesTemporaryError:
            raise
        except Exception:
            logger.exception("observing %s failed", attempt.name)
            return
        self.handled.append(("VANISHED", f"observed-{phase}"))

    def run_once(self) -> None:
        """One list-or-watch round: returns when the server ends the watch (timeoutSeconds)."""
        from django.db import close_old_connections

        close_old_connections()
        try:
            if self.version is None:
                self.relist()
            assert self.version is not None
            for event in self.executor.watch(
                self.target.ref,
                self.target.namespace,
                self.resource,
                self.version,
                timeout_seconds=self.timeout_seconds,
            ):
                if event.resource_version:
                    self.version = event.resource_version
                if event.type != "BOOKMARK":
                    self._apply(event)
        except ResourceVersionExpired:
            metrics.RECONCILER_RELISTS.inc()
            logger.info("watch of %s expired (410): relisting", self.resource)
            self.version = None
        finally:
            close_old_connections()

    def _apply(self, event: WatchEvent) -> None:
        try:
            result = handle(event, self.executor, self.target)
        except KubernetesTemporaryError:
            raise
        except Exception:
            # One bad object must not stop the loop; the periodic resync will retry it.
            logger.exception("handling %s %s failed", event.type, event.name)
            result = "error"
        self.handled.append((event.type, result))

    def run(self, stop: threading.Event) -> None:
        from django.db import connections

        delay = 1.0
        try:
            while not stop.is_set():
                try:
                    self.run_once()
                    delay = 1.0
                except KubernetesError as e:
                    logger.warning(
                        "watch of %s failed: %s; retrying in %.0fs", self.resource, e, delay
                    )
                    self.version = None  # relist after an outage: level-based, nothing missed
                    stop.wait(delay)
                    delay = min(delay * 2, 30.0)
        finally:
            connections.close_all()


# ---------------------------------------------------------------- the level-based pass


def collect_stale(executor: KubernetesExecutor, target_list: Iterable[Target]) -> int:
    """Delete running Jobs whose attempt has ended or does not exist. Returns how many."""
    deleted = 0
    for target in target_list:
        items, _version = executor.list_managed(target.ref, target.namespace, "jobs")
        for item in items:
            if handle(item, executor, target).startswith("deleted"):
                deleted += 1
    return deleted


def run_forever(
    stop: threading.Event | None = None,
    *,
    resync_seconds: float = 60.0,
    watch_timeout: int = WATCH_TIMEOUT_SECONDS,
) -> None:
    """Watch every target's Jobs and Pods in threads; every `resync_seconds`, a level pass."""
    from django.db import close_old_connections, connections

    stop = stop or threading.Event()
    executor = KubernetesExecutor()
    started: dict[tuple[Target, str], threading.Thread] = {}
    try:
        while not stop.is_set():
            close_old_connections()
            for target in targets(executor):
                for resource in RESOURCES:
                    key = (target, resource)
                    if key not in started or not started[key].is_alive():
                        watcher = Watcher(executor, target, resource, timeout_seconds=watch_timeout)
                        thread = threading.Thread(
                            target=watcher.run, args=(stop,), name=f"watch-{resource}", daemon=True
                        )
                        thread.start()
                        started[key] = thread
            try:
                collect_stale(executor, {t for t, _r in started})
            except KubernetesError as e:
                logger.warning("level pass failed: %s", e)
            stop.wait(resync_seconds)
    finally:
        for thread in started.values():
            thread.join(timeout=watch_timeout + 15)
        connections.close_all()


def main() -> None:
    import os

    import django

    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "marketplace.settings")
    django.setup()
    metrics.exporter_start()  # on PARTAGE_METRICS_PORT, when set
    stop = threading.Event()
    import signal

    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    logger.info("reconciler started")
    run_forever(stop)


if __name__ == "__main__":
    main()
