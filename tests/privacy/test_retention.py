"""Retention: training files and checkpoints expire a set number of days after their last job
ended. The clock moves forward; the bytes are gone, and the job that used them still renders.
The operation test runs the real Celery worker and beat under a clock moved by libfaketime."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from django.core.files.storage import default_storage
from django.test import Client
from rest_framework.test import APIClient

from marketplace.errors import InvalidInput
from marketplace.finetuning.models import Checkpoint, File
from marketplace.privacy import services
from tests.conftest import wait_for
from tests.privacy.conftest import LIBFAKETIME, Acme, worker_and_beat_ahead


def _api(acme: Acme) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {acme.key_secret}")
    return client


def _assert_job_still_renders(acme: Acme) -> None:
    api = _api(acme)
    job = api.get(f"/v1/fine_tuning/jobs/{acme.job.id}")
    assert job.status_code == 200 and job.json()["training_file"] == acme.file.id
    events = api.get(f"/v1/fine_tuning/jobs/{acme.job.id}/events?limit=100").json()["data"]
    assert any("retention period ended" in e["message"] for e in events)
    portal = Client()
    portal.force_login(acme.owner)
    page = portal.get(f"/jobs/{acme.job.id}/")
    assert page.status_code == 200 and acme.job.id in page.content.decode()
    # The file is gone from the API, as a deleted file is.
    assert api.get(f"/v1/files/{acme.file.id}").status_code == 404


@pytest.mark.django_db
def test_files_and_checkpoints_expire_after_the_retention_and_jobs_still_render(
    acme: Acme,
) -> None:
    finished = acme.job.finished_at
    assert finished is not None
    schedule = services.retention_schedule(acme.org)
    assert [(e.kind, e.expires_at) for e in schedule] == [
        ("checkpoint", finished + timedelta(days=30)),
        ("file", finished + timedelta(days=30)),
    ]
    shown = _api(acme).get("/v1/organization/retention").json()
    assert shown["retention_days"] == 30 and shown["max_days"] == 365
    assert {e["kind"] for e in shown["expiring"]} == {"file", "checkpoint"}
    file_name, checkpoint_name = acme.file.content.name, acme.checkpoint.archive.name

    assert services.retention_sweep(now=finished + timedelta(days=29)) == {
        "files": 0,
        "checkpoints": 0,
    }
    assert default_storage.exists(file_name) and default_storage.exists(checkpoint_name)

    assert services.retention_sweep(now=finished + timedelta(days=30, seconds=1)) == {
        "files": 1,
        "checkpoints": 1,
    }
    assert not default_storage.exists(file_name)
    assert not default_storage.exists(checkpoint_name)
    assert File.objects.get(pk=acme.file.pk).deleted_at is not None
    assert not Checkpoint.objects.filter(job=acme.job).exists()
    # The adapter is what the customer paid for: retention never deletes it.
    assert default_storage.exists(acme.job.result_file.content.name)
    _assert_job_still_renders(acme)
    assert services.retention_schedule(acme.org) == []
    assert services.retention_sweep(now=finished + timedelta(days=90)) == {
        "files": 0,
        "checkpoints": 0,
    }


@pytest.mark.django_db
def test_the_organization_chooses_its_retention_within_the_platform_maximum(acme: Acme) -> None:
    api = _api(acme)
    refused = api.post("/v1/organization/retention", {"retention_days": 366}, format="json")
    assert refused.status_code == 400
    assert refused.json()["error"]["param"] == "retention_days"
    with pytest.raises(InvalidInput):
        services.retention_set(organization=acme.org, days=0)
    shown = api.post("/v1/organization/retention", {"retention_days": 90}, format="json").json()
    assert shown["retention_days"] == 90
    finished = acme.job.finished_at
    assert finished is not None
    assert {e.expires_at for e in services.retention_schedule(acme.org)} == {
        finished + timedelta(days=90)
    }
    assert services.retention_sweep(now=finished + timedelta(days=31)) == {
        "files": 0,
        "checkpoints": 0,
    }


@pytest.mark.django_db
def test_a_file_used_by_an_unfinished_job_never_expires(acme: Acme, pool: Any) -> None:
    from marketplace.finetuning import services as ft

    ft.job_create(organization=acme.org, model="partage/tiny-llama", training_file=acme.file.id)
    assert [e.kind for e in services.retention_schedule(acme.org)] == ["checkpoint"]
    far = acme.job.finished_at + timedelta(days=3650)  # type: ignore[operator]
    assert services.retention_sweep(now=far) == {"files": 0, "checkpoints": 1}
    assert default_storage.exists(acme.file.content.name)


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_the_real_worker_and_beat_delete_expired_data_under_a_moved_clock(
    transactional_db: None, acme: Acme, settings: Any, tmp_path: Path
) -> None:
    assert LIBFAKETIME.exists(), "install Debian's faketime package (apt-get install faketime)"
    services.retention_set(organization=acme.org, days=60)
    [first, *_] = services.retention_schedule(acme.org)
    from django.utils import timezone

    days_ahead = (first.expires_at - timezone.now()).days + 2
    assert days_ahead > 0  # not yet expired by the real clock
    file_name, checkpoint_name = acme.file.content.name, acme.checkpoint.archive.name
    assert default_storage.exists(file_name)

    with worker_and_beat_ahead(days_ahead, tmp_path, settings) as log_path:
        wait_for(
            lambda: File.objects.get(pk=acme.file.pk).deleted_at is not None,
            timeout=180,
            what=f"the beat's sweep to expire the file (log: {log_path})",
        )
        wait_for(
            lambda: not Checkpoint.objects.filter(job=acme.job).exists(),
            timeout=60,
            what="the checkpoint to expire",
        )
    assert not default_storage.exists(file_name)
    assert not default_storage.exists(checkpoint_name)
    # The worker's clock was ahead: the deletion is stamped in its future, not the test's.
    deleted_at = File.objects.get(pk=acme.file.pk).deleted_at
    assert deleted_at is not None and deleted_at > timezone.now() + timedelta(days=days_ahead - 1)
    _assert_job_still_renders(acme)
