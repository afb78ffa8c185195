"""A job's money from admission to invoice, through the real job services."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest

from marketplace.billing import services as billing
from marketplace.billing.models import Invoice, UsageRecord
from marketplace.errors import InsufficientFunds
from tests.billing.conftest import (
    admit,
    assert_invariants,
    invoice_lines_for,
    job_new,
    run_job,
    topup,
)

pytestmark = pytest.mark.django_db


def test_job_invoice_line_is_gpu_seconds_times_price(org_a: Any, pool: Any, clock: Any) -> None:
    topup(org_a, "100.00")
    job = job_new(org_a, gpus=2)
    run_job(job, pool, clock, seconds=1234.5)
    record = UsageRecord.objects.get(job=job)
    assert record.gpu_seconds == Decimal("2469.000")
    # 2469 GPU-s x €2.50/GPU-hour = €1.714583… → €1.71
    clock.move_to(datetime(2026, 12, 1, 0, 0, 1, tzinfo=UTC))
    start, end = billing.month_bounds(2026, 11)
    [invoice] = billing.invoices_finalize(period_start=start, period_end=end)
    [line] = invoice_lines_for(job)
    assert line.gpu_seconds == Decimal("2469.000")
    assert line.price_per_gpu_hour == Decimal("2.5000")
    assert line.amount == Decimal("1.71")
    assert invoice.status == Invoice.Status.FINALIZED and invoice.number.startswith("PARTAGE-2026-")
    assert invoice.vat == Decimal("0.34") and invoice.total == Decimal("2.05")  # FR customer, 20 %
    # The prepaid balance paid exactly the invoice total; the hold is gone.
    assert billing.balance_available(organization=org_a) == Decimal("100.00") - Decimal("2.05")
    assert billing.balance_held(organization=org_a) == 0
    assert_invariants()


def test_hold_without_funds_is_refused_and_writes_nothing(org_a: Any, pool: Any) -> None:
    topup(org_a, "1.00")
    job = job_new(org_a, gpus=1)
    with pytest.raises(InsufficientFunds) as excinfo:
        admit(job, pool, max_duration=3600)
    assert "needs €3.00" in excinfo.value.message and "€1.00 available" in excinfo.value.message
    assert "Top up" in excinfo.value.message
    job.refresh_from_db()
    assert job.status == "queued"
    assert billing.balance_available(organization=org_a) == Decimal("1.00")
    assert billing.balance_held(organization=org_a) == 0
    _ = timedelta
