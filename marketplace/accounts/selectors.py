"""Reads for accounts."""

from __future__ import annotations

from django.db.models import QuerySet
from django.utils import timezone

from marketplace.accounts.models import (
    ApiKey,
    Invitation,
    Membership,
    Organization,
    RoleChange,
    User,
)


def api_key_by_secret(secret: str) -> ApiKey | None:
    if not secret:
        return None
    return (
        ApiKey.objects.select_related("organization")
        .filter(hashed_secret=ApiKey.hash_secret(secret), revoked_at__isnull=True)
        .first()
    )


def api_keys_for_org(org: Organization) -> QuerySet[ApiKey]:
    return ApiKey.objects.filter(organization=org).select_related("created_by")


def organizations_for_user(user: User) -> QuerySet[Organization]:
    return Organization.objects.filter(memberships__user=user).order_by("slug")


def membership_for(user: User, org: Organization) -> Membership | None:
    return Membership.objects.filter(user=user, organization=org).first()


def invitations_pending(org: Organization) -> QuerySet[Invitation]:
    return Invitation.objects.filter(
        organization=org,
        accepted_at__isnull=True,
        revoked_at__isnull=True,
        expires_at__gt=timezone.now(),
    ).select_related("created_by")


def role_changes_for_org(org: Organization) -> QuerySet[RoleChange]:
    return RoleChange.objects.filter(organization=org).select_related("changed_by")
