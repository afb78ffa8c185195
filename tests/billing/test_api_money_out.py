"""/v1/billing: providers see their own statements and payouts; orgs see credit notes."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from rest_framework.test import APIClient

from marketplace.accounts.services import api_key_create
from marketplace.billing import services as billing
from marketplace.billing.models import PayoutBatch
from marketplace.capacity import services as capacity
from tests.billing.conftest import job_new, run_job, topup
from tests.capacity import factories


def _key_client(org: Any) -> APIClient:
    client = APIClient()
    secret = api_key_create(organization=org, name="k").secret
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {secret}")
    return client


def test_providers_see_only_their_own_statements_and_payouts(
    org_a: Any, client_a: APIClient, pool: Any, provider_org: Any, clock: Any,
    django_assert_max_num_queries: Any,
) -> None:  # fmt: skip
    other = factories.provider("other-provider")
    other_pool = factories.pool(other, price="9.00")
    for org, iban in ((provider_org, "FR1420041010050500013M02606"),
                      (other, "DE89370400440532013000")):  # fmt: skip
        capacity.provider_payout_details_set(organization=org, name=org.name, iban=iban)
    topup(org_a, "100.00")
    run_job(job_new(org_a, gpus=2), pool, clock, 3600)
    run_job(job_new(org_a), other_pool, clock, 3600)
    clock.move_to(datetime(2026, 12, 1, 6, tzinfo=UTC))
    billing.periods_close_due()
    batch = PayoutBatch.objects.get()
    billing.payout_batch_mark_sent(batch=batch, actor=factories.staff())
    mine, theirs = _key_client(provider_org), _key_client(other)

    with django_assert_max_num_queries(6):
        payouts = mine.get("/v1/billing/payouts").json()["data"]
    [payout] = payouts
    [statement] = mine.get("/v1/billing/statements").json()["data"]
    assert payout["statement"] == statement["id"] and statement["payout"] == payout["id"]
    assert (payout["status"], payout["amount"], payout["iban_last4"]) == ("sent", "4.25", "2606")
    assert (statement["payable"], statement["holdback"], statement["due"]) == (
        "4.25",
        "0.00",
        "4.25",
    )
    [their_payout] = theirs.get("/v1/billing/payouts").json()["data"]
    assert their_payout["id"] != payout["id"] and their_payout["amount"] == "7.65"
    assert mine.get(f"/v1/billing/statements/{their_payout['statement']}").status_code == 404
    # A customer organization has neither.
    assert client_a.get("/v1/billing/payouts").json()["data"] == []
    assert client_a.get("/v1/billing/statements").json()["data"] == []
    assert APIClient().get("/v1/billing/payouts").status_code == 401


def test_credit_notes_are_listed_with_the_invoice_they_credit(
    org_a: Any, client_a: APIClient, client_b: APIClient, pool: Any, clock: Any
) -> None:
    from marketplace.finetuning import services as jobs
    from tests.billing.conftest import admit, fail, start

    topup(org_a, "20.00")
    job = job_new(org_a)
    admit(job, pool)
    attempt = start(job)
    clock.shift(timedelta(seconds=1440))
    jobs.job_pause(organization=org_a, job_id=job.id)
    jobs.attempt_ended(attempt_id=attempt.pk, phase="failed", exit_code=4)
    clock.move_to(datetime(2026, 12, 1, 6, tzinfo=UTC))
    billing.periods_close_due()
    jobs.job_resume(organization=org_a, job_id=job.id)
    admit(job, pool)
    fail(start(job), exit_code=1)
    clock.move_to(datetime(2027, 1, 1, 6, tzinfo=UTC))
    billing.periods_close_due()
    documents = client_a.get("/v1/billing/invoices").json()["data"]
    notes = [d for d in documents if d["kind"] == "credit_note"]
    [note] = notes
    credited = next(d for d in documents if d["id"] == note["credits"])
    assert credited["kind"] == "invoice" and note["credits_number"] == credited["number"]
    assert Decimal(note["total"]) == -Decimal(credited["total"]) == Decimal("-1.20")
    assert client_b.get(f"/v1/billing/invoices/{note['id']}").status_code == 404
