"""GPU bookings in billing: paid when confirmed, refunded exactly as quoted on cancellation,
refused (leaving nothing) without funds, on the invoice and the provider's statement, and the
work run inside a booking is not charged a second time for the same GPU-hours."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal
from typing import Any

import pytest
from django.utils import timezone

from marketplace.billing import services as billing
from marketplace.billing.exports import invoice_csv
from marketplace.billing.models import (
    Account,
    BookingCharge,
    Charge,
    InvoiceLine,
    JournalEntry,
    LedgerLine,
    UsageRecord,
)
from marketplace.capacity import services as capacity
from marketplace.capacity.models import Booking
from marketplace.errors import InsufficientFunds, InvalidTransition
from tests.billing.conftest import (
    T0,
    admit_on_booking,
    assert_invariants,
    book,
    job_new,
    start,
    succeed,
    topup,
)
from tests.capacity import factories
from tests.quotas.conftest import plan_make

pytestmark = pytest.mark.django_db


def _platform(account: str) -> Decimal:
    amounts = LedgerLine.objects.filter(account=account).values_list("amount", flat=True)
    return -sum(amounts, Decimal(0))


def test_a_booking_is_charged_its_amount_plus_vat_to_the_cent(
    org_a: Any, provider_org: Any, clock: Any
) -> None:
    pool = factories.pool(provider_org, price="2.3333", gpus=8)
    topup(org_a, "100.00")
    # 3 GPUs x 5,100 s x €2.3333/GPU-hour = €9.916525 → €9.92 (half-even, the line rule).
    booking = book(org_a, pool, gpus=3, start=T0 + timedelta(days=3), hours=85 / 60)

    assert booking.amount == Decimal("9.92")
    [charge] = BookingCharge.objects.filter(booking=booking)
    assert (charge.net, charge.vat, charge.fee, charge.provider_amount) == (
        Decimal("9.92"),  # net
        Decimal("1.98"),  # VAT 20 %: 1.984
        Decimal("1.49"),  # platform fee 15 %: 1.488
        Decimal("8.43"),  # the provider takes the remainder
    )
    assert charge.gpu_seconds == Decimal("15300.000")
    assert billing.balance_available(organization=org_a) == Decimal("88.10")
    assert billing.provider_payable(provider=provider_org) == Decimal("8.43")
    assert _platform(Account.PLATFORM_REVENUE) == Decimal("1.49")
    assert _platform(Account.VAT_PAYABLE) == Decimal("1.98")
    assert_invariants()


def test_a_cancellation_refunds_exactly_what_its_quote_promised(
    org_a: Any, provider_org: Any, clock: Any
) -> None:
    pool = factories.pool(provider_org, price="2.495", gpus=8)
    topup(org_a, "100.00")
    booking = book(org_a, pool, gpus=1, start=T0 + timedelta(hours=30), hours=2)
    assert booking.amount == Decimal("4.99")  # €5.99 with VAT
    assert billing.balance_available(organization=org_a) == Decimal("94.01")

    quote = capacity.booking_cancellation_quote(booking=booking)
    assert (quote.refund_fraction, quote.refund_amount) == (Decimal("0.5"), Decimal("2.50"))
    capacity.booking_cancel(organization=org_a, booking_id=booking.public_id)

    [refund] = BookingCharge.objects.filter(booking=booking, kind="refund")
    # The promised €2.50, plus the VAT on it: kept €2.49 owes €0.50 VAT of the €1.00 paid.
    assert (refund.net, refund.vat) == (Decimal("-2.50"), Decimal("-0.50"))
    # The provider's payable and the platform fee follow: kept €2.49 splits €0.37 + €2.12.
    assert (refund.fee, refund.provider_amount) == (Decimal("-0.38"), Decimal("-2.12"))
    assert billing.balance_available(organization=org_a) == Decimal("97.01")
    assert billing.provider_payable(provider=provider_org) == Decimal("2.12")
    assert _platform(Account.PLATFORM_REVENUE) == Decimal("0.37")
    assert _platform(Account.VAT_PAYABLE) == Decimal("0.50")
    assert_invariants()


def test_a_full_refund_reverses_everything_and_a_late_cancel_refunds_nothing(
    org_a: Any, provider_org: Any, clock: Any
) -> None:
    pool = factories.pool(provider_org, price="2.3333", gpus=8)
    topup(org_a, "100.00")
    early = book(org_a, pool, gpus=3, start=T0 + timedelta(days=3), hours=85 / 60)
    late = book(org_a, pool, gpus=1, start=T0 + timedelta(hours=10), hours=1)
    capacity.booking_cancel(organization=org_a, booking_id=early.public_id)
    capacity.booking_cancel(organization=org_a, booking_id=late.public_id)

    # The early one: everything reversed, to the cent. The late one (< 24 h): nothing back.
    assert BookingCharge.objects.filter(booking=late, kind="refund").count() == 0
    late_charge = BookingCharge.objects.get(booking=late)
    assert billing.balance_available(organization=org_a) == Decimal("100.00") - (
        late_charge.net + late_charge.vat
    )
    assert billing.provider_payable(provider=provider_org) == late_charge.provider_amount
    assert _platform(Account.PLATFORM_REVENUE) == late_charge.fee
    assert_invariants()


def test_a_booking_the_balance_cannot_cover_is_refused_and_leaves_nothing(
    org_a: Any, provider_org: Any, clock: Any
) -> None:
    pool = factories.pool(provider_org, price="2.495", gpus=8)
    topup(org_a, "5.98")  # one cent short of €4.99 + €1.00 VAT
    entries = JournalEntry.objects.count()
    with pytest.raises(InsufficientFunds) as refused:
        book(org_a, pool, gpus=1, start=T0 + timedelta(days=3), hours=2)
    assert refused.value.details == {"needed": "5.99", "available": "5.98", "currency": "EUR"}
    assert "Top up" in refused.value.message
    assert Booking.objects.count() == 0
    assert BookingCharge.objects.count() == 0
    assert JournalEntry.objects.count() == entries
    assert billing.balance_available(organization=org_a) == Decimal("5.98")

    # An explicit credit line lets the balance go below zero, within it.
    billing.credit_limit_set(organization=org_a, credit_limit=Decimal("0.01"))
    book(org_a, pool, gpus=1, start=T0 + timedelta(days=3), hours=2)
    assert billing.balance_available(organization=org_a) == Decimal("-0.01")
    assert_invariants()


def test_the_api_answers_402_and_writes_no_booking(client_a: Any, org_a: Any) -> None:
    factories.pool(price="2.00", gpus=8)
    begin = timezone.now().replace(minute=0, second=0, microsecond=0) + timedelta(days=3)
    request = {
        "flavor": "h100-80g",
        "gpus": 2,
        "start": int(begin.timestamp()),
        "end": int((begin + timedelta(hours=2)).timestamp()),
    }
    response = client_a.post("/v1/bookings", request, format="json")
    assert response.status_code == 402, response.content
    assert response.json()["error"]["code"] == "insufficient_funds"
    assert "€9.60" in response.json()["error"]["message"]  # 2 x 2 h x €2.00 + 20 % VAT
    assert Booking.objects.count() == 0
    topup(org_a, "9.60")
    assert client_a.post("/v1/bookings", request, format="json").status_code == 201
    assert billing.balance_available(organization=org_a) == Decimal("0.00")


def test_charges_and_refunds_are_idempotent(org_a: Any, provider_org: Any, clock: Any) -> None:
    pool = factories.pool(provider_org, price="2.50", gpus=8)
    topup(org_a, "100.00")
    booking = book(org_a, pool, gpus=2, start=T0 + timedelta(days=3), hours=2)
    first = BookingCharge.objects.get(booking=booking)
    assert billing.booking_charge(booking=booking).pk == first.pk  # a replay writes nothing
    capacity.booking_cancel(organization=org_a, booking_id=booking.public_id)
    booking.refresh_from_db()
    refund = BookingCharge.objects.get(booking=booking, kind="refund")
    again = billing.booking_refund(booking=booking, refund_amount=booking.refund_amount)
    assert again is not None and again.pk == refund.pk
    with pytest.raises(InvalidTransition):
        capacity.booking_cancel(organization=org_a, booking_id=booking.public_id)
    assert BookingCharge.objects.filter(booking=booking).count() == 2
    assert JournalEntry.objects.filter(key__startswith=f"booking:{booking.public_id}:").count() == 2
    assert billing.balance_available(organization=org_a) == Decimal("100.00")
    assert_invariants()


def test_work_inside_a_booking_is_not_charged_again(
    org_a: Any, provider_org: Any, pool: Any, clock: Any
) -> None:
    """Booked 2 GPUs for [T0+1h, T0+3h) at €2.50. A job inside it costs nothing more; a job
    that runs past the booking's end pays for the GPU-seconds outside it only."""
    topup(org_a, "100.00")
    booking = book(org_a, pool, gpus=2, start=T0 + timedelta(hours=1), hours=2)
    assert booking.amount == Decimal("10.00")  # €12.00 with VAT
    assert billing.balance_available(organization=org_a) == Decimal("88.00")

    clock.move_to(T0 + timedelta(hours=1))
    inside = job_new(org_a, gpus=2)
    assert admit_on_booking(inside, booking, max_duration=3600) == 0  # nothing to hold
    attempt = start(inside)
    clock.shift(timedelta(minutes=50))
    succeed(inside, attempt)
    record = UsageRecord.objects.get(job=inside)
    assert record.gpu_seconds == record.covered_gpu_seconds == Decimal("6000.000")
    assert record.booking_id == booking.pk
    assert Charge.objects.filter(job=inside, net__gt=0).count() == 0
    assert billing.balance_available(organization=org_a) == Decimal("88.00")

    # Admitted 30 min before the booking ends, with a 1 h maximum: it holds the 30 min outside.
    clock.move_to(T0 + timedelta(hours=2, minutes=30))
    over = job_new(org_a, gpus=2)
    held = admit_on_booking(over, booking, max_duration=3600)
    assert held == Decimal("3.00")  # 2 GPUs x 1,800 s x €2.50 = €2.50, + €0.50 VAT
    attempt = start(over)
    clock.shift(timedelta(minutes=50))  # 30 min inside the booking, 20 min after it
    succeed(over, attempt)
    record = UsageRecord.objects.get(job=over)
    assert (record.gpu_seconds, record.covered_gpu_seconds) == (
        Decimal("6000.000"),
        Decimal("3600.000"),
    )
    # 2,400 GPU-s outside x €2.50 / 3600 = €1.666… → €1.67, + €0.33 VAT.
    [charge] = Charge.objects.filter(job=over)
    assert (charge.billable_gpu_seconds, charge.net, charge.vat) == (
        Decimal("2400.000"),
        Decimal("1.67"),
        Decimal("0.33"),
    )
    assert billing.balance_available(organization=org_a) == Decimal("86.00")
    assert billing.balance_held(organization=org_a) == 0
    assert_invariants()


