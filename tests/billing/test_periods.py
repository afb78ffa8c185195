"""Billing periods closed by the scheduler's service: grace, idempotency, catch-up, early close;
statement holdbacks; payout batches as SEPA pain.001.001.09 files; sent and paid."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import sepaxml
import xmlschema
from django.contrib.admin.models import LogEntry
from django.utils import timezone

from marketplace.billing import services as billing
from marketplace.billing.models import (
    Account,
    BillingPeriod,
    Invoice,
    LedgerLine,
    PayoutBatch,
    ProviderStatement,
)
from marketplace.capacity import services as capacity
from marketplace.errors import InvalidInput, InvalidTransition
from tests.billing.conftest import assert_invariants, job_new, run_job, topup

DEC_1 = datetime(2026, 12, 1, tzinfo=UTC)
NS = {"p": "urn:iso:std:iso:20022:tech:xsd:pain.001.001.09"}
XSD = Path(sepaxml.__file__).parent / "schemas" / "pain.001.001.09.xsd"


@pytest.fixture(autouse=True)
def _six_hours_grace(settings: Any) -> None:
    settings.PARTAGE_BILLING_PERIOD = "month"
    settings.PARTAGE_BILLING_GRACE_SECONDS = 6 * 3600
    settings.PARTAGE_PAYOUT_HOLDBACK_PERCENT = Decimal("0")


def _ledger(account: str, org: Any = None) -> Decimal:
    lines = LedgerLine.objects.filter(account=account)
    if org is not None:
        lines = lines.filter(organization=org)
    return sum(lines.values_list("amount", flat=True), Decimal("0.00"))


def test_a_period_closes_after_its_grace_once(
    org_a: Any, pool: Any, provider_org: Any, clock: Any
) -> None:
    topup(org_a, "50.00")
    run_job(job_new(org_a, gpus=2), pool, clock, 3600)  # €5.00 net, €1.00 VAT
    clock.move_to(DEC_1 + timedelta(hours=5, minutes=59))
    assert billing.periods_close_due() == []  # still in its grace: late usage may come
    assert not Invoice.objects.exists()
    clock.move_to(DEC_1 + timedelta(hours=6))
    [period] = billing.periods_close_due()
    assert (period.start, period.end, period.closed_by) == (
        datetime(2026, 11, 1, tzinfo=UTC),
        DEC_1,
        "scheduler",
    )
    invoice = Invoice.objects.get(organization=org_a)
    assert invoice.status == Invoice.Status.FINALIZED
    assert invoice.number == "PARTAGE-2026-000001"
    assert invoice.total == Decimal("6.00")
    statement = ProviderStatement.objects.get(provider=provider_org)
    assert statement.status == ProviderStatement.Status.FINALIZED
    assert (statement.gross, statement.fee, statement.payable, statement.due) == (
        Decimal("5.00"),
        Decimal("0.75"),
        Decimal("4.25"),
        Decimal("4.25"),
    )
    # Closing again, or on every later tick, changes nothing.
    assert billing.periods_close_due() == []
    assert billing.period_close(start=period.start, end=period.end, closed_by="x") == period
    assert Invoice.objects.count() == 1 and ProviderStatement.objects.count() == 1
    assert BillingPeriod.objects.count() == 1
    assert_invariants()


def test_missed_periods_are_caught_up_in_order(
    org_a: Any, pool: Any, provider_org: Any, clock: Any
) -> None:
    topup(org_a, "50.00")
    clock.move_to(datetime(2026, 10, 20, 9, 0, tzinfo=UTC))
    run_job(job_new(org_a), pool, clock, 3600)  # October
    clock.move_to(datetime(2026, 11, 20, 9, 0, tzinfo=UTC))
    run_job(job_new(org_a), pool, clock, 7200)  # November
    # Beat was down over both boundaries: its first tick in December closes both, in order.
    clock.move_to(datetime(2026, 12, 2, tzinfo=UTC))
    closed = billing.periods_close_due()
    assert [(p.start.month, p.end.month) for p in closed] == [(10, 11), (11, 12)]
    invoices = Invoice.objects.order_by("period_start")
    assert [(i.period_start.month, i.number, i.subtotal) for i in invoices] == [
        (10, "PARTAGE-2026-000001", Decimal("2.50")),
        (11, "PARTAGE-2026-000002", Decimal("5.00")),
    ]
    assert ProviderStatement.objects.filter(status="finalized").count() == 2
    assert_invariants()


def test_a_period_without_activity_closes_without_documents(
    org_a: Any, pool: Any, clock: Any
) -> None:
    topup(org_a, "50.00")
    run_job(job_new(org_a), pool, clock, 60)
    clock.move_to(datetime(2027, 1, 2, tzinfo=UTC))
    closed = billing.periods_close_due()
    assert [p.start.month for p in closed] == [11, 12]
    assert [(p.invoices, p.statements) for p in closed] == [(1, 1), (0, 0)]


def test_staff_close_the_period_early_and_the_next_one_runs_to_the_boundary(
    org_a: Any, pool: Any, provider_org: Any, carol: Any, clock: Any
) -> None:
    topup(org_a, "50.00")
    run_job(job_new(org_a), pool, clock, 3600)
    clock.shift(timedelta(hours=1))
    with pytest.raises(InvalidInput):
        billing.period_close_early(actor=carol, reason=" ")
    early = billing.period_close_early(actor=carol, reason="provider gpu-provider leaves")
    assert early.early and early.closed_by == "carol"
    assert early.start == datetime(2026, 11, 1, tzinfo=UTC) and early.end == timezone.now()
    statement = ProviderStatement.objects.get(provider=provider_org)
    assert statement.status == "finalized" and statement.period_end == early.end
    assert LogEntry.objects.filter(user=carol, change_message__contains="early").exists()
    # Later usage of November goes on the period [early end, December 1).
    run_job(job_new(org_a), pool, clock, 3600)
    clock.move_to(DEC_1 + timedelta(hours=7))
    [rest] = billing.periods_close_due()
    assert (rest.start, rest.end) == (early.end, DEC_1)
    numbers = list(Invoice.objects.order_by("period_start").values_list("number", flat=True))
    assert numbers == ["PARTAGE-2026-000001", "PARTAGE-2026-000002"]
    assert_invariants()


def test_holdback_is_kept_then_released_a_period_later(
    org_a: Any, pool: Any, provider_org: Any, clock: Any, settings: Any
) -> None:
    settings.PARTAGE_PAYOUT_HOLDBACK_PERCENT = Decimal("10")
    topup(org_a, "50.00")
    run_job(job_new(org_a, gpus=2), pool, clock, 3600)  # payable €4.25
    clock.move_to(DEC_1 + timedelta(hours=6))
    billing.periods_close_due()
    november = ProviderStatement.objects.get(provider=provider_org)
    # 10 % of €4.25 is €0.425: half-even to the cent, as every amount (money.py).
    assert (november.holdback, november.released, november.due) == (
        Decimal("0.42"),
        Decimal("0.00"),
        Decimal("3.83"),
    )
    assert _ledger(Account.PROVIDER_HOLDBACK, provider_org) == Decimal("-0.42")
    assert billing.provider_payable(provider=provider_org) == Decimal("3.83")
    # December has no sales, but its statement still releases November's holdback.
    clock.move_to(datetime(2027, 1, 1, 6, tzinfo=UTC))
    billing.periods_close_due()
    december = ProviderStatement.objects.get(provider=provider_org, period_start=DEC_1)
    assert (december.gross, december.released, december.due) == (
        Decimal("0.00"),
        Decimal("0.42"),
        Decimal("0.42"),
    )
    november.refresh_from_db()
    assert november.holdback_released_by == december
    assert _ledger(Account.PROVIDER_HOLDBACK, provider_org) == 0
    assert billing.provider_payable(provider=provider_org) == Decimal("4.25")
    assert_invariants()


def _payout_details(org: Any, iban: str = "DE89 3704 0044 0532 0130 00") -> None:
    capacity.provider_payout_details_set(
        organization=org, name=f"{org.name} GmbH", iban=iban, bic="COBADEFFXXX"
    )


def test_payout_details_are_validated(provider_org: Any) -> None:
    with pytest.raises(InvalidInput) as bad_iban:
        capacity.provider_payout_details_set(
            organization=provider_org, name="Acme", iban="DE89 3704 0044 0532 0130 01"
        )
    assert bad_iban.value.param == "payout_iban"
    with pytest.raises(InvalidInput) as bad_bic:
        capacity.provider_payout_details_set(
            organization=provider_org, name="Acme", iban="DE89370400440532013000", bic="XX"
        )
    assert bad_bic.value.param == "payout_bic"
    with pytest.raises(InvalidInput) as no_name:
        capacity.provider_payout_details_set(
            organization=provider_org, name=" ", iban="DE89370400440532013000"
        )
    assert no_name.value.param == "payout_name"
    profile = capacity.provider_payout_details_set(
        organization=provider_org, name="Acme  GmbH", iban="de89 3704 0044 0532 0130 00"
    )
    assert (profile.payout_name, profile.payout_iban) == ("Acme GmbH", "DE89370400440532013000")


def test_payout_batch_is_a_valid_sepa_file_that_totals_the_payables(
    org_a: Any, pool: Any, provider_org: Any, carol: Any, clock: Any
) -> None:
    from tests.capacity import factories

    other = factories.provider("other-provider")
    other_pool = factories.pool(other, price="9.00")
    silent = factories.provider("no-details-provider")
    silent_pool = factories.pool(silent, price="1.00")
    _payout_details(provider_org)
    _payout_details(other, iban="FR14 2004 1010 0505 0001 3M02 606")
    topup(org_a, "100.00")
    run_job(job_new(org_a, gpus=2), pool, clock, 3600)  # payable €4.25
    run_job(job_new(org_a), other_pool, clock, 1234)  # €3.085 → €3.08 net, €0.46 fee, €2.62 payable
    run_job(job_new(org_a), silent_pool, clock, 3600)  # no payout details: waits
    clock.move_to(DEC_1 + timedelta(hours=6))
    billing.periods_close_due()
    batch = PayoutBatch.objects.get()
    paid = ProviderStatement.objects.filter(payout__batch=batch)
    assert batch.total == sum(s.due for s in paid) == Decimal("4.25") + Decimal("2.62")
    assert batch.payout_count == 2
    assert not ProviderStatement.objects.filter(provider=silent, payout__isnull=False).exists()
    # The official XSD (bundled with sepaxml) accepts the file; its sums are the payables.
    xmlschema.XMLSchema(XSD).validate(batch.sepa_xml)
    root = ET.fromstring(batch.sepa_xml)  # noqa: S314 - the file this test just had built
    amounts = [
        Decimal(a.text or "") for a in root.iterfind(".//p:CdtTrfTxInf/p:Amt/p:InstdAmt", NS)
    ]
    assert sum(amounts) == batch.total
    assert Decimal(root.findtext(".//p:GrpHdr/p:CtrlSum", namespaces=NS) or "") == batch.total
    assert root.findtext(".//p:GrpHdr/p:MsgId", namespaces=NS) == batch.message_id
    ibans = {i.text for i in root.iterfind(".//p:CdtrAcct/p:Id/p:IBAN", NS)}
    assert ibans == {"DE89370400440532013000", "FR1420041010050500013M02606"}
    # Paid before sent is refused; sent then paid moves the money through clearing to cash.
    with pytest.raises(InvalidTransition):
        billing.payout_batch_mark_paid(batch=batch, actor=carol)
    cash_before = _ledger(Account.CASH)
    billing.payout_batch_mark_sent(batch=batch, actor=carol)
    assert billing.provider_payable(provider=provider_org) == 0
    assert billing.provider_payable(provider=other) == 0
    assert _ledger(Account.PAYOUT_CLEARING) == -batch.total
    billing.payout_batch_mark_sent(batch=batch, actor=carol)  # a double click: nothing more
    billing.payout_batch_mark_paid(batch=batch, actor=carol)
    billing.payout_batch_mark_paid(batch=batch, actor=carol)
    assert _ledger(Account.PAYOUT_CLEARING) == 0
    assert _ledger(Account.CASH) - cash_before == -batch.total
    assert set(paid.values_list("status", flat=True)) == {"paid"}
    messages = LogEntry.objects.filter(user=carol).values_list("change_message", flat=True)
    assert sum("marked sent" in m for m in messages) == 1
    assert sum("marked paid" in m for m in messages) == 1
    # The provider that waited gives its details: the next close batches it.
    _payout_details(silent)
    clock.move_to(datetime(2027, 1, 1, 6, tzinfo=UTC))
    billing.periods_close_due()
    later = PayoutBatch.objects.exclude(pk=batch.pk).get()
    assert later.payouts.get().provider == silent
    assert_invariants()


def test_a_refund_after_finalization_is_a_credit_note_referencing_the_invoice(
    org_a: Any, pool: Any, provider_org: Any, clock: Any
) -> None:
    from marketplace.finetuning import services as jobs
    from tests.billing.conftest import admit, fail, start

    topup(org_a, "20.00")
    run_job(job_new(org_a), pool, clock, 3600)  # sold, stays billed: €2.50
    job = job_new(org_a)
    admit(job, pool, max_duration=3600)
    attempt = start(job)
    clock.shift(timedelta(seconds=1440))  # €1.00 in November
    jobs.job_pause(organization=org_a, job_id=job.id)
    jobs.attempt_ended(attempt_id=attempt.pk, phase="failed", exit_code=4)
    clock.move_to(DEC_1 + timedelta(hours=6))
    billing.periods_close_due()
    november = Invoice.objects.get(organization=org_a)
    assert november.subtotal == Decimal("3.50") and november.number == "PARTAGE-2026-000001"
    # December: the job resumes and the platform fails it: waived, so its November part is
    # refunded. The November invoice is not touched: a credit note refers to it.
    jobs.job_resume(organization=org_a, job_id=job.id)
    admit(job, pool, max_duration=3600)
    attempt = start(job)
    clock.shift(timedelta(seconds=500))
    fail(attempt, exit_code=1)
    clock.move_to(datetime(2027, 1, 1, 6, tzinfo=UTC))
    billing.periods_close_due()
    november.refresh_from_db()
    assert (november.subtotal, november.total, november.status) == (
        Decimal("3.50"),
        Decimal("4.20"),
        "finalized",
    )
    note = Invoice.objects.get(kind=Invoice.Kind.CREDIT_NOTE)
    assert note.credits == november and note.status == "finalized"
    assert (note.subtotal, note.vat, note.total) == (
        Decimal("-1.00"),
        Decimal("-0.20"),
        Decimal("-1.20"),
    )
    december = Invoice.objects.get(kind=Invoice.Kind.INVOICE, period_start=DEC_1)
    assert december.total == 0 and not december.lines.exists()
    # One series: the December invoice, then its credit note.
    assert (december.number, note.number) == ("PARTAGE-2026-000002", "PARTAGE-2026-000003")
    # Net of the credit note the customer paid exactly what the ledger kept: €2.50 + VAT.
    assert november.total + note.total + december.total == Decimal("3.00")
    assert billing.balance_available(organization=org_a) == Decimal("17.00")
    from marketplace.billing.exports import invoice_html, invoice_pdf

    html = invoice_html(note)
    assert (
        "Credit note PARTAGE-2026-000003" in html and "Credits invoice PARTAGE-2026-000001" in html
    )
    assert invoice_pdf(note).startswith(b"%PDF")
    with pytest.raises(InvalidTransition):
        billing.invoice_void(invoice=note, reason="typo")
    with pytest.raises(InvalidTransition):
        billing.invoice_void(invoice=november, reason="typo")
    assert_invariants()


def test_staff_read_periods_and_batches_in_the_admin(
    admin_client: Any, org_a: Any, pool: Any, provider_org: Any, clock: Any
) -> None:
    _payout_details(provider_org)
    topup(org_a, "50.00")
    run_job(job_new(org_a), pool, clock, 3600)
    clock.move_to(DEC_1 + timedelta(hours=6))
    billing.periods_close_due()
    batch = PayoutBatch.objects.get()
    assert admin_client.get("/admin/billing/billingperiod/").status_code == 200
    assert batch.public_id in admin_client.get("/admin/billing/payoutbatch/").content.decode()
    detail = admin_client.get(f"/admin/billing/payoutbatch/{batch.pk}/change/")
    assert detail.status_code == 200 and "DE89370400440532013000" in detail.content.decode()
