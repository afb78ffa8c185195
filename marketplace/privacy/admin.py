"""Django admin: data-protection tables (read-only), and a reason asked before staff open a
customer's content in the admin. The fine-tuning admins are re-registered here with that gate,
so the finetuning app does not depend on this one."""

from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.contrib.admin.utils import unquote
from django.db import models
from django.http import HttpRequest, HttpResponse
from django.template.response import TemplateResponse

from marketplace.errors import PartageError
from marketplace.finetuning import admin as ft_admin
from marketplace.finetuning.models import Checkpoint, File, FineTuningJob, JobEvent
from marketplace.privacy.models import DataExport, OrganizationErasure, StaffAccess
from marketplace.privacy.services import staff_access_record


class ReasonRequired:
    """Opening one object (its change page) first asks why; the answer is recorded."""

    subject_type = ""

    def organization_of(self, obj: Any) -> int:
        return obj.organization_id

    def change_view(
        self,
        request: HttpRequest,
        object_id: str,
        form_url: str = "",
        extra_context: dict[str, Any] | None = None,
    ) -> HttpResponse:
        obj = self.get_object(request, unquote(object_id))  # type: ignore[attr-defined]
        if obj is None:
            return super().change_view(request, object_id, form_url, extra_context)  # type: ignore[misc]
        reason = request.GET.get("reason", "")
        problem = ""
        if reason:
            try:
                staff_access_record(
                    staff=request.user,  # type: ignore[arg-type]
                    organization=self.organization_of(obj),
                    subject_type=self.subject_type,
                    subject_id=str(obj.pk),
                    reason=reason,
                    via=StaffAccess.Via.ADMIN,
                )
            except PartageError as e:
                problem = e.message
            else:
                return super().change_view(request, object_id, form_url, extra_context)  # type: ignore[misc]
        return TemplateResponse(
            request,
            "privacy/admin_reason.html",
            {
                **admin.site.each_context(request),
                "title": f"Why open {self.subject_type} {obj.pk}?",
                "subject": f"{self.subject_type} {obj.pk}",
                "problem": problem,
                "reason": reason,
            },
            status=400 if problem else 200,
        )


def _gated(
    model: type[models.Model], base: type[admin.ModelAdmin], subject: str, **extra: Any
) -> None:
    admin.site.unregister(model)
    admin.site.register(
        model,
        type(
            f"{base.__name__}WithReason", (ReasonRequired, base), {"subject_type": subject, **extra}
        ),
    )


def _job_org(self: Any, obj: Any) -> int:
    return obj.job.organization_id


_gated(File, ft_admin.FileAdmin, "file")
_gated(FineTuningJob, ft_admin.FineTuningJobAdmin, "job")
_gated(JobEvent, ft_admin.JobEventAdmin, "job_event", organization_of=_job_org)
_gated(Checkpoint, ft_admin.CheckpointAdmin, "checkpoint", organization_of=_job_org)


@admin.register(StaffAccess)
class StaffAccessAdmin(ft_admin.ReadOnlyAdmin):
    list_display = [
        "created_at",
        "staff_username",
        "action",
        "via",
        "organization",
        "subject_type",
        "subject_id",
        "reason",
    ]
    list_filter = ["via", "action"]
    search_fields = ["staff_username", "subject_id", "organization__slug"]

    def has_delete_permission(self, request: Any, obj: Any = None) -> bool:
        return False


@admin.register(DataExport)
class DataExportAdmin(ft_admin.ReadOnlyAdmin):
    list_display = ["public_id", "organization", "status", "bytes", "created_at", "expires_at"]
    list_filter = ["status"]


@admin.register(OrganizationErasure)
class OrganizationErasureAdmin(ft_admin.ReadOnlyAdmin):
    list_display = ["organization", "status", "requested_at", "erase_after", "erased_at"]
    list_filter = ["status"]
