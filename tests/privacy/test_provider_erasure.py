"""Erasing a provider organization: its pools take no new work from the request on, customers'
bookings on them are cancelled and refunded, the work running on them finishes before the
erasure, the pools are retired; what it earned is still paid out, its bank details go once
nothing is owed, and its statements and payouts are kept for the legal period."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
import time_machine
from django.db import transaction
from django.utils import timezone

from marketplace.accounts.models import Membership, Organization, User
from marketplace.accounts.services import membership_set
from marketplace.billing import services as billing
from marketplace.billing.models import Payout, ProviderStatement
from marketplace.capacity import selectors as capacity
from marketplace.capacity import services as capacity_services
from marketplace.capacity.models import Booking, Pool, ProviderProfile
from marketplace.capacity.placement import PlacementDecision
from marketplace.errors import Conflict, PartageError
from marketplace.finetuning.models import FineTuningJob
from marketplace.privacy import services
from tests.billing.conftest import assert_invariants, job_new, start, succeed, topup
from tests.capacity.factories import staff
from tests.privacy.conftest import Acme


def _run_on(job: FineTuningJob, pool: Pool) -> Any:
    """What the admission pass does: place on the pool, hold, admit; then the trainer starts."""
    with transaction.atomic():
        capacity_services.placement_commit(
            job=job,
            decision=PlacementDecision(
                pool=pool,
                booking=None,
                gpu_count=job.gpu_count,
                price_per_gpu_hour=pool.price_per_gpu_hour,
                reliability=None,
                reason="test",
            ),
        )
        billing.hold_place(job=job, pool=pool, max_duration_seconds=3600)
        from marketplace.finetuning import services as ft

        ft.job_admit(job_id=job.id, pool_id=pool.pk, placement_reason="test")
    return start(job)


def _book(org: Organization, pool: Pool, days: int) -> Booking:
    begin = timezone.now().replace(minute=0, second=0, microsecond=0) + timedelta(days=days)
    return capacity_services.booking_create(
        organization=org,
        flavor="h100-80g",
        gpu_count=1,
        start=begin,
        end=begin + timedelta(hours=2),
    )


@pytest.fixture
def provider_owner(pool: Pool) -> User:
    provider = pool.provider
    capacity_services.provider_payout_details_set(
        organization=provider, name="Gpu Provider SAS", iban="FR1420041010050500013M02606"
    )
    paul = User.objects.create_user("paul", email="paul@gpu.example", password="paul-pass-123")
    membership_set(organization=provider, user=paul, role=Membership.Role.OWNER)
    return paul


def test_a_provider_leaves_without_stranding_customers_or_losing_its_payouts(
    acme: Acme, pool: Pool, provider_owner: User, org_b: Organization, settings: Any
) -> None:
    settings.PARTAGE_PAYOUT_HOLDBACK_PERCENT = Decimal(0)
    provider = pool.provider
    with time_machine.travel(datetime(2026, 11, 20, 10, 0, tzinfo=UTC), tick=False) as clock:
        _leave(acme, pool, provider_owner, org_b)
        clock.move_to(datetime(2026, 12, 1, 0, 0, 1, tzinfo=UTC))
        _paid_out(provider)
    assert_invariants()


def _leave(acme: Acme, pool: Pool, provider_owner: User, org_b: Organization) -> None:
    provider = pool.provider
    topup(org_b, "200.00", ref="org-b-topup")
    booked = _book(org_b, pool, days=20)  # a customer's booking after the grace period
    b_balance = billing.balance_available(organization=org_b)
    running = job_new(org_b)
    attempt = _run_on(running, pool)

    erasure = services.organization_erasure_request(
        organization=provider, requested_by=provider_owner, confirm=provider.slug
    )
    # From the request on: no new placement, no new booking; the customer's booking is
    # cancelled and refunded in full (it had not started); the running job goes on.
    pool.refresh_from_db()
    assert pool.status == Pool.Status.RETIRING
    assert erasure.report == {"pools_retiring": [pool.public_id]}
    assert pool not in capacity.placeable_pools()
    with pytest.raises(PartageError):
        _book(org_b, pool, days=10)
    booked.refresh_from_db()
    assert booked.status == Booking.Status.CANCELLED and booked.refund_amount == booked.amount
    assert billing.balance_available(organization=org_b) > b_balance
    assert FineTuningJob.objects.get(pk=running.pk).status == "running"
    with pytest.raises(Conflict, match="scheduled for deletion"):
        capacity_services.pool_create(
            provider=provider,
            flavor="h100-80g",
            country="FR",
            name="another",
            gpu_count=2,
            region="eu-west-paris",
            price_per_gpu_hour="1.00",
        )

    # Cancelling puts the pool back in service.
    services.organization_erasure_cancel(organization=provider, cancelled_by=provider_owner)
    pool.refresh_from_db()
    assert pool.status == Pool.Status.ACTIVE and pool in capacity.placeable_pools()
    services.organization_erasure_request(
        organization=provider, requested_by=provider_owner, confirm=provider.slug
    )

    # After the grace period the erasure waits for the customer's job on the pool to end.
    after_grace = timezone.now() + timedelta(days=15)
    assert services.erasure_sweep(now=after_grace) == 0
    assert Pool.objects.get(pk=pool.pk).status == Pool.Status.RETIRING
    succeed(running, attempt)
    assert FineTuningJob.objects.get(pk=running.pk).status == "succeeded"
    assert services.erasure_sweep(now=after_grace) == 1
    assert Pool.objects.get(pk=pool.pk).status == Pool.Status.RETIRED
    assert Organization.objects.get(pk=provider.pk).name.startswith("erased-")


def _paid_out(provider: Organization) -> None:
    """What it earned in November (acme's and org B's work) is stated and paid out; its bank
    details stay while money is owed, then go; the statement and payout are kept."""
    owed = billing.provider_payable(provider=provider)
    assert owed > 0
    start_, end_ = billing.month_bounds(2026, 11)
    [statement] = [
        s
        for s in billing.statements_close(period_start=start_, period_end=end_)
        if s.provider_id == provider.pk
    ]
    assert statement.due == owed
    batch = billing.payout_batch_create(period_end=end_)
    assert batch is not None
    payout = Payout.objects.get(batch=batch, provider=provider)
    assert payout.amount == owed and payout.iban == "FR1420041010050500013M02606"
    services.accounting_purge_sweep()
    assert ProviderProfile.objects.get(organization=provider).payout_iban != ""  # still owed
    billing.payout_batch_mark_sent(batch=batch, actor=staff())
    services.accounting_purge_sweep()
    assert ProviderProfile.objects.get(organization=provider).payout_iban != ""  # not paid yet
    billing.payout_batch_mark_paid(batch=batch, actor=staff())
    assert billing.provider_payable(provider=provider) == 0
    assert services.accounting_purge_sweep() == 1
    profile = ProviderProfile.objects.get(organization=provider)
    assert (profile.payout_name, profile.payout_iban, profile.payout_bic) == ("", "", "")
    # Accounting records, kept for the legal period.
    assert ProviderStatement.objects.filter(pk=statement.pk, status="paid").exists()
    assert Payout.objects.get(pk=payout.pk).amount == owed
