"""Celery tasks: thin entry points that take ids, call one service, and are safe to run twice."""

from __future__ import annotations

from typing import Any

from workers.celery import app

app.conf.beat_schedule.setdefault(
    "partage-file-validation-sweep",
    {"task": "partage.file_validation_sweep", "schedule": 300.0},
)


@app.task(name="partage.admission_pass", acks_late=True)
def admission_pass(**kwargs: Any) -> int:
    from django.core.cache import cache

    from marketplace.quotas.services import ADMISSION_PENDING_KEY
    from marketplace.quotas.services import admission_pass as run_pass
    from workers.heartbeat import heartbeat_record

    cache.delete(ADMISSION_PENDING_KEY)  # before reading the queue: later creates ask again
    admitted = len(run_pass())
    heartbeat_record("task:partage.admission_pass")
    return admitted


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


@app.task(name="partage.file_validate", acks_late=True)
def file_validate(file_id: str, **kwargs: Any) -> str | None:
    from marketplace.finetuning.services.files import file_validate as validate

    file = validate(file_id=file_id)
    return file.status if file else None


@app.task(name="partage.file_validation_sweep", acks_late=True)
def file_validation_sweep(**kwargs: Any) -> int:
    from marketplace.finetuning.services.files import files_validation_sweep as sweep

    return sweep()


@app.task(name="partage.job_stop", acks_late=True)
def job_stop(job_id: str, **kwargs: Any) -> None:
    from workers.dispatch import job_stop as stop

    stop(job_id=job_id)


@app.task(name="partage.resync", acks_late=True)
def resync(**kwargs: Any) -> dict[str, int]:
    from workers.dispatch import resync as run_resync
    from workers.heartbeat import heartbeat_record

    counts = run_resync()
    heartbeat_record("task:partage.resync")
    return counts
