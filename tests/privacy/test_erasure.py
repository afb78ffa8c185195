"""Erasure: after the grace period, no row or byte of the organization's content is left, in any
table or in storage; the invoices and the ledger are kept, pseudonymised, and still balance.
A person deletes their account unless they are the sole owner of an organization."""

from __future__ import annotations

import json
from datetime import timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from django.apps import apps
from django.conf import settings
from django.core.files.storage import default_storage
from django.db import models
from django.utils import timezone

from marketplace.accounts.models import Membership, Organization, User
from marketplace.billing.models import Invoice, JournalEntry, LedgerLine
from marketplace.errors import Conflict, Forbidden, InvalidInput
from marketplace.finetuning.models import File, FineTuningJob
from marketplace.privacy import services
from marketplace.privacy.models import OrganizationErasure
from tests.billing.conftest import assert_invariants
from tests.privacy.conftest import MARKERS, SECRET_TEXT, Acme

pytestmark = pytest.mark.django_db


def _rows_mentioning(markers: list[str]) -> list[str]:
    """Every row of every table whose text (any column) contains one of the markers."""
    found = []
    for model in apps.get_models():
        text_fields = [
            f
            for f in model._meta.concrete_fields
            if isinstance(f, models.CharField | models.TextField | models.JSONField)
        ]
        if not text_fields:
            continue
        for values in model._default_manager.values_list(*[f.attname for f in text_fields]):
            blob = json.dumps(values, default=str)
            for marker in markers:
                if marker in blob:
                    found.append(f"{model._meta.label}: {marker}: {blob[:200]}")
    return found


def _stored_files() -> list[Path]:
    root = Path(settings.MEDIA_ROOT)
    return [p for p in root.rglob("*") if p.is_file()] if root.exists() else []


def _bytes_mentioning(marker: bytes) -> list[Path]:
    import gzip

    hits = []
    for path in _stored_files():
        data = path.read_bytes()
        if data[:2] == b"\x1f\x8b":
            data += gzip.decompress(data)
        if marker in data:
            hits.append(path)
    return hits


def test_erasure_after_the_grace_period_leaves_no_row_or_byte_of_the_org(
    acme: Acme, org_b: Organization
) -> None:
    services.export_build(
        export_id=services.export_request(organization=acme.org, requested_by=acme.owner).pk
    )
    # Before: the markers are everywhere (so the checks below can fail).
    assert _rows_mentioning(MARKERS)
    assert _bytes_mentioning(SECRET_TEXT.encode())
    invoice_before = Invoice.objects.values("number", "subtotal", "vat", "total").get(
        pk=acme.invoice.pk
    )
    ledger_before = sorted(
        LedgerLine.objects.filter(organization=acme.org).values_list("entry_id", "amount")
    )

    with pytest.raises(InvalidInput):
        services.organization_erasure_request(
            organization=acme.org, requested_by=acme.owner, confirm="acme"
        )
    erasure = services.organization_erasure_request(
        organization=acme.org, requested_by=acme.owner, confirm="acme-secret"
    )
    assert erasure.erase_after - erasure.requested_at == timedelta(days=14)
    # During the grace period nothing happens.
    assert services.erasure_sweep(now=timezone.now() + timedelta(days=13)) == 0
    assert FineTuningJob.objects.get(pk=acme.job.pk).suffix == "acme-model"

    assert services.erasure_sweep(now=timezone.now() + timedelta(days=14, seconds=1)) == 1

    assert _rows_mentioning(MARKERS) == []
    assert _bytes_mentioning(SECRET_TEXT.encode()) == []
    assert _bytes_mentioning(b"acme") == []
    org = Organization.objects.get(pk=acme.org.pk)
    erasure.refresh_from_db()
    assert erasure.status == OrganizationErasure.Status.ERASED
    assert org.name == org.slug == erasure.pseudonym and org.legal_name == ""
    assert not Membership.objects.filter(organization=org).exists()
    assert not org.api_keys.exists() and not org.webhook_endpoints.exists()
    assert not File.objects.filter(organization=org).exclude(content="").exists()
    # Kept for the law: the invoice (numbers and amounts unchanged, name pseudonymised) and
    # every ledger line; the books still balance.
    invoice = Invoice.objects.get(pk=acme.invoice.pk)
    assert invoice.customer_name == erasure.pseudonym
    assert (
        Invoice.objects.values("number", "subtotal", "vat", "total").get(pk=invoice.pk)
        == invoice_before
    )
    assert invoice.total > Decimal(0)
    assert (
        sorted(LedgerLine.objects.filter(organization=org).values_list("entry_id", "amount"))
        == ledger_before
    )
    assert (
        not JournalEntry.objects.filter(created_by__in=["test", "alice"])
        .filter(organization=org)
        .exists()
    )
    assert_invariants()
    # The job row stays (its invoice line bills it), with nothing of the customer in it.
    job = FineTuningJob.objects.get(pk=acme.job.pk)
    assert job.metadata == {} and job.manifest is None and not job.events.exists()
    # Org B is untouched; alice keeps her account (she deletes it herself).
    assert Organization.objects.get(pk=org_b.pk).name == "Org B"
    assert User.objects.filter(pk=acme.owner.pk).exists()
    # Twice is harmless.
    assert services.erasure_sweep(now=timezone.now() + timedelta(days=30)) == 0


def test_erasure_cancels_running_jobs_first_and_can_be_cancelled(
    acme: Acme, org_b: Organization, pool: Any
) -> None:
    from tests.billing.conftest import job_new

    queued = job_new(acme.org, file_id=None)
    services.organization_erasure_request(
        organization=acme.org, requested_by=acme.owner, confirm="acme-secret"
    )
    with pytest.raises(Conflict):
        services.organization_erasure_request(
            organization=acme.org, requested_by=acme.owner, confirm="acme-secret"
        )
    services.organization_erasure_cancel(organization=acme.org, cancelled_by=acme.owner)
    assert services.erasure_sweep(now=timezone.now() + timedelta(days=30)) == 0
    assert FineTuningJob.objects.get(pk=queued.pk).status == "queued"

    services.organization_erasure_request(
        organization=acme.org, requested_by=acme.owner, confirm="acme-secret"
    )
    assert services.erasure_sweep(now=timezone.now() + timedelta(days=30)) == 1
    assert FineTuningJob.objects.get(pk=queued.pk).status == "cancelled"


def test_only_an_owner_schedules_the_erasure(acme: Acme, bob: User) -> None:
    with pytest.raises(Forbidden):
        services.organization_erasure_request(
            organization=acme.org, requested_by=bob, confirm="acme-secret"
        )


def test_a_sole_owner_must_hand_over_before_deleting_their_account(acme: Acme) -> None:
    with pytest.raises(Conflict) as refused:
        services.user_delete(user=acme.owner)
    assert "only owner of Acme Secret Labs" in refused.value.message
    erin = User.objects.create_user("erin", email="erin@acme.example", password="erin-pass-123")
    from marketplace.accounts.services import membership_set

    membership_set(organization=acme.org, user=erin, role=Membership.Role.OWNER)
    services.user_delete(user=acme.owner)
    assert not User.objects.filter(username="alice").exists()
    assert _rows_mentioning(["alice@acme.example"]) == []
    assert Membership.objects.filter(organization=acme.org, user=erin).exists()
    assert default_storage.exists(acme.file.content.name)  # the org's data is the org's
