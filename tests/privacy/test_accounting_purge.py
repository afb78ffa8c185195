"""The end of the legal retention: an erased organization's pseudonymised invoices and ledger
entries go 10 years after the close of their financial year, every balance stays what it was,
and nothing of a living organization is purged."""

from __future__ import annotations

from collections import defaultdict
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
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
from tests.privacy.conftest import Acme

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


@pytest.mark.parametrize("years", [9, 0])
def test_the_legal_retention_cannot_be_set_below_ten_years(years: int) -> None:
    import os
    import subprocess
    import sys

    from tests.conftest import REPO

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
