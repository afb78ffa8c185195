"""Invitation links: a signed, expiring token naming the organization and the role offered.

Nothing is stored: the token is the invitation. It carries the organization's public id, so a
token for a deleted organization is simply invalid.
"""

from __future__ import annotations

from dataclasses import dataclass

from django.core import signing

from marketplace.accounts.models import Membership, Organization
from marketplace.errors import InvalidInput

SALT = "partage.portal.invite"
MAX_AGE_SECONDS = 7 * 24 * 3600


@dataclass(frozen=True)
class Invitation:
    organization: Organization
    role: str


def invite_token(*, organization: Organization, role: str) -> str:
    if role not in {Membership.Role.ADMIN, Membership.Role.MEMBER}:
        raise InvalidInput("Invite people as 'admin' or 'member'.", param="role")
    return signing.dumps({"org": organization.public_id, "role": role}, salt=SALT)


def invitation_from_token(token: str) -> Invitation:
    try:
        data = signing.loads(token.strip(), salt=SALT, max_age=MAX_AGE_SECONDS)
    except signing.SignatureExpired:
        raise InvalidInput(
            "This invitation has expired (links last 7 days); ask for a new one.", param="token"
        ) from None
    except signing.BadSignature:
        raise InvalidInput(
            "This invitation link is not valid; check that it was copied completely.",
            param="token",
        ) from None
    org = Organization.objects.filter(public_id=data.get("org")).first()
    if org is None:
        raise InvalidInput("The organization of this invitation no longer exists.", param="token")
    return Invitation(organization=org, role=str(data.get("role", Membership.Role.MEMBER)))
