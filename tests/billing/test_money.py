"""Holds, settlement, waivers, the budget stop, late usage, voids, statements, immutability."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest

from marketplace.billing import money
from marketplace.billing import services as billing
from marketplace.billing.models import (
    Account,
    Charge,
    ImmutableRow,
    Invoice,
    InvoiceLine,
    JournalEntry,
    LedgerLine,
    UsageRecord,
)
from marketplace.capacity import services as capacity
from marketplace.errors import InsufficientFunds, InvalidInput, InvalidTransition
from marketplace.finetuning import services as jobs
from tests.billing.conftest import (
    admit,
    assert_invariants,
    fail,
    job_new,
    preempt,
    run_job,
    start,
    succeed,
    topup,
)
from tests.capacity import factories
from tests.fakes.adapter import adapter_archive

pytestmark = pytest.mark.django_db


def test_rounding_rule_is_half_even_per_line() -> None:
    # 36 GPU-s at €0.25/GPU-hour = €0.0025 → 0.00 (half to even); 108 GPU-s → 0.0075 → 0.01
    assert money.cents(money.usage_cost(Decimal(36), Decimal("0.25"))) == Decimal("0.00")
    assert money.cents(money.usage_cost(Decimal(108), Decimal("0.25"))) == Decimal("0.01")
    split = money.stream_split(
        gpu_seconds=Decimal(3600),
        price_per_gpu_hour=Decimal("0.07"),
        vat_rate=Decimal("0.20"),
        fee_percent=Decimal("15"),
    )
    # fee 0.0105 → 0.01, provider takes the remainder: customer = provider + fee + VAT exactly
    assert (split.net, split.fee, split.provider, split.vat) == (
        Decimal("0.07"),
        Decimal("0.01"),
        Decimal("0.06"),
        Decimal("0.01"),
    )
    assert split.customer_total == split.provider + split.fee + split.vat


def test_vat_treatment() -> None:
    assert money.vat_treatment(country="FR", vat_id="FR1").rate == Decimal("0.20")
    reverse = money.vat_treatment(country="DE", vat_id="DE123")
    assert reverse.rate == 0 and reverse.reverse_charge and "Reverse charge" in reverse.note
    assert money.vat_treatment(country="DE", vat_id="").rate == Decimal("0.20")
    assert money.vat_treatment(country="US", vat_id="").rate == 0


def test_unbalanced_entry_is_refused(org_a: Any) -> None:
    with pytest.raises(InvalidInput, match="does not balance"):
        billing.entry_post(
            key="bad",
            kind="adjustment",
            legs=[
                billing.Leg(Account.CASH, Decimal("1.00")),
                billing.Leg(Account.CUSTOMER_BALANCE, Decimal("-0.99"), org_a.pk),
            ],
        )
    assert not JournalEntry.objects.exists()


def test_ledger_rows_are_immutable(org_a: Any) -> None:
    topup(org_a, "10.00")
    entry = JournalEntry.objects.get()
    with pytest.raises(ImmutableRow):
        LedgerLine.objects.filter(entry=entry).update(amount=Decimal("99"))
    with pytest.raises(ImmutableRow):
        LedgerLine.objects.all().delete()
    with pytest.raises(ImmutableRow):
        entry.memo = "changed"
        entry.save()
    with pytest.raises(ImmutableRow):
        entry.delete()
    assert billing.balance_available(organization=org_a) == Decimal("10.00")


def test_hold_covers_vat_and_is_released_after_capture(org_a: Any, pool: Any, clock: Any) -> None:
    topup(org_a, "100.00")
    job = job_new(org_a, gpus=4)
    held = admit(job, pool, max_duration=1800)
    # 4 GPUs x 1800 s at €2.50/GPU-hour = €5.00, + 20 % VAT
    assert held == Decimal("6.00")
    assert billing.balance_available(organization=org_a) == Decimal("94.00")
    assert admit_again_is_noop(job, pool) == Decimal("6.00")
    attempt = start(job)
    clock.shift(timedelta(seconds=900))
    succeed(job, attempt)
    assert billing.balance_held(organization=org_a) == 0
    assert billing.balance_available(organization=org_a) == Decimal("97.00")
    assert_invariants()


def admit_again_is_noop(job: Any, pool: Any) -> Decimal:
    return billing.hold_place(job=job, pool=pool, max_duration_seconds=1800)


def test_requeue_tops_up_the_hold_for_usage_so_far(org_a: Any, pool: Any, clock: Any) -> None:
    topup(org_a, "10.00")
    job = job_new(org_a)
    admit(job, pool, max_duration=3600)  # €3.00
    attempt = start(job)
    clock.shift(timedelta(seconds=3000))
    preempt(attempt)
    job.refresh_from_db()
    assert job.status == "queued"
    # Used €2.08 + 0.42 VAT not yet captured; the next admission holds that plus a new hour.
    assert admit(job, pool, max_duration=3600) == Decimal("5.50")
    attempt = start(job)
    clock.shift(timedelta(seconds=600))
    succeed(job, attempt)
    # 3600 GPU-s in all: €2.50 + €0.50 VAT
    assert billing.balance_available(organization=org_a) == Decimal("7.00")
    assert_invariants()


def test_platform_failure_costs_nothing_and_reverses_the_provider(
    org_a: Any, pool: Any, provider_org: Any, clock: Any
) -> None:
    topup(org_a, "20.00")
    job = job_new(org_a)
    admit(job, pool, max_duration=3600)
    attempt = start(job)
    clock.shift(timedelta(seconds=1000))
    jobs.job_pause(organization=org_a, job_id=job.id)
    jobs.attempt_ended(attempt_id=attempt.pk, phase="failed", exit_code=4)
    assert billing.balance_available(organization=org_a) < Decimal("20.00")
    assert billing.provider_payable(provider=provider_org) > 0
    jobs.job_resume(organization=org_a, job_id=job.id)
    admit(job, pool, max_duration=3600)
    attempt = start(job)
    clock.shift(timedelta(seconds=500))
    fail(attempt, exit_code=1)  # the trainer crashed: platform_error
    job.refresh_from_db()
    assert job.failure_class == "platform_error"
    assert billing.balance_available(organization=org_a) == Decimal("20.00")
    assert billing.provider_payable(provider=provider_org) == 0
    refunds = Charge.objects.filter(job=job, net__lt=0)
    assert refunds.count() == 1
    assert_invariants()


def test_user_error_is_charged(org_a: Any, pool: Any, clock: Any) -> None:
    topup(org_a, "20.00")
    job = job_new(org_a)
    admit(job, pool)
    attempt = start(job)
    clock.shift(timedelta(seconds=1440))
    fail(attempt, exit_code=3)
    assert billing.balance_available(organization=org_a) == Decimal("20.00") - Decimal("1.20")


def test_max_cost_stops_the_job_and_its_adapter_is_delivered(
    org_a: Any, pool: Any, clock: Any
) -> None:
    topup(org_a, "20.00")
    job = job_new(org_a, gpus=2, max_cost=Decimal("1.00"))
    admit(job, pool)
    attempt = start(job)
    flags = jobs.trainer_events_record(job_id=job.id, attempt_number=attempt.number, events=[])
    assert flags["finish_now"] is False
    clock.shift(timedelta(seconds=719))  # 1438 GPU-s = €0.9986
    assert (
        jobs.trainer_events_record(job_id=job.id, attempt_number=1, events=[])["finish_now"]
        is False
    )
    clock.shift(timedelta(seconds=1))  # 1440 GPU-s = €1.00
    assert (
        jobs.trainer_events_record(job_id=job.id, attempt_number=1, events=[])["finish_now"] is True
    )
    # The agent sends SIGUSR1; the trainer finishes its step, delivers the adapter, exits 0.
    clock.shift(timedelta(seconds=3))
    succeed(job, attempt)
    job.refresh_from_db()
    assert job.status == "succeeded" and job.result_file_id
    # 1446 GPU-s: €1.00 (half-even of 1.004) + €0.20 VAT
    assert billing.balance_available(organization=org_a) == Decimal("18.80")
    assert_invariants()


def test_adapter_before_exit_is_charged_when_the_attempt_ends(
    org_a: Any, pool: Any, clock: Any
) -> None:
    """The adapter arrives (job succeeds, settles) before the trainer exits: usage still captured."""
    topup(org_a, "20.00")
    job = job_new(org_a)
    admit(job, pool)
    attempt = start(job)
    clock.shift(timedelta(seconds=3600))
    jobs.adapter_store(job_id=job.id, attempt_number=1, archive=adapter_archive(), manifest={})
    assert billing.balance_held(organization=org_a) == Decimal("3.00")  # kept until the exit
    clock.shift(timedelta(seconds=2))
    jobs.attempt_ended(attempt_id=attempt.pk, phase="succeeded", exit_code=0)
    assert billing.balance_held(organization=org_a) == 0
    assert billing.balance_available(organization=org_a) == Decimal("17.00")
    assert_invariants()


def test_replays_change_nothing(org_a: Any, pool: Any, clock: Any) -> None:
    topup(org_a, "20.00")
    job = job_new(org_a)
    attempt = run_job(job, pool, clock, 1000)
    before = (JournalEntry.objects.count(), UsageRecord.objects.count(), Charge.objects.count())
    attempt.refresh_from_db()
    billing.attempt_meter(attempt=attempt)
    billing.job_settle(job=job)
    jobs.attempt_ended(attempt_id=attempt.pk, phase="succeeded", exit_code=0)
    topup(org_a, "20.00")  # same reference "t1"
    assert (
        JournalEntry.objects.count(),
        UsageRecord.objects.count(),
        Charge.objects.count(),
    ) == before


def test_late_record_lands_on_next_invoice_as_correction(org_a: Any, pool: Any, clock: Any) -> None:
    """Usage from November whose record arrives after November was invoiced (the attempt was
    still running at the cut) goes on December's invoice, as a correction line."""
    topup(org_a, "50.00")
    job_1 = job_new(org_a)
    run_job(job_1, pool, clock, 3600)
    job_2 = job_new(org_a)
    clock.move_to(datetime(2026, 11, 30, 23, 30, tzinfo=UTC))
    admit(job_2, pool)
    attempt = start(job_2)
    clock.move_to(datetime(2026, 12, 1, 0, 0, 1, tzinfo=UTC))
    nov = billing.month_bounds(2026, 11)
    with pytest.raises(InvalidInput, match="not over yet"):
        billing.invoices_finalize(period_start=nov[1], period_end=billing.month_bounds(2026, 12)[1])
    [november] = billing.invoices_finalize(period_start=nov[0], period_end=nov[1])
    assert november.subtotal == Decimal("2.50")
    assert [line.job_id for line in november.lines.all()] == [job_1.id]
    clock.move_to(datetime(2026, 12, 1, 0, 30, tzinfo=UTC))
    succeed(job_2, attempt)  # 30 min in November, 30 min in December: recorded now
    clock.move_to(datetime(2027, 1, 1, 0, 0, 1, tzinfo=UTC))
    assert billing.invoices_finalize(period_start=nov[0], period_end=nov[1]) == []  # already final
    dec = billing.month_bounds(2026, 12)
    [december] = billing.invoices_finalize(period_start=dec[0], period_end=dec[1])
    [line] = december.lines.all()
    assert line.is_correction and line.job_id == job_2.id
    assert "from an earlier period" in line.description
    assert line.gpu_seconds == Decimal("3600.000") and line.amount == Decimal("2.50")
    november.refresh_from_db()
    assert november.subtotal == Decimal("2.50") and november.lines.count() == 1
    assert_invariants()


