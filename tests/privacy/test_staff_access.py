"""Staff access to customer content is recorded (who, what, when, why) from the Django admin,
the cockpit and the management command, and the organization reads it (portal and API); the
organization's portal page, its e-mail when an export is ready, and storage residency."""

from __future__ import annotations

import io
from typing import Any

import pytest
from django.core import mail
from django.core.management import call_command
from django.core.management.base import CommandError
from django.test import Client
from rest_framework.test import APIClient

from marketplace.accounts.models import User
from marketplace.privacy import services
from marketplace.privacy.models import StaffAccess
from tests.privacy.conftest import SECRET_TEXT, Acme

pytestmark = pytest.mark.django_db


def _staff_client(carol: User) -> Client:
    client = Client()
    client.force_login(carol)
    return client


def test_the_admin_asks_staff_why_before_opening_a_customer_file(acme: Acme, carol: User) -> None:
    carol.is_superuser = True
    carol.save()
    client = _staff_client(carol)
    url = f"/admin/finetuning/file/{acme.file.id}/change/"
    asked = client.get(url)
    assert asked.status_code == 200 and b"Why open file" in asked.content
    assert acme.file.filename.encode() not in asked.content
    assert client.get(url, {"reason": "no"}).status_code == 400  # too short to be a reason
    assert not StaffAccess.objects.exists()
    opened = client.get(url, {"reason": "ticket #4521: upload fails validation"})
    assert opened.status_code == 200 and acme.file.filename.encode() in opened.content
    [access] = StaffAccess.objects.all()
    assert (access.staff_username, access.via, access.subject_type, access.subject_id) == (
        "carol",
        "admin",
        "file",
        acme.file.id,
    )
    assert access.organization_id == acme.org.pk
    # The lists show no content.
    events = client.get("/admin/finetuning/jobevent/")
    assert events.status_code == 200 and SECRET_TEXT.encode() not in events.content
    files = client.get("/admin/finetuning/file/")
    assert files.status_code == 200 and b"acme-customers.jsonl" not in files.content


def test_the_cockpit_records_a_job_view_and_a_file_download(
    acme: Acme, carol: User, bob: User
) -> None:
    client = _staff_client(carol)
    assert client.get("/cockpit/content/", {"subject": acme.job.id}).status_code == 400
    shown = client.get(
        "/cockpit/content/", {"subject": acme.job.id, "reason": "incident 77: job stuck"}
    )
    assert shown.status_code == 200 and SECRET_TEXT in shown.content.decode()
    download = client.get(
        "/cockpit/content/", {"subject": acme.file.id, "reason": "ticket 12: bad data"}
    )
    assert download.status_code == 200
    assert SECRET_TEXT.encode() in b"".join(download.streaming_content)
    # A customer is not staff: the cockpit does not exist for him.
    customer = Client()
    customer.force_login(bob)
    assert customer.get("/cockpit/content/", {"subject": acme.job.id}).status_code == 404
    assert [(a.action, a.via, a.subject_type) for a in StaffAccess.objects.order_by("id")] == [
        ("view", "cockpit", "job"),
        ("download", "cockpit", "file"),
    ]


def test_the_command_records_its_reason_and_the_org_reads_the_record(
    acme: Acme, carol: User, key_b: str, tmp_path: Any
) -> None:
    with pytest.raises(CommandError, match="Say why"):
        call_command("customer_content", acme.file.id, staff="carol", reason="")
    out = tmp_path / "data.jsonl"
    call_command(
        "customer_content",
        acme.file.id,
        staff="carol",
        reason="ticket 9: re-run validation",
        output=str(out),
    )
    assert SECRET_TEXT in out.read_text()
    printed = io.StringIO()
    call_command(
        "customer_content",
        acme.job.id,
        staff="carol",
        reason="ticket 9: job events",
        stdout=printed,
    )
    assert SECRET_TEXT in printed.getvalue()

    api = APIClient()
    api.credentials(HTTP_AUTHORIZATION=f"Bearer {acme.key_secret}")
    record = api.get("/v1/organization/staff_access").json()
    assert [
        (r["staff"], r["via"], r["action"], r["subject_id"], r["reason"]) for r in record["data"]
    ] == [
        ("carol", "command", "view", acme.job.id, "ticket 9: job events"),
        ("carol", "command", "download", acme.file.id, "ticket 9: re-run validation"),
    ]
    other = APIClient()
    other.credentials(HTTP_AUTHORIZATION=f"Bearer {key_b}")
    assert other.get("/v1/organization/staff_access").json()["data"] == []
    portal = Client()
    portal.force_login(acme.owner)
    page = portal.get("/privacy/").content.decode()
    assert "ticket 9: job events" in page and "carol" in page


