"""The end of the legal retention: an erased organization's pseudonymised invoices and ledger
entries go 10 years after the close of their financial year, every balance stays what it was,
and nothing of a living organization is purged."""

from __future__ import annotations

import os
import subprocess
import sys
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import time_machine
from django.db.models import Sum
from django.utils import timezone

from marketplace.accounts.models import Organization
from marketplace.billing.models import (
    Charge,
    Invoice,
    JournalEntry,
    LedgerLine,
    Topup,
    UsageRecord,
)
from marketplace.billing.services import accounting_retention_cutoff
from marketplace.capacity.models import Booking
from marketplace.finetuning.models import File, FineTuningJob
from marketplace.privacy import services
from tests.billing.conftest import assert_invariants, topup
from tests.conftest import REPO, wait_for
from tests.privacy.conftest import LIBFAKETIME, Acme, worker_and_beat_ahead

# acme's records are of the financial year 2026: kept through 31 December 2036.
LAST_DAY_KEPT = datetime(2036, 12, 31, 23, 59, 59, tzinfo=UTC)
FIRST_DAY_PURGED = datetime(2037, 1, 1, 0, 0, 1, tzinfo=UTC)


def _balances() -> dict[tuple[str, int | None], Decimal]:
    """Every (account, organization) balance of the whole ledger, zero ones left out."""
    sums: dict[tuple[str, int | None], Decimal] = defaultdict(Decimal)
    for row in LedgerLine.objects.values("account", "organization_id").annotate(t=Sum("amount")):
        sums[(row["account"], row["organization_id"])] += row["t"]
    return {key: value for key, value in sums.items() if value != 0}


def _erase(acme: Acme) -> str:
    services.organization_erasure_request(
        organization=acme.org, requested_by=acme.owner, confirm="acme-secret"
    )
    assert services.erasure_sweep(now=timezone.now() + timedelta(days=15)) == 1
    return Organization.objects.get(pk=acme.org.pk).name


def test_the_cutoff_is_the_end_of_the_financial_year_ten_years_on() -> None:
    assert accounting_retention_cutoff(now=LAST_DAY_KEPT) == datetime(2026, 1, 1, tzinfo=UTC)
    assert accounting_retention_cutoff(now=FIRST_DAY_PURGED) == datetime(2027, 1, 1, tzinfo=UTC)


def test_an_erased_orgs_records_go_after_ten_years_and_every_balance_stays(
    acme: Acme, org_b: Organization
) -> None:
    topup(org_b, "80.00", ref="org-b-topup")
    pseudonym = _erase(acme)
    acme_entries = set(
        JournalEntry.objects.filter(organization=acme.org).values_list("pk", flat=True)
    )
    assert len(acme_entries) >= 4  # top-up, hold, capture(s), booking charge at least
    assert Invoice.objects.filter(organization=acme.org).exists()
    assert UsageRecord.objects.filter(organization=acme.org).exists()
    others = set(JournalEntry.objects.exclude(organization=acme.org).values_list("key", flat=True))
    balances = _balances()
    assert balances[("provider_payable", acme.booking.pool.provider_id)] < 0  # acme paid it

    # Through the last day of the 10th year after 2026: everything is kept.
    assert services.accounting_purge_sweep(now=LAST_DAY_KEPT) == 0
    assert Invoice.objects.get(pk=acme.invoice.pk).customer_name == pseudonym
    assert (
        set(JournalEntry.objects.filter(organization=acme.org).values_list("pk", flat=True))
        == acme_entries
    )

    assert services.accounting_purge_sweep(now=FIRST_DAY_PURGED) > 0

    assert not Invoice.objects.filter(organization=acme.org).exists()
    assert not UsageRecord.objects.filter(organization=acme.org).exists()
    assert not Charge.objects.filter(organization=acme.org).exists()
    assert not Topup.objects.filter(organization=acme.org).exists()
    assert not FineTuningJob.objects.filter(organization=acme.org).exists()
    assert not Booking.objects.filter(organization=acme.org).exists()
    assert not File.objects.filter(organization=acme.org).exists()
    # The entries are replaced by one carried-forward entry: every balance is what it was (the
    # provider's payable, the platform's revenue and VAT, acme's pseudonymous balance).
    [carried] = JournalEntry.objects.filter(organization=acme.org)
    assert carried.pk not in acme_entries and carried.key.startswith("carry-forward:")
    assert carried.job_id is None and "deleted at the end of their legal retention" in carried.memo
    assert _balances() == balances
    assert sum(carried.lines.values_list("amount", flat=True), Decimal(0)) == 0
    assert_invariants()
    # Nothing of anyone else went.
    assert others <= set(JournalEntry.objects.values_list("key", flat=True))
    assert Organization.objects.filter(pk=acme.org.pk).exists()  # the pseudonym, as proof

    # Twice is harmless; and a living organization's records are never purged, however old.
    assert services.accounting_purge_sweep(now=FIRST_DAY_PURGED + timedelta(days=3650)) == 0
    assert JournalEntry.objects.filter(organization=org_b).exists()
    assert _balances() == balances


