"""Celery tasks: thin entry points that take ids, call one service, and are safe to run twice."""

from __future__ import annotations

from typing import Any

from workers.celery import app


@app.task(name="partage.admission_pass", acks_late=True)
def admission_pass(**kwargs: Any) -> int:
    from django.core.cache import cache

    from marketplace.quotas.services import ADMISSION_PENDING_KEY
    from marketplace.quotas.services import admission_pass as run_pass

    cache.delete(ADMISSION_PENDING_KEY)  # before reading the queue: later creates ask again
    return len(run_pass())


@app.task(
    name="partage.job_dispatch",
    acks_late=True,
    autoretry_for=(ConnectionError, TimeoutError),
    retry_backoff=True,
    retry_backoff_max=60,
    max_retries=20,
)
def job_dispatch(job_id: str, **kwargs: Any) -> str | None:
    from workers.dispatch import job_dispatch as dispatch

    return dispatch(job_id=job_id)


@app.task(name="partage.job_stop", acks_late=True)
def job_stop(job_id: str, **kwargs: Any) -> None:
    from workers.dispatch import job_stop as stop

    stop(job_id=job_id)


@app.task(name="partage.resync", acks_late=True)
def resync(**kwargs: Any) -> dict[str, int]:
    from workers.dispatch import resync as run_resync

    return run_resync()
