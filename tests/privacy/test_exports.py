"""An organization's export: the archive's index lists every object with a checksum that matches
its bytes, nothing of another organization is in it, no secret leaves, and it expires."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from datetime import timedelta
from typing import Any

import pytest
from django.core.files.storage import default_storage
from django.utils import timezone
from rest_framework.test import APIClient

from marketplace.accounts.models import Organization
from marketplace.privacy import services
from marketplace.privacy.models import DataExport
from tests.privacy.conftest import SECRET_TEXT, Acme

pytestmark = pytest.mark.django_db


def _members(archive: bytes) -> dict[str, bytes]:
    with tarfile.open(fileobj=io.BytesIO(archive), mode="r:gz") as tar:
        out = {}
        for member in tar:
            reader = tar.extractfile(member)
            assert reader is not None
            out[member.name] = reader.read()
        return out


def _client(secret: str) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {secret}")
    return client


def _download(client: APIClient, export_id: str) -> bytes:
    response = client.get(f"/v1/organization/exports/{export_id}/content")
    assert response.status_code == 200, response.content
    return b"".join(response.streaming_content)


def test_export_round_trip_index_lists_every_object_with_matching_checksums(
    acme: Acme, org_b: Organization, key_b: str
) -> None:
    client = _client(acme.key_secret)
    response = client.post("/v1/organization/exports")
    assert response.status_code == 200, response.content
    body = response.json()
    assert body["object"] == "organization.export" and body["status"] == "pending"
    assert body["download_url"] is None
    services.export_build(export_id=DataExport.objects.get(public_id=body["id"]).pk)

    ready = client.get(f"/v1/organization/exports/{body['id']}").json()
    assert ready["status"] == "ready" and ready["download_url"].endswith("/content")
    assert ready["expires_at"] - ready["ready_at"] == 7 * 24 * 3600
    archive = _download(client, body["id"])
    assert hashlib.sha256(archive).hexdigest() == ready["sha256"]
    assert len(archive) == ready["bytes"]

    members = _members(archive)
    index = json.loads(members.pop("index.json"))
    sums = members.pop("SHA256SUMS").decode()
    # Every member is indexed, once, with its size and sha256; nothing indexed is missing.
    indexed = {item["path"]: item for item in index["objects"]}
    assert len(indexed) == len(index["objects"]) == index["object_count"] == ready["object_count"]
    assert set(indexed) == set(members)
    for path, data in members.items():
        assert indexed[path]["size"] == len(data), path
        assert indexed[path]["sha256"] == hashlib.sha256(data).hexdigest(), path
        assert f"{indexed[path]['sha256']}  {path}\n" in sums

    job, file = acme.job, acme.file
    kinds = {item["kind"] for item in index["objects"]}
    assert {
        "organization",
        "api_keys",
        "file",
        "validation_report",
        "file_content",
        "job",
        "job_events",
        "job_metrics",
        "adapter_manifest",
        "eval",
        "adapter",
        "checkpoint",
        "bookings",
        "usage",
        "ledger",
        "invoice",
        "invoice_pdf",
        "invoice_csv",
        "webhooks",
        "audit",
    } <= kinds
    # The stored bytes, byte for byte.
    assert members[f"files/{file.id}/acme-customers.jsonl"] == file.content.open("rb").read()
    assert members[f"jobs/{job.id}/adapter.tar.gz"] == job.result_file.content.open("rb").read()
    checkpoint = acme.checkpoint
    assert members[f"jobs/{job.id}/checkpoints/step-000005.tar.gz"].endswith(SECRET_TEXT.encode())
    assert json.loads(members[f"jobs/{job.id}/eval.json"]) == {"valid_loss": 1.2}
    assert (
        checkpoint.sha256
        == hashlib.sha256(members[f"jobs/{job.id}/checkpoints/step-000005.tar.gz"]).hexdigest()
    )
    events = members[f"jobs/{job.id}/events.jsonl"].decode()
    assert SECRET_TEXT in events
    assert "training loss" in members[f"jobs/{job.id}/metrics.jsonl"].decode()
    number = acme.invoice.number
    assert members[f"billing/invoices/{number}.pdf"].startswith(b"%PDF")
    assert number in members[f"billing/invoices/{number}.csv"].decode()
    ledger = [json.loads(line) for line in members["billing/ledger.jsonl"].splitlines()]
    assert ledger and all(line["organization_id"] == acme.org.pk for line in ledger)
    assert acme.booking.public_id in members["billing/bookings.json"].decode()
    assert "acme-hook" in members["webhooks/endpoints.json"].decode()
    assert json.loads(members["organization.json"])["members"][0]["email"] == "alice@acme.example"

    # No secret leaves; nothing of org B is in it.
    everything = b"".join(members.values())
    endpoint_secret = acme.org.webhook_endpoints.get().secret
    assert endpoint_secret.encode() not in everything
    assert acme.key.hashed_secret.encode() not in everything
    assert acme.key_secret.encode() not in everything
    assert org_b.public_id.encode() not in everything

    # Another organization cannot see or download it.
    other = _client(key_b)
    assert other.get(f"/v1/organization/exports/{body['id']}").status_code == 404
    assert other.get(f"/v1/organization/exports/{body['id']}/content").status_code == 404
    assert other.get("/v1/organization/exports").json()["data"] == []


def test_export_is_deleted_when_its_download_window_ends(acme: Acme) -> None:
    export = services.export_request(organization=acme.org, requested_by=acme.owner)
    export = services.export_build(export_id=export.pk)
    name = export.archive.name
    assert default_storage.exists(name)
    assert services.exports_expire(now=timezone.now() + timedelta(days=6)) == 0
    assert services.exports_expire(now=timezone.now() + timedelta(days=7, seconds=1)) == 1
    export.refresh_from_db()
    assert export.status == DataExport.Status.EXPIRED and not default_storage.exists(name)
    response = _client(acme.key_secret).get(f"/v1/organization/exports/{export.public_id}/content")
    assert response.status_code == 409 and response.json()["error"]["code"] == "export_not_ready"


def test_only_an_owner_exports_and_one_export_builds_at_a_time(acme: Acme, bob: Any) -> None:
    from marketplace.accounts.models import Membership, User
    from marketplace.accounts.services import membership_set
    from marketplace.errors import Conflict, Forbidden

    dave = User.objects.create_user("dave", email="dave@acme.example", password="x-password-123")
    membership_set(organization=acme.org, user=dave, role=Membership.Role.MEMBER)
    with pytest.raises(Forbidden):
        services.export_request(organization=acme.org, requested_by=dave)
    services.export_request(organization=acme.org, requested_by=acme.owner)
    with pytest.raises(Conflict):
        services.export_request(organization=acme.org, requested_by=acme.owner)
    assert DataExport.objects.filter(organization=acme.org).count() == 1