def test_void_returns_usage_to_the_next_invoice(org_a: Any, pool: Any, clock: Any) -> None:
    topup(org_a, "50.00")
    job = job_new(org_a)
    run_job(job, pool, clock, 3600)
    clock.move_to(datetime(2026, 12, 1, 0, 0, 1, tzinfo=UTC))
    nov = billing.month_bounds(2026, 11)
    draft = billing.invoice_draft(organization=org_a, period_start=nov[0], period_end=nov[1])
    assert draft.status == "draft" and draft.total == Decimal("3.00") and draft.number is None
    final = billing.invoice_finalize(invoice=draft)
    assert final.status == "finalized" and final.number
    with pytest.raises(InvalidTransition):
        billing.invoice_draft(organization=org_a, period_start=nov[0], period_end=nov[1])
    assert (final.usage_from, final.usage_until) == (None, nov[1])
    assert billing.invoices.covered_until([org_a.pk]) == {org_a.pk: nov[1]}
    billing.invoice_void(invoice=final, reason="wrong customer address")
    assert billing.invoices.covered_until([org_a.pk]) == {}  # its usage is uninvoiced again
    [again] = billing.invoices_finalize(period_start=nov[0], period_end=nov[1])
    assert again.pk != final.pk and again.total == Decimal("3.00")
    assert InvoiceLine.objects.filter(invoice__status="finalized", job=job).count() == 1
    assert Invoice.objects.get(pk=final.pk).status == "void"
    assert_invariants()