def test_the_invoice_and_the_statement_include_the_booking(
    org_a: Any, provider_org: Any, pool: Any, clock: Any
) -> None:
    topup(org_a, "100.00")
    booking = book(org_a, pool, gpus=2, start=T0 + timedelta(hours=1), hours=2)
    cancelled = book(org_a, pool, gpus=1, start=T0 + timedelta(hours=30), hours=2)
    capacity.booking_cancel(organization=org_a, booking_id=cancelled.public_id)  # 50 %
    clock.move_to(T0 + timedelta(hours=2, minutes=30))
    job = job_new(org_a, gpus=2)
    admit_on_booking(job, booking)
    attempt = start(job)
    clock.shift(timedelta(minutes=50))
    succeed(job, attempt)

    clock.move_to(T0 + timedelta(days=30))  # December: November is over
    period = billing.month_bounds(2026, 11)
    [invoice] = billing.invoices_finalize(period_start=period[0], period_end=period[1])
    lines = {
        (line.booking_id, line.job_id, line.is_correction): line
        for line in InvoiceLine.objects.filter(invoice=invoice)
    }
    booked = lines[(booking.pk, None, False)]
    assert (booked.amount, booked.vat, booked.billable_gpu_seconds) == (
        Decimal("10.00"),
        Decimal("2.00"),
        Decimal("14400.000"),
    )
    assert "GPU booking" in booked.description
    assert lines[(cancelled.pk, None, False)].amount == Decimal("5.00")
    refund = lines[(cancelled.pk, None, True)]
    assert (refund.amount, refund.vat) == (Decimal("-2.50"), Decimal("-0.50"))
    job_line = lines[(None, job.id, False)]
    assert (job_line.gpu_seconds, job_line.billable_gpu_seconds, job_line.amount) == (
        Decimal("6000.000"),
        Decimal("2400.000"),
        Decimal("1.67"),
    )
    assert "paid by the booking" in job_line.description
    rows = {row.split(",")[3] for row in invoice_csv(invoice).splitlines()[1:]}
    assert {booking.public_id, cancelled.public_id} <= rows  # the booking column
    assert invoice.subtotal == Decimal("14.17")  # 10.00 + 5.00 - 2.50 + 1.67
    assert invoice.total == Decimal("17.00")  # what left the balance: 100.00 - 83.00
    assert billing.balance_available(organization=org_a) == Decimal("83.00")

    # Nothing is billed twice: the next month has nothing of it.
    december = billing.month_bounds(2026, 12)
    clock.move_to(december[1] + timedelta(hours=1))
    assert billing.invoices_finalize(period_start=december[0], period_end=december[1]) == []

    [statement] = billing.statements_build(period_start=period[0], period_end=period[1])
    # Gross: booking €10.00 + cancelled booking €5.00 - €2.50 refunded + usage €1.67.
    assert statement.provider_id == provider_org.pk
    assert statement.gross == Decimal("14.17")
    # Fees: €1.50 + €0.75, less €0.37 (kept €2.50 owes €0.38 of the €0.75), + €0.25.
    assert statement.fee == Decimal("2.13")
    assert statement.payable == billing.provider_payable(provider=provider_org)
    assert_invariants()


