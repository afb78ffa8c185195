"""Writes for accounts: organizations, memberships, API keys."""

from __future__ import annotations

import secrets
import uuid
from dataclasses import dataclass

from django.db import transaction
from django.utils import timezone
from django.utils.text import slugify

from marketplace.accounts.models import ApiKey, Membership, Organization, User
from marketplace.errors import Conflict, InvalidInput, NotFound

KEY_PREFIX = "sk-ptg-"


def new_public_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


def organization_create(
    *,
    name: str,
    slug: str | None = None,
    kind: str = Organization.Kind.STARTUP,
    owner: User | None = None,
    country: str = "",
    vat_id: str = "",
    legal_name: str = "",
) -> Organization:
    slug = slug or slugify(name)
    if not slug:
        raise InvalidInput("An organization needs a name with letters or digits.", param="name")
    if Organization.objects.filter(slug=slug).exists():
        raise Conflict(f"The organization slug {slug!r} is taken; pick another.", param="slug")
    with transaction.atomic():
        org = Organization.objects.create(
            public_id=new_public_id("org"),
            slug=slug,
            name=name,
            kind=kind,
            country=country.upper(),
            vat_id=vat_id,
            legal_name=legal_name,
        )
        if owner is not None:
            Membership.objects.create(user=owner, organization=org, role=Membership.Role.OWNER)
    return org


def organization_get_or_create(*, slug: str, name: str | None = None) -> tuple[Organization, bool]:
    existing = Organization.objects.filter(slug=slug).first()
    if existing:
        return existing, False
    return organization_create(name=name or slug, slug=slug), True


def membership_set(*, organization: Organization, user: User, role: str) -> Membership:
    if role not in Membership.Role.values:
        raise InvalidInput(
            f"Unknown role {role!r}; use one of {', '.join(Membership.Role.values)}.", param="role"
        )
    membership, _ = Membership.objects.update_or_create(
        organization=organization, user=user, defaults={"role": role}
    )
    return membership


@dataclass(frozen=True)
class IssuedKey:
    """The one moment the secret exists in clear: it is returned once and never stored."""

    api_key: ApiKey
    secret: str


def api_key_create(
    *,
    organization: Organization,
    name: str,
    created_by: User | None = None,
    read_only: bool = False,
    resources: list[str] | None = None,
) -> IssuedKey:
    if not name.strip():
        raise InvalidInput("Give the key a name, e.g. 'ci-pipeline'.", param="name")
    body = secrets.token_urlsafe(32)
    secret = f"{KEY_PREFIX}{body}"
    key = ApiKey.objects.create(
        organization=organization,
        name=name.strip(),
        prefix=secret[: len(KEY_PREFIX) + 8],
        hashed_secret=ApiKey.hash_secret(secret),
        created_by=created_by,
        read_only=read_only,
        resources=resources or [],
    )
    return IssuedKey(api_key=key, secret=secret)


def api_key_revoke(*, organization: Organization, key_id: int) -> ApiKey:
    key = ApiKey.objects.filter(organization=organization, pk=key_id).first()
    if key is None:
        raise NotFound(f"No API key {key_id} in this organization.", param="key_id")
    if key.revoked_at is None:
        key.revoked_at = timezone.now()
        key.save(update_fields=["revoked_at"])
    return key


def api_key_touch(*, key: ApiKey) -> None:
    """Record use, at most once a minute per key so reads don't turn into writes."""
    now = timezone.now()
    if key.last_used_at is None or (now - key.last_used_at).total_seconds() > 60:
        ApiKey.objects.filter(pk=key.pk).update(last_used_at=now)
        key.last_used_at = now