def test_a_living_organization_is_never_purged(acme: Acme) -> None:
    entries = JournalEntry.objects.count()
    assert services.accounting_purge_sweep(now=datetime(2050, 1, 1, tzinfo=UTC)) == 0
    assert (
        services.organization_records_purge(
            organization_id=acme.org.pk, before=datetime(2050, 1, 1, tzinfo=UTC)
        )
        == {}
    )
    assert JournalEntry.objects.count() == entries
    assert Invoice.objects.filter(pk=acme.invoice.pk).exists()


def test_an_invoice_a_later_credit_note_refers_to_stays_as_long_as_it(
    org_a: Organization, alice: Any, pool: Any
) -> None:
    """The November 2026 invoice is corrected by a credit note of January 2027 (a refund after
    finalization): the invoice stays until the credit note's own period ends."""
    from marketplace.billing import services as billing
    from marketplace.finetuning import services as jobs
    from tests.billing.conftest import admit, fail, job_new, run_job, start

    with time_machine.travel(datetime(2026, 11, 3, 9, tzinfo=UTC), tick=False) as clock:
        topup(org_a, "20.00")
        run_job(job_new(org_a), pool, clock, 3600)
        job = job_new(org_a)
        admit(job, pool, max_duration=3600)
        attempt = start(job)
        clock.shift(timedelta(seconds=1440))
        jobs.job_pause(organization=org_a, job_id=job.id)
        jobs.attempt_ended(attempt_id=attempt.pk, phase="failed", exit_code=4)
        clock.move_to(datetime(2026, 12, 1, 6, tzinfo=UTC))
        billing.periods_close_due()
        november = Invoice.objects.get(organization=org_a)
        jobs.job_resume(organization=org_a, job_id=job.id)
        admit(job, pool, max_duration=3600)
        attempt = start(job)
        clock.shift(timedelta(seconds=500))
        fail(attempt, exit_code=1)
        clock.move_to(datetime(2027, 1, 1, 6, tzinfo=UTC))
        billing.periods_close_due()
        note = Invoice.objects.get(credits=november)
        assert note.finalized_at is not None and note.finalized_at.year == 2027
        services.organization_erasure_request(
            organization=org_a, requested_by=alice, confirm=org_a.slug
        )
        assert services.erasure_sweep(now=timezone.now() + timedelta(days=15)) == 1
    balances = _balances()

    # 2037: the 2026 records may go, but the November invoice justifies the 2027 credit note.
    # (December's invoice, issued on 1 January 2027, is a document of 2027: it stays too.)
    of_2027 = set(Invoice.objects.filter(organization=org_a, finalized_at__year=2027))
    assert note in of_2027 and november not in of_2027
    services.accounting_purge_sweep(now=FIRST_DAY_PURGED)
    assert set(Invoice.objects.filter(organization=org_a)) == of_2027 | {november}
    assert _balances() == balances
    assert_invariants()
    # 2038: both go.
    services.accounting_purge_sweep(now=datetime(2038, 1, 1, 0, 0, 1, tzinfo=UTC))
    assert not Invoice.objects.filter(organization=org_a).exists()
    assert _balances() == balances
    assert_invariants()


@pytest.mark.parametrize("years", [9, 0])
def test_the_legal_retention_cannot_be_set_below_ten_years(years: int) -> None:
    env = {**os.environ, "PARTAGE_ACCOUNTING_RETENTION_YEARS": str(years), "PARTAGE_ENV": "test"}
    result = subprocess.run(
        [sys.executable, "-c", "import django; django.setup()"],
        cwd=REPO,
        env={**env, "DJANGO_SETTINGS_MODULE": "marketplace.settings"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode != 0
    assert "PARTAGE_ACCOUNTING_RETENTION_YEARS must be at least 10" in result.stderr


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_the_real_worker_and_beat_purge_them_under_a_clock_moved_ten_years_on(
    transactional_db: None, acme: Acme, org_b: Organization, settings: Any, tmp_path: Path
) -> None:
    assert LIBFAKETIME.exists(), "install Debian's faketime package (apt-get install faketime)"
    topup(org_b, "80.00", ref="org-b-topup")
    _erase(acme)
    balances = _balances()
    b_entries = set(JournalEntry.objects.filter(organization=org_b).values_list("pk", flat=True))
    assert Invoice.objects.filter(organization=acme.org).exists()
    # Past 1 January 2037 (acme's records are of 2026), by the worker's clock only.
    days_ahead = (FIRST_DAY_PURGED - timezone.now()).days + 2
    with worker_and_beat_ahead(days_ahead, tmp_path, settings) as log_path:
        wait_for(
            lambda: not Invoice.objects.filter(organization=acme.org).exists(),
            timeout=300,
            what=f"the beat's sweep to purge acme's invoice (log: {log_path})",
        )
        wait_for(
            lambda: not FineTuningJob.objects.filter(organization=acme.org).exists(),
            timeout=60,
            what="acme's job rows to go with its records",
        )
    [carried] = JournalEntry.objects.filter(organization=acme.org)
    assert carried.key.startswith("carry-forward:")
    # Stamped by the worker's clock, ten years ahead of the test's.
    assert carried.created_at > FIRST_DAY_PURGED
    assert timezone.now() < FIRST_DAY_PURGED
    assert _balances() == balances
    assert b_entries <= set(
        JournalEntry.objects.filter(organization=org_b).values_list("pk", flat=True)
    )
    assert_invariants()
