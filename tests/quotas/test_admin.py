"""Django admin saves go through the audited services."""

from __future__ import annotations

from typing import Any

import pytest
from django.test import Client

from marketplace.quotas.models import FlavorQuotaOverride, QuotaAuditEntry

pytestmark = pytest.mark.django_db


def test_admin_override_save_is_audited(h100: Any, org_a: Any, carol: Any) -> None:
    carol.is_superuser = True
    carol.save()
    client = Client()
    client.force_login(carol)
    form = {
        "organization": org_a.pk,
        "flavor": h100.pk,
        "guaranteed_gpus": "2",
        "max_gpus": "6",
        "monthly_gpu_hours": "",
        "max_job_hours": "",
        "max_concurrent_jobs": "",
        "_save": "Save",
    }
    response = client.post("/admin/quotas/flavorquotaoverride/add/", form)
    assert response.status_code == 302, response.content[:2000]
    override = FlavorQuotaOverride.objects.get(organization=org_a, flavor=h100)
    assert (override.guaranteed_gpus, override.max_gpus) == (2, 6)
    entries = QuotaAuditEntry.objects.filter(organization=org_a, via="admin", changed_by=carol)
    assert {(e.field, e.old_value, e.new_value) for e in entries} == {
        ("guaranteed_gpus", "(plan default)", "2"),
        ("max_gpus", "(plan default)", "6"),
    }
    response = client.post(
        f"/admin/quotas/flavorquotaoverride/{override.pk}/change/", {**form, "max_gpus": "8"}
    )
    assert response.status_code == 302
    change = QuotaAuditEntry.objects.get(organization=org_a, field="max_gpus", new_value="8")
    assert change.old_value == "6"
