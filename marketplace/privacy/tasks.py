"""Celery entry points for data protection: build an export, and the daily sweeps (retention,
expired exports, erasures due, accounting records past their legal retention). Each takes ids, calls one service and is safe to run twice."""

from __future__ import annotations

from typing import Any

from django.conf import settings

from workers.celery import app

app.conf.beat_schedule.setdefault(
    "partage-privacy-sweep",
    {"task": "partage.privacy_sweep", "schedule": float(settings.PARTAGE_PRIVACY_SWEEP_SECONDS)},
)


@app.task(name="partage.privacy_export_build", acks_late=True)
def export_build_task(export_id: int, **kwargs: Any) -> str:
    from marketplace.privacy.services import export_build

    return export_build(export_id=export_id).status


@app.task(name="partage.privacy_sweep", acks_late=True)
def privacy_sweep(**kwargs: Any) -> dict[str, int]:
    """Retention, expired exports, due erasures, and the accounting records of erased
    organizations past their legal retention, in that order."""
    from marketplace.privacy.services import (
        accounting_purge_sweep,
        erasure_sweep,
        exports_expire,
        retention_sweep,
    )

    done = retention_sweep()
    done["exports_expired"] = exports_expire()
    done["organizations_erased"] = erasure_sweep()
    done["accounting_rows_purged"] = accounting_purge_sweep()
    return done
