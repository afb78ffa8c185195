"""Writes for accounts: organizations, memberships (every role change audited), invitations
(single-use, revocable, expiring) and API keys (scoped, never wider than their minter)."""

from __future__ import annotations

import hashlib
import secrets
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import timedelta

from django.db import transaction
from django.utils import timezone
from django.utils.text import slugify

from marketplace.accounts import scopes as key_scopes
from marketplace.accounts.models import (
    ApiKey,
    Invitation,
    Membership,
    Organization,
    RoleChange,
    User,
)
from marketplace.errors import Conflict, Forbidden, InvalidInput, NotFound

KEY_PREFIX = "sk-ptg-"
INVITATION_TTL = timedelta(days=7)


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
            membership_set(
                organization=org, user=owner, role=Membership.Role.OWNER, via="organization_create"
            )
    return org


def organization_get_or_create(*, slug: str, name: str | None = None) -> tuple[Organization, bool]:
    existing = Organization.objects.filter(slug=slug).first()
    if existing:
        return existing, False
    return organization_create(name=name or slug, slug=slug), True


def membership_set(
    *,
    organization: Organization,
    user: User,
    role: str,
    changed_by: User | None = None,
    via: str = "system",
    invitation: Invitation | None = None,
) -> Membership:
    """Give `user` this role in the organization; a change is audited (RoleChange) in the same
    transaction, with who made it and how."""
    if role not in Membership.Role.values:
        raise InvalidInput(
            f"Unknown role {role!r}; use one of {', '.join(Membership.Role.values)}.", param="role"
        )
    with transaction.atomic():
        existing = (
            Membership.objects.select_for_update()
            .filter(organization=organization, user=user)
            .first()
        )
        old_role = existing.role if existing else ""
        membership, _ = Membership.objects.update_or_create(
            organization=organization, user=user, defaults={"role": role}
        )
        if old_role != role:
            RoleChange.objects.create(
                organization=organization,
                user=user,
                username=user.username,
                old_role=old_role,
                new_role=role,
                changed_by=changed_by,
                via=via,
                invitation=invitation,
            )
    return membership


def membership_remove(
    *, organization: Organization, user: User, changed_by: User | None = None, via: str = "system"
) -> None:
    """Take `user` out of the organization; audited like any role change (new role: none)."""
    with transaction.atomic():
        membership = (
            Membership.objects.select_for_update()
            .filter(organization=organization, user=user)
            .first()
        )
        if membership is None:
            return
        membership.delete()
        RoleChange.objects.create(
            organization=organization,
            user=user,
            username=user.username,
            old_role=membership.role,
            new_role="",
            changed_by=changed_by,
            via=via,
        )


def role_scopes(*, organization: Organization, user: User) -> tuple[str, ...]:
    """The widest scopes this person may give a key in this organization (none if not in it)."""
    membership = Membership.objects.filter(organization=organization, user=user).first()
    return key_scopes.ROLE_SCOPES.get(membership.role, ()) if membership else ()


def _token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


@dataclass(frozen=True)
class IssuedInvitation:
    """The invitation and its token, in clear only now: the link is built from it once."""

    invitation: Invitation
    token: str


def invitation_create(
    *, organization: Organization, role: str, created_by: User
) -> IssuedInvitation:
    """An owner or admin invites someone; nobody may invite to a role above their own."""
    if role not in {Membership.Role.ADMIN, Membership.Role.MEMBER}:
        raise InvalidInput("Invite people as 'admin' or 'member'.", param="role")
    inviter = Membership.objects.filter(organization=organization, user=created_by).first()
    if inviter is None or inviter.role not in {Membership.Role.OWNER, Membership.Role.ADMIN}:
        raise Forbidden(
            f"Only an owner or admin of {organization.name} can invite people.", param="role"
        )
    token = secrets.token_urlsafe(32)
    invitation = Invitation.objects.create(
        organization=organization,
        role=role,
        token_hash=_token_hash(token),
        created_by=created_by,
        expires_at=timezone.now() + INVITATION_TTL,
    )
    return IssuedInvitation(invitation=invitation, token=token)