def test_only_the_latest_finalized_invoice_can_be_voided(org_a: Any, pool: Any, clock: Any) -> None:
    """Finalized invoices tile an org's usage; voiding one in the middle would leave a hole."""
    topup(org_a, "50.00")
    run_job(job_new(org_a), pool, clock, 3600)
    clock.move_to(datetime(2026, 12, 1, 0, 0, 1, tzinfo=UTC))
    [november] = billing.invoices_finalize(**_november())
    run_job(job_new(org_a), pool, clock, 1800)
    clock.move_to(datetime(2027, 1, 1, 0, 0, 1, tzinfo=UTC))
    dec = billing.month_bounds(2026, 12)
    [december] = billing.invoices_finalize(period_start=dec[0], period_end=dec[1])
    assert december.usage_from == november.usage_until == dec[0]
    with pytest.raises(InvalidTransition, match="not the organization's latest"):
        billing.invoice_void(invoice=november, reason="typo")
    assert Invoice.objects.get(pk=november.pk).status == "finalized"
    billing.invoice_void(invoice=december, reason="typo")
    [again] = billing.invoices_finalize(period_start=dec[0], period_end=dec[1])
    assert again.total == december.total == Decimal("1.50")
    # November again after December: nothing left to bill, nothing billed twice.
    assert billing.invoices_finalize(**_november()) == []
    assert_invariants()


