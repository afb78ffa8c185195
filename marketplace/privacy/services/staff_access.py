"""Staff access to customer content is recorded: who, what, when and why.

Every place staff can view or download an organization's content (the cockpit, the Django admin,
management commands) calls staff_access_record before showing it; a missing reason is refused.
"""

from __future__ import annotations

from django.utils import timezone

from marketplace.accounts.models import Organization, User
from marketplace.errors import Forbidden, InvalidInput, NotFound
from marketplace.finetuning.models import File, FineTuningJob
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


def staff_content_open(
    *, staff: User, subject_id: str, reason: str, via: str
) -> FineTuningJob | File:
    """Look up a job (to view) or a file (to download) of any organization for support work,
    after recording who, what and why. Unknown ids raise NotFound and record nothing."""
    subject_id = subject_id.strip()
    subject: FineTuningJob | File | None
    if subject_id.startswith("ftjob-"):
        subject = FineTuningJob.objects.filter(pk=subject_id).first()
        kind, action = "job", StaffAccess.Action.VIEW
    else:
        subject = File.objects.filter(pk=subject_id, deleted_at__isnull=True).first()
        kind, action = "file", StaffAccess.Action.DOWNLOAD
    if subject is None:
        raise NotFound(
            f"No job or file {subject_id!r} (ids look like ftjob-… or file-…).", param="subject"
        )
    staff_access_record(
        staff=staff,
        organization=subject.organization_id,
        subject_type=kind,
        subject_id=subject.pk,
        reason=reason,
        via=via,
        action=action,
    )
    return subject
