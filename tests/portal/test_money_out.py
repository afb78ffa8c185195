"""The portal's money-out pages: a provider's earnings and payout details; the staff billing
page of the cockpit (payout batches, their SEPA file, sent and paid, early close)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
import time_machine
from django.contrib.admin.models import LogEntry
from django.test import Client

from marketplace.accounts.models import Membership, User
from marketplace.accounts.services import membership_set
from marketplace.billing import services as billing
from marketplace.billing.models import BillingPeriod, PayoutBatch
from marketplace.capacity import services as capacity
from tests.billing.conftest import job_new, run_job, topup
from tests.capacity import factories
from tests.portal.conftest import logged_in

pytestmark = pytest.mark.django_db


@pytest.fixture
def paid_month(org_a: Any) -> dict[str, Any]:
    """A provider (owned by dave) sold a November job to org A; November is closed."""
    with time_machine.travel(datetime(2026, 11, 3, 9, tzinfo=UTC), tick=False) as clock:
        provider = factories.provider("gpu-provider")
        capacity.provider_payout_details_set(
            organization=provider, name="GPU Provider SAS", iban="FR1420041010050500013M02606"
        )
        pool = factories.pool(provider, price="2.50", gpus=8)
        topup(org_a, "50.00")
        run_job(job_new(org_a, gpus=2), pool, clock, 3600)
        clock.move_to(datetime(2026, 12, 1, 6, tzinfo=UTC))
        billing.periods_close_due()
    dave = User.objects.create_user("dave", email="dave@provider.example", password="dave-pw-12345")
    membership_set(organization=provider, user=dave, role=Membership.Role.OWNER)
    return {"provider": provider, "dave": dave, "batch": PayoutBatch.objects.get()}


def test_a_provider_sees_its_statements_and_payouts(paid_month: dict[str, Any]) -> None:
    page = logged_in(paid_month["dave"]).get("/earnings/")
    assert page.status_code == 200
    body = page.content.decode()
    assert "€4.25" in body and "GPU Provider SAS" in body and "…2606" in body
    assert paid_month["batch"].payouts.get().public_id in body


def test_a_customer_org_has_no_earnings_page(alice_web: Client, paid_month: Any) -> None:
    assert alice_web.get("/earnings/").status_code == 404


def test_payout_details_are_validated_and_saved(paid_month: dict[str, Any]) -> None:
    web = logged_in(paid_month["dave"])
    bad = web.post(
        "/earnings/payout-details/",
        {"payout_name": "GPU Provider SAS", "payout_iban": "FR14 2004 1010 0505 0001 3M02 607"},
    )
    assert bad.status_code == 400 and "not a valid IBAN" in bad.content.decode()
    good = web.post(
        "/earnings/payout-details/",
        {"payout_name": "GPU Provider SAS", "payout_iban": "DE89 3704 0044 0532 0130 00"},
    )
    assert good.status_code == 302
    paid_month["provider"].provider_profile.refresh_from_db()
    assert paid_month["provider"].provider_profile.payout_iban == "DE89370400440532013000"


def test_staff_download_the_sepa_file_and_mark_the_batch_sent_then_paid(
    carol_web: Client, carol: Any, paid_month: dict[str, Any]
) -> None:
    batch = paid_month["batch"]
    page = carol_web.get("/cockpit/billing/")
    assert page.status_code == 200 and batch.public_id in page.content.decode()
    sepa = carol_web.get(f"/cockpit/billing/batches/{batch.public_id}/sepa.xml")
    assert sepa["Content-Type"] == "application/xml"
    assert b"urn:iso:std:iso:20022:tech:xsd:pain.001.001.09" in sepa.content
    mark = f"/cockpit/billing/batches/{batch.public_id}/mark/"
    carol_web.post(mark, {"step": "paid"})  # not sent yet: refused, shown as a message
    batch.refresh_from_db()
    assert batch.status == "created"
    carol_web.post(mark, {"step": "sent"})
    carol_web.post(mark, {"step": "paid"})
    batch.refresh_from_db()
    assert (batch.status, batch.sent_by, batch.paid_by) == ("paid", "carol", "carol")
    assert LogEntry.objects.filter(user=carol, change_message__contains="marked paid").exists()


def test_staff_close_the_period_early_with_a_reason(
    carol_web: Client, paid_month: dict[str, Any]
) -> None:
    carol_web.post("/cockpit/billing/close-early/", {"reason": ""})
    assert not BillingPeriod.objects.filter(early=True).exists()
    carol_web.post("/cockpit/billing/close-early/", {"reason": "gpu-provider leaves"})
    period = BillingPeriod.objects.get(early=True)
    assert period.closed_by == "carol" and period.start == datetime(2026, 12, 1, tzinfo=UTC)


def test_others_cannot_reach_the_billing_cockpit(alice_web: Client, paid_month: Any) -> None:
    batch = paid_month["batch"]
    assert alice_web.get("/cockpit/billing/").status_code == 404
    assert alice_web.get(f"/cockpit/billing/batches/{batch.public_id}/sepa.xml").status_code == 404
    alice_web.post(f"/cockpit/billing/batches/{batch.public_id}/mark/", {"step": "sent"})
    batch.refresh_from_db()
    assert batch.status == "created"
