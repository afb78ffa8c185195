"""Invoice numbers under real concurrency (PostgreSQL, threads): one gap-free series."""

from __future__ import annotations

import pytest
from django.db import connection, transaction

from marketplace.accounts.services import organization_create
from marketplace.billing import services as billing
from marketplace.billing.models import Invoice
from marketplace.billing.services.invoices import invoice_numbers_take
from tests.billing.test_races_pg import _together

pytestmark = [pytest.mark.pg, pytest.mark.django_db(transaction=True)]


@pytest.fixture(autouse=True)
def _needs_postgres() -> None:
    if connection.vendor != "postgresql":
        pytest.skip("row locks need PostgreSQL: run with DATABASE_URL=postgres://…")


class _Abandoned(Exception):
    pass


def test_concurrent_takers_share_one_gap_free_series() -> None:
    """12 transactions take numbers at once, from a series that does not exist yet; every third
    rolls back after taking its numbers. Committed numbers are 1..n: no gap, no duplicate."""

    def take(index: int) -> list[str]:
        with transaction.atomic():
            numbers = invoice_numbers_take(2031, 1 + index % 3)
            connection.cursor().execute("SELECT pg_sleep(0.05)")  # hold the row a while
            if index % 3 == 2:
                raise _Abandoned(numbers)
        return numbers

    results = _together(12, take)
    committed = [n for r in results if isinstance(r, list) for n in r]
    assert all(isinstance(r, (list, _Abandoned)) for r in results), results
    expected = [f"PARTAGE-2031-{n:06d}" for n in range(1, len(committed) + 1)]
    assert sorted(committed) == expected  # 8 transactions x (1 or 2) numbers, gap-free


def test_concurrent_finalizations_number_every_invoice_once() -> None:
    orgs = [organization_create(name=f"Org {i}", slug=f"race-org-{i}") for i in range(6)]
    start, end = billing.month_bounds(2026, 10)
    drafts = [
        billing.invoice_draft(organization=org, period_start=start, period_end=end) for org in orgs
    ]

    def finalize(index: int) -> str | None:
        return billing.invoice_finalize(invoice=drafts[index]).number

    results = _together(6, finalize)
    assert all(isinstance(r, str) for r in results), results
    numbers = sorted(Invoice.objects.values_list("number", flat=True))
    assert numbers == sorted(results)
    assert numbers == [f"PARTAGE-2026-{n:06d}" for n in range(1, 7)]