def invitation_revoke(*, organization: Organization, invitation_id: int, by: User) -> Invitation:
    revoker = Membership.objects.filter(organization=organization, user=by).first()
    if revoker is None or revoker.role not in {Membership.Role.OWNER, Membership.Role.ADMIN}:
        raise Forbidden(f"Only an owner or admin of {organization.name} can revoke invitations.")
    invitation = Invitation.objects.filter(organization=organization, pk=invitation_id).first()
    if invitation is None:
        raise NotFound(f"No invitation {invitation_id} in this organization.", param="invitation")
    Invitation.objects.filter(
        pk=invitation.pk, accepted_at__isnull=True, revoked_at__isnull=True
    ).update(revoked_at=timezone.now())
    invitation.refresh_from_db()
    return invitation


def invitation_by_token(token: str) -> Invitation:
    """The pending invitation a token names; InvalidInput saying why it cannot be used."""
    invitation = (
        Invitation.objects.select_related("organization")
        .filter(token_hash=_token_hash(token.strip()))
        .first()
    )
    if invitation is None:
        raise InvalidInput(
            "This invitation link is not valid; check that it was copied completely.",
            param="token",
        )
    if invitation.revoked_at is not None:
        raise InvalidInput("This invitation was revoked; ask for a new one.", param="token")
    if invitation.accepted_at is not None:
        raise InvalidInput(
            "This invitation has already been used; each link works once. Ask for a new one.",
            param="token",
        )
    if invitation.expires_at <= timezone.now():
        raise InvalidInput(
            "This invitation has expired (links last 7 days); ask for a new one.", param="token"
        )
    return invitation


def invitation_accept(*, token: str, user: User) -> Membership:
    """Join with an invitation. It is consumed by one conditional UPDATE, so two people (or two
    clicks) racing on one link make one member. Someone already in the organization keeps their
    role, and the link stays unused."""
    invitation = invitation_by_token(token)
    existing = Membership.objects.filter(organization=invitation.organization, user=user).first()
    if existing is not None:
        return existing
    with transaction.atomic():
        claimed = Invitation.objects.filter(
            pk=invitation.pk,
            accepted_at__isnull=True,
            revoked_at__isnull=True,
            expires_at__gt=timezone.now(),
        ).update(accepted_at=timezone.now(), accepted_by=user)
        if claimed != 1:
            invitation_by_token(token)  # raises with the reason it can no longer be used
            raise InvalidInput("This invitation can no longer be used.", param="token")
        return membership_set(
            organization=invitation.organization,
            user=user,
            role=invitation.role,
            changed_by=invitation.created_by,
            via="invitation",
            invitation=invitation,
        )


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
    scopes: Iterable[str] | None = None,
    allowed_scopes: Iterable[str] | None = None,
    resources: list[str] | None = None,
) -> IssuedKey:
    """A new key with `scopes` (default: full access, or read-only with `read_only`). With
    `allowed_scopes` (what the minter may do), a key that would do more is refused."""
    if not name.strip():
        raise InvalidInput("Give the key a name, e.g. 'ci-pipeline'.", param="name")
    chosen = _key_scopes(scopes, read_only=read_only)
    if allowed_scopes is not None:
        wider = key_scopes.beyond(chosen, allowed_scopes)
        if wider:
            raise Forbidden(
                f"You cannot create a key with {', '.join(wider)} rights: a key may do no more "
                f"than its creator ({', '.join(allowed_scopes) or 'nothing'}).",
                param="scopes",
            )
    body = secrets.token_urlsafe(32)
    secret = f"{KEY_PREFIX}{body}"
    key = ApiKey.objects.create(
        organization=organization,
        name=name.strip(),
        prefix=secret[: len(KEY_PREFIX) + 8],
        hashed_secret=ApiKey.hash_secret(secret),
        created_by=created_by,
        scopes=chosen,
        resources=resources or [],
    )
    return IssuedKey(api_key=key, secret=secret)


def _key_scopes(scopes: Iterable[str] | None, *, read_only: bool) -> list[str]:
    if scopes is None:
        return [key_scopes.READ] if read_only else [key_scopes.ADMIN]
    scopes = list(scopes)
    if wrong := key_scopes.unknown(scopes):
        raise InvalidInput(
            f"Unknown scope(s) {', '.join(wrong)}; use {', '.join(key_scopes.SCOPES)}.",
            param="scopes",
        )
    chosen = sorted(set(scopes), key=key_scopes.SCOPES.index)
    if not chosen:
        raise InvalidInput(
            f"Give the key at least one scope: {', '.join(key_scopes.SCOPES)}.", param="scopes"
        )
    if read_only and chosen != [key_scopes.READ]:
        raise InvalidInput("A read-only key has the scope 'read' alone.", param="read_only")
    return chosen


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