def test_the_privacy_page_shows_retention_exports_and_deletion(acme: Acme) -> None:
    portal = Client()
    portal.force_login(acme.owner)
    page = portal.get("/privacy/")
    assert page.status_code == 200
    body = page.content.decode()
    assert "30 days" in body and acme.file.id in body and "acme-customers.jsonl" in body
    assert portal.post("/privacy/retention/", {"retention_days": "45"}).status_code == 302
    assert services.retention_days_for(acme.org) == 45
    assert portal.post("/privacy/exports/").status_code == 302
    export = acme.org.data_exports.get()
    services.export_build(export_id=export.pk)
    download = portal.get(f"/privacy/exports/{export.public_id}/download/")
    assert download.status_code == 200
    portal.post("/privacy/delete/", {"confirm": "acme-secret"})
    assert "will be deleted on" in portal.get("/privacy/").content.decode()
    portal.post("/privacy/delete/cancel/")
    assert services.erasure_pending(acme.org) is None


@pytest.mark.django_db(transaction=True)
def test_the_owner_is_emailed_when_the_export_is_ready(acme: Acme, settings: Any) -> None:
    from workers.celery import app

    previous = app.conf.task_always_eager
    settings.CELERY_TASK_ALWAYS_EAGER = True
    app.conf.task_always_eager = True
    try:
        export = services.export_request(organization=acme.org, requested_by=acme.owner)
    finally:
        app.conf.task_always_eager = previous
    export.refresh_from_db()
    assert export.status == "ready"
    [message] = [m for m in mail.outbox if export.public_id in m.subject]
    assert message.to == ["alice@acme.example"]
    assert f"/privacy/exports/{export.public_id}/download/" in message.body


def test_an_eu_only_organization_cannot_store_data_outside_the_eu(
    acme: Acme, settings: Any
) -> None:
    from marketplace.capacity.services import residency_policy_set
    from marketplace.errors import Conflict
    from marketplace.finetuning import services as ft
    from tests.privacy.conftest import acme_lines

    residency_policy_set(organization=acme.org, eu_only=True, countries=[])
    # The platform's storage is in France: allowed.
    ft.file_create(organization=acme.org, stream=io.BytesIO(acme_lines()), filename="eu.jsonl")
    settings.PARTAGE_STORAGE_COUNTRY = "US"
    api = APIClient()
    api.credentials(HTTP_AUTHORIZATION=f"Bearer {acme.key_secret}")
    from django.core.files.uploadedfile import SimpleUploadedFile

    refused = api.post(
        "/v1/files",
        {"file": SimpleUploadedFile("us.jsonl", acme_lines()), "purpose": "fine-tune"},
        format="multipart",
    )
    assert refused.status_code == 409, refused.content
    assert refused.json()["error"]["code"] == "residency_storage"
    assert "storage is in US" in refused.json()["error"]["message"]
    with pytest.raises(Conflict):
        ft.checkpoint_store(
            job_id=acme.job.id, attempt_number=1, step=9, metrics={}, archive=io.BytesIO(b"x")
        )
    # An organization without a policy is not affected.
    residency_policy_set(organization=acme.org, eu_only=False, countries=[])
    ft.file_create(organization=acme.org, stream=io.BytesIO(acme_lines()), filename="any.jsonl")
