"""Reads for accounts."""

from __future__ import annotations

from django.db.models import QuerySet

from marketplace.accounts.models import ApiKey, Membership, Organization, User


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