def test_provider_statement_and_payout(
    org_a: Any, pool: Any, provider_org: Any, clock: Any
) -> None:
    topup(org_a, "50.00")
    other_pool = factories.pool(factories.provider("other-provider"), price="9.00")
    run_job(job_new(org_a, gpus=2), pool, clock, 3600)  # €5.00 net
    run_job(job_new(org_a), other_pool, clock, 60)  # someone else's pool
    clock.move_to(datetime(2026, 12, 1, 0, 0, 1, tzinfo=UTC))
    nov = billing.month_bounds(2026, 11)
    statement = billing.statement_build(
        provider=provider_org, period_start=nov[0], period_end=nov[1]
    )
    # gross €5.00, platform fee 15 % = €0.75, payable €4.25
    assert (statement.gross, statement.fee, statement.payable) == (
        Decimal("5.00"),
        Decimal("0.75"),
        Decimal("4.25"),
    )
    assert statement.gpu_seconds == Decimal("7200.000")
    with pytest.raises(InvalidTransition):
        billing.statement_pay(statement=statement, reference="sepa-1")
    statement = billing.statement_finalize(statement=statement)
    assert billing.provider_payable(provider=provider_org) == Decimal("4.25")
    billing.statement_pay(statement=statement, reference="sepa-1")
    billing.statement_pay(statement=statement, reference="sepa-1")  # replay
    assert billing.provider_payable(provider=provider_org) == 0
    assert JournalEntry.objects.filter(kind="payout").count() == 1
    assert_invariants()


def test_insufficient_funds_respects_the_credit_line(org_a: Any, pool: Any) -> None:
    job = job_new(org_a)
    with pytest.raises(InsufficientFunds):
        admit(job, pool)
    billing.credit_limit_set(organization=org_a, credit_limit=Decimal("5.00"))
    assert admit(job, pool) == Decimal("3.00")
    assert billing.balance_available(organization=org_a) == Decimal("-3.00")
    assert_invariants()


