"""Data protection in the portal: retention and what expires when, exports, the record of staff
access, deleting the organization (with its grace period) and deleting one's own account."""

from __future__ import annotations

from django.conf import settings
from django.contrib import messages
from django.contrib.auth import logout
from django.http import FileResponse, Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect
from django.views.decorators.http import require_POST

from marketplace.errors import PartageError
from marketplace.portal.context import error_message, org_admin_required, org_required, page
from marketplace.privacy import selectors, services
from marketplace.privacy.models import DataExport


def _is_owner(request: HttpRequest) -> bool:
    membership = request.membership  # type: ignore[attr-defined]
    return membership is not None and membership.role == "owner"


@org_required
def privacy(request: HttpRequest) -> HttpResponse:
    org = request.org  # type: ignore[attr-defined]
    return page(
        request,
        "portal/account/privacy.html",
        {
            "retention_days": services.retention_days_for(org),
            "retention_default": settings.PARTAGE_RETENTION_DEFAULT_DAYS,
            "retention_max": settings.PARTAGE_RETENTION_MAX_DAYS,
            "expiring": selectors.retention_schedule(org)[:50],
            "exports": selectors.exports_for_org(org)[:10],
            "accesses": selectors.staff_accesses_for_org(org)[:50],
            "erasure": services.erasure_pending(org),
            "is_owner": _is_owner(request),
            "grace_days": settings.PARTAGE_ERASURE_GRACE_DAYS,
        },
    )


@require_POST
@org_admin_required
def retention_update(request: HttpRequest) -> HttpResponse:
    raw = request.POST.get("retention_days", "").strip()
    try:
        days = int(raw) if raw else None
    except ValueError:
        messages.error(request, "Retention must be a whole number of days.")
        return redirect("portal:privacy")
    try:
        services.retention_set(organization=request.org, days=days)  # type: ignore[attr-defined]
    except PartageError as e:
        error_message(request, e)
    else:
        messages.success(request, "Retention updated.")
    return redirect("portal:privacy")


@require_POST
@org_required
def export_request(request: HttpRequest) -> HttpResponse:
    try:
        export = services.export_request(
            organization=request.org,  # type: ignore[attr-defined]
            requested_by=request.user,  # type: ignore[arg-type]
        )
    except PartageError as e:
        error_message(request, e)
    else:
        messages.success(
            request, f"Export {export.public_id} is being built; you will get an e-mail."
        )
    return redirect("portal:privacy")


@org_required
def export_download(request: HttpRequest, export_id: str) -> FileResponse:
    if not _is_owner(request):
        raise Http404("No such export.")
    try:
        export = selectors.export_for_org(request.org, export_id)  # type: ignore[attr-defined]
    except PartageError as e:
        raise Http404(e.message) from e
    if export.status != DataExport.Status.READY or not export.archive:
        raise Http404("This export is not ready, or it expired.")
    return FileResponse(
        export.archive.open("rb"), as_attachment=True, filename=f"{export.public_id}.tar.gz"
    )


@require_POST
@org_required
def organization_delete(request: HttpRequest) -> HttpResponse:
    try:
        erasure = services.organization_erasure_request(
            organization=request.org,  # type: ignore[attr-defined]
            requested_by=request.user,  # type: ignore[arg-type]
            confirm=request.POST.get("confirm", ""),
        )
    except PartageError as e:
        error_message(request, e)
    else:
        messages.warning(
            request,
            f"{request.org.name} will be deleted on "  # type: ignore[attr-defined]
            f"{erasure.erase_after:%Y-%m-%d %H:%M} UTC. You can cancel until then.",
        )
    return redirect("portal:privacy")


@require_POST
@org_required
def organization_delete_cancel(request: HttpRequest) -> HttpResponse:
    try:
        services.organization_erasure_cancel(
            organization=request.org,  # type: ignore[attr-defined]
            cancelled_by=request.user,  # type: ignore[arg-type]
        )
    except PartageError as e:
        error_message(request, e)
    else:
        messages.success(request, "The deletion is cancelled.")
    return redirect("portal:privacy")


@require_POST
def account_delete(request: HttpRequest) -> HttpResponse:
    if not request.user.is_authenticated:
        return redirect("portal:login")
    user = request.user
    if not user.check_password(request.POST.get("password", "")):
        messages.error(request, "That password is not right: your account was not deleted.")
        return redirect("portal:privacy")
    try:
        services.user_delete(user=user)
    except PartageError as e:
        error_message(request, e)
        return redirect("portal:privacy")
    logout(request)
    messages.success(request, "Your account is deleted.")
    return redirect("portal:home")
