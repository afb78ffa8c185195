"""During the erasure's grace period the organization adds no content: uploads (API and
portal), fine-tuning jobs and bookings are refused with what, why and how to cancel; cancelling
the deletion brings them back. Other organizations are not concerned."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import Client
from django.urls import reverse
from django.utils import timezone
from rest_framework.test import APIClient

from marketplace.capacity.models import Booking
from marketplace.finetuning.models import File, FineTuningJob
from marketplace.privacy.models import OrganizationErasure
from tests.billing.conftest import topup
from tests.privacy.conftest import Acme, acme_lines


def _api(acme: Acme) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {acme.key_secret}")
    return client


def _upload(api: APIClient, name: str = "more.jsonl") -> Any:
    return api.post(
        "/v1/files",
        {"file": SimpleUploadedFile(name, acme_lines()), "purpose": "fine-tune"},
        format="multipart",
    )


def _job(api: APIClient, acme: Acme) -> Any:
    body = {"model": "partage/tiny-llama", "training_file": acme.file.id}
    return api.post("/v1/fine_tuning/jobs", body, format="json")


def _booking(api: APIClient) -> Any:
    begin = timezone.now().replace(minute=0, second=0, microsecond=0) + timedelta(days=3)
    body = {
        "flavor": "h100-80g",
        "gpus": 1,
        "start": int(begin.timestamp()),
        "end": int((begin + timedelta(hours=1)).timestamp()),
    }
    return api.post("/v1/bookings", body, format="json")


def _stored() -> set[Path]:
    return {p for p in Path(settings.MEDIA_ROOT).rglob("*") if p.is_file()}


def _assert_refused(response: Any, action: str) -> None:
    assert response.status_code == 409, response.content
    error = response.json()["error"]
    assert error["code"] == "organization_deletion_scheduled"
    assert error["message"].startswith(f"Cannot {action}: Acme Secret Labs is scheduled")
    assert "Cancel the deletion" in error["message"]


def test_the_grace_period_refuses_new_content_until_the_deletion_is_cancelled(
    acme: Acme, client_b: APIClient
) -> None:
    api = _api(acme)
    portal = Client()
    portal.force_login(acme.owner)
    deleted = portal.post(reverse("portal:privacy-org-delete"), {"confirm": "acme-secret"})
    assert deleted.status_code == 302
    assert OrganizationErasure.objects.filter(organization=acme.org, status="scheduled").exists()
    files, jobs, bookings, stored = (
        File.objects.count(),
        FineTuningJob.objects.count(),
        Booking.objects.count(),
        _stored(),
    )

    _assert_refused(_upload(api), "upload a file")
    _assert_refused(_job(api, acme), "create a fine-tuning job")
    _assert_refused(_booking(api), "book GPUs")
    page = portal.post(
        reverse("portal:files"), {"file": SimpleUploadedFile("more.jsonl", acme_lines())}
    )
    assert page.status_code == 409
    assert "is scheduled for deletion on" in page.content.decode()
    # Nothing was written, in the database or in storage.
    assert (File.objects.count(), FineTuningJob.objects.count(), Booking.objects.count()) == (
        files,
        jobs,
        bookings,
    )
    assert _stored() == stored
    # Another organization is not concerned.
    assert _upload(client_b).status_code in (200, 201)

    cancelled = portal.post(reverse("portal:privacy-org-delete-cancel"))
    assert cancelled.status_code == 302
    assert _upload(api).status_code in (200, 201)
    assert _job(api, acme).status_code in (200, 201)
    topup(acme.org, "50.00", ref="acme-topup-2")
    assert _booking(api).status_code == 201
    page = portal.post(
        reverse("portal:files"), {"file": SimpleUploadedFile("again.jsonl", acme_lines())}
    )
    assert page.status_code == 302
