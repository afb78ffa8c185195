"""The staff cockpit: capacity and jobs per pool, each organization against its quota, provider
and pool approvals, quota and price edits. Every write goes through the owning domain's service.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from django.contrib import messages
from django.http import Http404, HttpRequest, HttpResponse
from django.http.response import HttpResponseBase
from django.shortcuts import redirect
from django.utils import timezone
from django.views.decorators.http import require_POST

from marketplace.accounts.models import Organization, User
from marketplace.billing.selectors import topups_awaiting_transfer
from marketplace.capacity import selectors as capacity
from marketplace.capacity.models import (
    ApprovalStatus,
    ClusterConnection,
    Placement,
    Pool,
    ProviderProfile,
)
from marketplace.errors import PartageError
from marketplace.finetuning.models import FineTuningJob
from marketplace.portal import audit, staff_data
from marketplace.portal.context import error_message, page, staff_required
from marketplace.portal.forms import PriceForm, QuotaForm
from marketplace.quotas.selectors import pending_queue_by_pool, quota_audit
from marketplace.quotas.services import org_quota_override_set


def _quota_form(data: Any = None, initial: dict[str, Any] | None = None) -> QuotaForm:
    startups = Organization.objects.filter(kind=Organization.Kind.STARTUP).order_by("name")
    return QuotaForm(
        data,
        initial=initial,
        organizations=[(o.public_id, o.name) for o in startups],
        flavors=[(f.slug, f"{f.model_name} ({f.slug})") for f in capacity.flavors()],
    )


def _pools_overview() -> list[dict[str, Any]]:
    pools = list(
        Pool.objects.exclude(status=Pool.Status.RETIRED).select_related("flavor", "provider")
    )
    usage = capacity.pools_usage(pools, timezone.now())
    running: dict[int, list[FineTuningJob]] = defaultdict(list)
    holding = Placement.objects.filter(
        pool__in=pools, job__status__in=capacity.HOLDING_STATES
    ).select_related("job__organization")
    for placement in holding:
        running[placement.pool_id].append(placement.job)
    return [
        {
            "pool": pool,
            "usage": usage[pool.pk],
            "booked": sum(usage[pool.pk].booked.values()),
            "running": running[pool.pk],
            "price_form": PriceForm(initial={"price_per_gpu_hour": pool.price_per_gpu_hour}),
        }
        for pool in pools
    ]


@staff_required
def cockpit(request: HttpRequest) -> HttpResponse:
    return page(request, "portal/staff/cockpit.html", _cockpit_context(request))


def _cockpit_context(request: HttpRequest, quota_form: QuotaForm | None = None) -> dict[str, Any]:
    return {
        "pools": _pools_overview(),
        "queues": [q for q in pending_queue_by_pool() if q["queued_jobs"]],
        "org_usage": staff_data.organizations_against_quota(),
        "providers": ProviderProfile.objects.filter(
            approval_status=ApprovalStatus.PENDING
        ).select_related("organization"),
        "pending_pools": Pool.objects.filter(status=Pool.Status.PENDING).select_related(
            "provider", "flavor"
        ),
        "clusters": ClusterConnection.objects.all(),
        "quota_form": quota_form or _quota_form(initial=_quota_initial(request)),
        "audit": quota_audit()[:25],
        "awaiting_transfers": topups_awaiting_transfer()[:50],
        "staff_changes": audit.staff_changes(),
    }


def _quota_initial(request: HttpRequest) -> dict[str, Any]:
    return {k: request.GET[k] for k in ("organization", "flavor") if k in request.GET}


@require_POST
@staff_required
def quota_edit(request: HttpRequest) -> HttpResponse:
    form = _quota_form(request.POST)
    if form.is_valid():
        org = Organization.objects.get(public_id=form.cleaned_data["organization"])
        flavor = capacity.flavor_by_slug(form.cleaned_data["flavor"])
        try:
            if flavor is None:
                raise Http404("No such flavor.")
            org_quota_override_set(
                organization=org,
                flavor=flavor,
                values=form.values(),
                actor=_actor(request),
            )
        except PartageError as e:
            form.add_error(None, e.message)
        else:
            messages.success(request, f"Quota of {org.name} for {flavor.slug} updated.")
            return redirect("portal:cockpit")
    context = _cockpit_context(request, quota_form=form)
    return page(request, "portal/staff/cockpit.html", context, status=400)


def _actor(request: HttpRequest) -> User:
    assert isinstance(request.user, User)  # staff_required let only staff users through
    return request.user


def _pool(public_id: str) -> Pool:
    pool = Pool.objects.filter(public_id=public_id).select_related("provider").first()
    if pool is None:
        raise Http404("No such pool.")
    return pool


@require_POST
@staff_required
def price_edit(request: HttpRequest, pool_id: str) -> HttpResponse:
    pool = _pool(pool_id)
    form = PriceForm(request.POST)
    if not form.is_valid():
        messages.error(request, f"{pool.name}: {form.errors.as_text()}")
        return redirect("portal:cockpit")
    try:
        audit.pool_price_set(
            pool=pool, price=form.cleaned_data["price_per_gpu_hour"], actor=_actor(request)
        )
    except PartageError as e:
        error_message(request, e)
    else:
        messages.success(
            request, f"{pool.name} now costs €{form.cleaned_data['price_per_gpu_hour']}/GPU-hour."
        )
    return redirect("portal:cockpit")


@require_POST
@staff_required
def provider_review(request: HttpRequest, org_id: str) -> HttpResponse:
    org = Organization.objects.filter(public_id=org_id, kind=Organization.Kind.PROVIDER).first()
    if org is None:
        raise Http404("No such provider.")
    approve = request.POST.get("decision") == "approve"
    try:
        audit.provider_review(
            organization=org,
            approve=approve,
            actor=_actor(request),
            note=request.POST.get("note", ""),
        )
    except PartageError as e:
        error_message(request, e)
    else:
        messages.success(request, f"Provider {org.name} {'approved' if approve else 'rejected'}.")
    return redirect("portal:cockpit")


@require_POST
@staff_required
def pool_review(request: HttpRequest, pool_id: str) -> HttpResponse:
    pool = _pool(pool_id)
    approve = request.POST.get("decision") == "approve"
    cluster_id = request.POST.get("cluster", "")
    cluster = (
        ClusterConnection.objects.filter(pk=int(cluster_id)).first()
        if cluster_id.isdigit()
        else None
    )
    try:
        audit.pool_review(
            pool=pool,
            approve=approve,
            actor=_actor(request),
            cluster=cluster,
            note=request.POST.get("note", ""),
        )
    except PartageError as e:
        error_message(request, e)
    else:
        messages.success(request, f"Pool {pool.name} {'is live' if approve else 'rejected'}.")
    return redirect("portal:cockpit")


@require_POST
@staff_required
def topup_received(request: HttpRequest, topup_id: str) -> HttpResponse:
    try:
        topup, credited = audit.topup_received(topup_id=topup_id, actor=_actor(request))
    except PartageError as e:
        error_message(request, e)
    else:
        if credited:
            messages.success(
                request,
                f"€{topup.amount} credited to {topup.organization.name} "
                f"(transfer {topup.reference}).",
            )
        else:
            messages.info(request, f"Transfer {topup.reference} was already credited.")
    return redirect("portal:cockpit")


@staff_required
def content_open(request: HttpRequest) -> HttpResponseBase:
    """Support work on a customer's job or file: asks why, records it, then shows it."""
    from django.http import FileResponse

    from marketplace.finetuning import selectors as ft
    from marketplace.finetuning.models import File
    from marketplace.privacy.models import StaffAccess
    from marketplace.privacy.services import staff_content_open

    subject_id = request.GET.get("subject", "")
    reason = request.GET.get("reason", "")
    context: dict[str, Any] = {"subject": subject_id, "reason": reason}
    if subject_id:
        try:
            subject = staff_content_open(
                staff=_actor(request),
                subject_id=subject_id,
                reason=reason,
                via=StaffAccess.Via.COCKPIT,
            )
        except PartageError as e:
            context["problem"] = e.message
            return page(request, "portal/staff/content.html", context, status=400)
        if isinstance(subject, File):
            return FileResponse(
                subject.content.open("rb"), as_attachment=True, filename=subject.filename
            )
        context.update(
            job=subject,
            events=ft.events_for_job(subject).order_by("seq")[:500],
            attempts=ft.attempts_for_job(subject),
        )
    return page(request, "portal/staff/content.html", context)
