"""A fresh `make run` (partage_up) has something to book from the first minute (issue 18): a
demo provider offering this machine, a member of staff for the cockpit, demo credit, and a job
submitted through the API is admitted on the demo pool and held against that credit."""

from __future__ import annotations

import io
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from django.core.management import call_command
from django.test import Client
from rest_framework.test import APIClient

from marketplace.accounts.seed import STAFF_USERNAME
from marketplace.billing.models import Topup
from marketplace.billing.services.ledger import balance_available
from marketplace.capacity.models import Pool
from marketplace.capacity.seed import DEMO_PROVIDER_SLUG, LOCAL_FLAVOR_SLUG
from marketplace.finetuning.models import FineTuningJob
from marketplace.quotas.models import Allocation
from marketplace.quotas.services.admission import admission_pass
from tests.conftest import chat_lines, jsonl


@pytest.fixture
def fresh_install(db: None, settings: Any, tmp_path: Path) -> dict[str, str]:
    settings.DATA_DIR = tmp_path / "data"
    settings.STATIC_ROOT = tmp_path / "static"
    out = io.StringIO()
    for _ in range(2):  # a second `make run` reuses what the first seeded
        call_command("partage_up", "--no-serve", "--no-fake-stripe", stdout=out)
    printed = out.getvalue()
    demo = settings.DATA_DIR / "demo"
    return {
        "out": printed,
        "api_key": (demo / "api_key").read_text().strip(),
        "staff_password": (demo / "staff_password").read_text().strip(),
    }


def test_a_fresh_install_offers_this_machine_once_and_says_so(
    fresh_install: dict[str, str],
) -> None:
    pool = Pool.objects.get()  # twice run, seeded once
    assert pool.provider.slug == DEMO_PROVIDER_SLUG and pool.status == Pool.Status.ACTIVE
    assert pool.flavor.slug == LOCAL_FLAVOR_SLUG and "no GPU" in pool.flavor.model_name
    assert pool.public_id in fresh_install["out"] and "staff" in fresh_install["out"]
    assert Topup.objects.filter(status=Topup.Status.CREDITED).count() == 1

    api = APIClient()
    api.credentials(HTTP_AUTHORIZATION=f"Bearer {fresh_install['api_key']}")
    offers = api.get("/v1/offers").json()["data"]
    assert [offer["flavor"]["id"] for offer in offers] == [LOCAL_FLAVOR_SLUG], offers

    staff = Client()
    assert staff.login(username=STAFF_USERNAME, password=fresh_install["staff_password"])
    cockpit = staff.get("/cockpit/")
    assert cockpit.status_code == 200 and pool.public_id in cockpit.content.decode()


def test_a_job_on_a_fresh_install_is_admitted_on_the_demo_pool(
    fresh_install: dict[str, str],
) -> None:
    from django.core.files.uploadedfile import SimpleUploadedFile

    api = APIClient()
    api.credentials(HTTP_AUTHORIZATION=f"Bearer {fresh_install['api_key']}")
    upload = api.post(
        "/v1/files",
        {"file": SimpleUploadedFile("t.jsonl", jsonl(chat_lines(8))), "purpose": "fine-tune"},
        format="multipart",
    )
    assert upload.status_code == 200, upload.content
    created = api.post(
        "/v1/fine_tuning/jobs",
        {"model": "partage/tiny-llama", "training_file": upload.json()["id"]},
        format="json",
    )
    assert created.status_code == 200, created.content
    job = FineTuningJob.objects.get(pk=created.json()["id"])
    balance_before = balance_available(organization=job.organization)
    assert balance_before == Decimal("25.00")
    admission_pass()
    job.refresh_from_db()
    assert job.status not in {"queued", "validating_files"}, job.status
    assert Allocation.objects.get(job=job).pool == Pool.objects.get()
    assert balance_available(organization=job.organization) < balance_before  # held