def test_price_is_snapshotted_at_admission(
    org_a: Any, pool: Any, provider_org: Any, clock: Any
) -> None:
    """A price change after admission does not touch the admitted job; a re-admission (after a
    preemption) takes the new price for the attempts that follow, as a second invoice line."""
    topup(org_a, "50.00")
    job = job_new(org_a)
    admit(job, pool, max_duration=3600)  # at €2.50/GPU-hour
    attempt = start(job)
    capacity.pool_update(
        provider=provider_org, pool_id=pool.public_id, changes={"price_per_gpu_hour": "10.00"}
    )
    clock.shift(timedelta(seconds=1800))
    preempt(attempt)
    record = UsageRecord.objects.get(attempt=attempt)
    assert record.price_per_gpu_hour == Decimal("2.5000")  # the snapshot, not today's €10.00
    pool.refresh_from_db()
    admit(job, pool, max_duration=3600)
    assert job.pricing.price_per_gpu_hour == Decimal("10.0000")
    attempt = start(job)
    clock.shift(timedelta(seconds=360))
    succeed(job, attempt)
    # 1800 s at €2.50 = €1.25, then 360 s at €10.00 = €1.00; + 20 % VAT
    assert billing.balance_available(organization=org_a) == Decimal("50.00") - Decimal("2.70")
    clock.move_to(datetime(2026, 12, 1, 0, 0, 1, tzinfo=UTC))
    [invoice] = billing.invoices_finalize(**_november())
    assert sorted((line.price_per_gpu_hour, line.amount) for line in invoice.lines.all()) == [
        (Decimal("2.5000"), Decimal("1.25")),
        (Decimal("10.0000"), Decimal("1.00")),
    ]
    assert_invariants()


def _november() -> dict[str, datetime]:
    start, end = billing.month_bounds(2026, 11)
    return {"period_start": start, "period_end": end}


def test_provider_failure_costs_nothing_and_reverses_the_provider(
    org_a: Any, pool: Any, provider_org: Any, clock: Any
) -> None:
    """Attempts lost again and again on the provider's nodes: after the last retry the job fails
    as a provider error; everything captured for the earlier attempts is refunded."""
    topup(org_a, "50.00")
    job = job_new(org_a)
    for number in range(1, jobs.MAX_ATTEMPTS + 1):
        admit(job, pool, max_duration=3600)
        attempt = start(job)
        clock.shift(timedelta(seconds=600))
        jobs.attempt_ended(attempt_id=attempt.pk, phase="missing", reason="node lost")
        job.refresh_from_db()
        if number < jobs.MAX_ATTEMPTS:
            assert job.status == "queued"
    assert job.status == "failed" and job.failure_class == "provider_error"
    assert UsageRecord.objects.filter(job=job).count() == jobs.MAX_ATTEMPTS
    assert billing.balance_available(organization=org_a) == Decimal("50.00")
    assert billing.balance_held(organization=org_a) == 0
    assert billing.provider_payable(provider=provider_org) == 0
    clock.move_to(datetime(2026, 12, 1, 0, 0, 1, tzinfo=UTC))
    [invoice] = billing.invoices_finalize(**_november())
    [line] = invoice.lines.all()
    assert line.amount == 0 and line.billable_gpu_seconds == 0 and "not charged" in line.description
    assert invoice.total == 0
    assert_invariants()


class FakeCardProvider:
    """A card processor at the outside boundary: it confirms a payment under its own reference,
    or declines it."""

    name = "fakecard"

    def __init__(self, *, decline: bool = False) -> None:
        self.decline = decline
        self.calls: list[tuple[str, Decimal]] = []

    def confirm(self, *, reference: str, amount: Decimal) -> billing.PaymentConfirmation:
        self.calls.append((reference, amount))
        if self.decline:
            raise InvalidInput("The card was declined.", param="payment")
        return billing.PaymentConfirmation(reference=f"ch_{reference}", amount=amount)


def test_topups_go_through_the_payment_provider_interface(org_a: Any) -> None:
    card = FakeCardProvider()
    provider: billing.PaymentProvider = card  # the protocol a real integration implements
    entry = billing.topup_record(
        organization=org_a, amount=Decimal("25.00"), reference="pi-1", provider=provider
    )
    assert entry.key == "topup:fakecard:ch_pi-1" and card.calls == [("pi-1", Decimal("25.00"))]
    # The same payment delivered twice (a webhook retry) counts once.
    billing.topup_record(
        organization=org_a, amount=Decimal("25.00"), reference="pi-1", provider=card
    )
    # The same reference from another provider is another payment.
    billing.topup_record(organization=org_a, amount=Decimal("5.00"), reference="pi-1")
    assert billing.balance_available(organization=org_a) == Decimal("30.00")
    before = LedgerLine.objects.count()
    with pytest.raises(InvalidInput, match="declined"):
        billing.topup_record(
            organization=org_a,
            amount=Decimal("99.00"),
            reference="pi-2",
            provider=FakeCardProvider(decline=True),
        )
    assert LedgerLine.objects.count() == before
    assert billing.balance_available(organization=org_a) == Decimal("30.00")
    assert_invariants()