def test_staff_see_booking_charges_in_the_admin(
    admin_client: Any, org_a: Any, provider_org: Any, pool: Any
) -> None:
    topup(org_a, "100.00")
    booking = book(org_a, pool, gpus=1, start=timezone.now() + timedelta(days=3), hours=1)
    page = admin_client.get("/admin/billing/bookingcharge/")
    assert page.status_code == 200
    assert booking.public_id in page.content.decode()


def test_the_admission_pass_holds_nothing_for_work_inside_a_paid_booking(
    org_a: Any, provider_org: Any, private_broker: None
) -> None:
    """Through the real admission pass: a booker whose balance went entirely into its booking
    still gets its job admitted on the booking (nothing to hold: the booking paid), while the
    same job off the booking would need €28.80 on hold."""
    import time_machine

    from marketplace.billing.models import JobPricing
    from marketplace.finetuning.models import JobStatus
    from marketplace.quotas import services as quotas

    flavor = factories.flavor()
    pool = factories.pool(provider_org, gpus=8, price="2.00")
    plan_make(flavor, max_gpus=16, max_job_hours="2", concurrent=10, slug="everyone")
    topup(org_a, "57.60")  # 6 GPUs x 4 h x €2.00 = €48.00, + €9.60 VAT: all of it
    begin = timezone.now() + timedelta(minutes=2)
    booking = book(org_a, pool, gpus=6, start=begin, hours=4)
    assert billing.balance_available(organization=org_a) == Decimal("0.00")
    with time_machine.travel(begin + timedelta(minutes=1), tick=False):
        on_booking = job_new(org_a, gpus=6)
        quotas.admission_pass_run()
        on_booking.refresh_from_db()
        assert on_booking.status == JobStatus.ADMITTED, on_booking.pending_reason
        assert on_booking.placement.booking == booking
        assert JobPricing.objects.get(job=on_booking).booking == booking
        assert billing.balance_held(organization=org_a) == 0
        # Beyond the booking (2 free GPUs), on demand: it needs funds, and there are none.
        on_demand = job_new(org_a, gpus=2)
        quotas.admission_pass_run()
        on_demand.refresh_from_db()
        assert on_demand.status == JobStatus.QUEUED
        assert "not enough funds" in on_demand.pending_reason
    assert_invariants()
