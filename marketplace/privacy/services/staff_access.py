"""Staff access to customer content is recorded: who, what, when and why.

Every place staff can view or download an organization's content (the cockpit, the Django admin,
management commands) calls staff_access_record before showing it; a missing reason is refused.
"""

from __future__ import annotations

from django.utils import timezone

from marketplace.accounts.models import Organization, User
from marketplace.errors import Forbidden, InvalidInput
from marketplace.privacy.models import StaffAccess

MIN_REASON = 10


def staff_access_record(
    *,
    staff: User,
    organization: Organization | int,
    subject_type: str,
    subject_id: str,
    reason: str,
    via: str,
    action: str = StaffAccess.Action.VIEW,
) -> StaffAccess:
    if not staff.is_staff:
        raise Forbidden("Only platform staff can open another organization's content.")
    reason = " ".join((reason or "").split())
    if len(reason) < MIN_REASON:
        raise InvalidInput(
            "Say why you need to see this customer's content (at least "
            f"{MIN_REASON} characters, e.g. a support ticket number); the organization can "
            "read it.",
            param="reason",
        )
    org_id = organization.pk if isinstance(organization, Organization) else organization
    return StaffAccess.objects.create(
        organization_id=org_id,
        staff=staff,
        staff_username=staff.get_username(),
        action=action,
        via=via,
        subject_type=subject_type,
        subject_id=str(subject_id)[:60],
        reason=reason[:500],
        created_at=timezone.now(),
    )
