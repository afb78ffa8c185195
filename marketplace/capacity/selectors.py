"""Reads for capacity: providers, pools, offers, bookings, placement."""

from __future__ import annotations

from typing import Any

from marketplace.finetuning.models import FineTuningJob


def launch_settings_for_job(job: FineTuningJob) -> dict[str, Any]:
    """What the executor needs about the job's pool (cluster, node selector, tolerations…).

    Foundation: no pools yet, so nothing. The capacity issue fills this from the job's placement.
    """
    return {}
