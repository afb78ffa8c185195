"""Staff approve providers and pools through the Django admin actions (which call the services)."""

from __future__ import annotations

import pytest
from django.contrib.auth.models import Permission
from django.test import Client

from marketplace.accounts.models import User
from marketplace.capacity.models import ApprovalStatus, Pool, ProviderProfile
from tests.capacity import factories

pytestmark = pytest.mark.django_db


@pytest.fixture
def staff_client(carol: User) -> Client:
    carol.user_permissions.set(Permission.objects.filter(content_type__app_label="capacity"))
    client = Client()
    client.force_login(carol)
    return client


def test_staff_approve_a_provider_then_its_pool(staff_client: Client, carol: User) -> None:
    owner = factories.provider(approved=False)
    pool = factories.pool(owner, approve=False)
    cluster = factories.cluster()
    pool.cluster = cluster
    pool.save(update_fields=["cluster"])

    # A pool of an unapproved provider is refused, with the reason shown.
    response = staff_client.post(
        "/admin/capacity/pool/", {"action": "approve", "_selected_action": [pool.pk]}, follow=True
    )
    assert response.status_code == 200
    assert "Approve provider" in response.content.decode()
    pool.refresh_from_db()
    assert pool.status == Pool.Status.PENDING

    profile = ProviderProfile.objects.get(organization=owner)
    response = staff_client.post(
        "/admin/capacity/providerprofile/",
        {"action": "approve", "_selected_action": [profile.pk]},
        follow=True,
    )
    profile.refresh_from_db()
    assert profile.approval_status == ApprovalStatus.APPROVED
    assert profile.approved_by == carol and profile.approved_at is not None

    staff_client.post("/admin/capacity/pool/", {"action": "approve", "_selected_action": [pool.pk]})
    pool.refresh_from_db()
    assert pool.status == Pool.Status.ACTIVE
    assert pool.approved_by == carol


def test_incomplete_provider_is_not_approved(staff_client: Client) -> None:
    owner = factories.provider(approved=False)
    owner.vat_id = ""
    owner.save(update_fields=["vat_id"])
    profile = ProviderProfile.objects.get(organization=owner)
    response = staff_client.post(
        "/admin/capacity/providerprofile/",
        {"action": "approve", "_selected_action": [profile.pk]},
        follow=True,
    )
    assert "missing VAT id" in response.content.decode()
    profile.refresh_from_db()
    assert profile.approval_status == ApprovalStatus.PENDING


def test_payout_reference_is_needed_before_approval(staff_client: Client) -> None:
    owner = factories.provider(approved=False)
    profile = ProviderProfile.objects.get(organization=owner)
    profile.payout_reference = ""
    profile.save(update_fields=["payout_reference"])
    url = "/admin/capacity/providerprofile/"
    response = staff_client.post(
        url, {"action": "approve", "_selected_action": [profile.pk]}, follow=True
    )
    assert "missing payout reference" in response.content.decode()
    profile.refresh_from_db()
    assert profile.approval_status == ApprovalStatus.PENDING

    # Staff record it on the provider's profile, then approval goes through.
    changed = staff_client.post(
        f"{url}{profile.pk}/change/",
        {
            "organization": owner.pk,
            "payout_reference": "IBAN FR76 3000 6000 0112 3456 7890 189",
            "review_note": "",
        },
    )
    assert changed.status_code == 302, changed.content.decode()[:2000]
    staff_client.post(url, {"action": "approve", "_selected_action": [profile.pk]})
    profile.refresh_from_db()
    assert profile.payout_reference == "IBAN FR76 3000 6000 0112 3456 7890 189"
    assert profile.approval_status == ApprovalStatus.APPROVED


def test_a_saved_pools_size_is_read_only_in_the_admin(staff_client: Client) -> None:
    """Resizing goes through pool_update (locked, refuses to shrink below bookings), never a raw
    admin save."""
    pool = factories.pool(gpus=8)
    page = staff_client.get(f"/admin/capacity/pool/{pool.pk}/change/").content.decode()
    assert 'name="gpu_count"' not in page and 'name="flavor"' not in page
    assert 'name="price_per_gpu_hour"' in page


def test_reject_and_retire_pools(staff_client: Client) -> None:
    pending = factories.pool(approve=False)
    active = factories.pool()
    staff_client.post(
        "/admin/capacity/pool/", {"action": "reject", "_selected_action": [pending.pk]}
    )
    staff_client.post(
        "/admin/capacity/pool/", {"action": "retire", "_selected_action": [active.pk]}
    )
    pending.refresh_from_db()
    active.refresh_from_db()
    assert (pending.status, active.status) == (Pool.Status.REJECTED, Pool.Status.RETIRED)


def test_non_staff_cannot_use_the_admin(alice: User) -> None:
    client = Client()
    client.force_login(alice)
    response = client.post("/admin/capacity/pool/", {"action": "approve", "_selected_action": [1]})
    assert response.status_code == 302 and "/admin/login/" in response["Location"]
