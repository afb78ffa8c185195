"""/v1 quota routes: an organization's quotas and usage; staff views of every organization,
the pending queue per pool, quota changes (audited) and the audit trail."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Any

from django.db.models import Q
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework.authentication import SessionAuthentication
from rest_framework.permissions import BasePermission
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from marketplace.accounts.models import Organization, User
from marketplace.api import serializers_quotas as docs
from marketplace.api.authentication import ApiKeyAuthentication
from marketplace.api.pagination import page
from marketplace.api.representations import unix
from marketplace.api.views import LIST_PARAMETERS, org_of
from marketplace.capacity.models import GpuFlavor
from marketplace.errors import Forbidden, InvalidInput, NotFound
from marketplace.quotas import selectors, services
from marketplace.quotas.models import Plan, QuotaAuditEntry


def _plain(value: Any) -> Any:
    """JSON-friendly: Unix seconds for times, numbers for GPU-hours."""
    if isinstance(value, datetime):
        return unix(value)
    if isinstance(value, Decimal):
        return float(value)
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def actor_of(request: Request) -> User | None:
    return request.user if isinstance(request.user, User) else None


def quota_object(row: dict[str, Any]) -> dict[str, Any]:
    return {"object": "quota", **_plain(row)}


class QuotaListView(APIView):
    """GET /v1/quotas: your organization's quota and current use, per GPU flavor."""

    @extend_schema(operation_id="quotas_list", responses=docs.QuotaList)
    def get(self, request: Request) -> Response:
        rows = selectors.quota_usage_for_org(org_of(request))
        return Response(
            {"object": "list", "data": [quota_object(r) for r in rows], "has_more": False}
        )


class UsageView(APIView):
    """GET /v1/usage: this month's GPU use against the budget, per flavor."""

    @extend_schema(operation_id="usage_retrieve", responses=docs.UsageList)
    def get(self, request: Request) -> Response:
        start, end = selectors.month_period()
        rows = selectors.quota_usage_for_org(org_of(request))
        data = [
            {
                "object": "usage",
                "flavor": r["flavor"],
                "gpu_hours_used": float(r["gpu_hours_used"]),
                "monthly_gpu_hours": _plain(r["monthly_gpu_hours"]),
                "used_gpus": r["used_gpus"],
                "running_jobs": r["running_jobs"],
                "queued_jobs": r["queued_jobs"],
            }
            for r in rows
        ]
        return Response(
            {
                "object": "list",
                "period_start": unix(start),
                "period_end": unix(end),
                "data": data,
                "has_more": False,
            }
        )


class IsStaff(BasePermission):
    def has_permission(self, request: Request, view: Any) -> bool:
        if not getattr(request.user, "is_staff", False):
            raise Forbidden(
                "Only Partage staff can see every organization's quotas or change them; "
                "sign in to the staff console."
            )
        return True


class StaffView(APIView):
    authentication_classes = [SessionAuthentication, ApiKeyAuthentication]
    permission_classes = [IsStaff]


ORGANIZATION_PATH = OpenApiParameter(
    "organization", str, OpenApiParameter.PATH, description="The organization's id (org-…) or slug."
)
FLAVOR_PATH = OpenApiParameter(
    "flavor", str, OpenApiParameter.PATH, description="The GPU flavor's slug, e.g. h100-80g."
)


def _organization(ref: str) -> Organization:
    org = Organization.objects.filter(Q(public_id=ref) | Q(slug=ref)).first()
    if org is None:
        raise NotFound(
            f"No organization {ref!r}; use its id (org-…) or slug.", param="organization"
        )
    return org


class StaffQuotaListView(StaffView):
    """GET /v1/admin/quotas: every organization's usage against its quota."""

    @extend_schema(operation_id="admin_quotas_list", responses=docs.OrganizationQuotasList)
    def get(self, request: Request) -> Response:
        rows = selectors.quota_usage_all_orgs()
        data = [{"object": "organization.quotas", **_plain(r)} for r in rows]
        return Response({"object": "list", "data": data, "has_more": False})


class StaffQueueView(StaffView):
    """GET /v1/admin/queue: each pool with the queued jobs that could run there, in order."""

    @extend_schema(operation_id="admin_queue_list", responses=docs.PoolQueueList)
    def get(self, request: Request) -> Response:
        data = [{"object": "pool.queue", **_plain(r)} for r in selectors.pending_queue_by_pool()]
        return Response({"object": "list", "data": data, "has_more": False})


class StaffQuotaOverrideView(StaffView):
    """PATCH /v1/admin/organizations/{org}/quotas/{flavor}: override plan values (null: back to
    the plan's value). Every changed value is audited."""

    @extend_schema(
        operation_id="admin_organization_quota_update",
        parameters=[ORGANIZATION_PATH, FLAVOR_PATH],
        request=docs.QuotaOverride,
        responses=docs.QuotaObject,
    )
    def patch(self, request: Request, organization: str, flavor: str) -> Response:
        org = _organization(organization)
        gpu_flavor = GpuFlavor.objects.filter(slug=flavor).first()
        if gpu_flavor is None:
            raise NotFound(f"No GPU flavor {flavor!r}.", param="flavor")
        if not isinstance(request.data, dict):
            raise InvalidInput('Send a JSON object of quota fields, e.g. {"max_gpus": 8}.')
        services.org_quota_override_set(
            organization=org,
            flavor=gpu_flavor,
            values=dict(request.data),
            actor=actor_of(request),
            via=QuotaAuditEntry.Via.API,
        )
        # Also when no pool offers the flavor (it used to be left out: StopIteration, a 500).
        rows = selectors.quota_usage_for_org(org, include_flavor=flavor)
        row = next(r for r in rows if r["flavor"] == flavor)
        return Response(quota_object(row))


class StaffOrgPlanView(StaffView):
    """PUT /v1/admin/organizations/{org}/plan: {"plan": slug or null, "weight": number or null}."""

    @extend_schema(
        operation_id="admin_organization_plan_update",
        parameters=[ORGANIZATION_PATH],
        request=docs.OrganizationPlan,
        responses=docs.OrganizationPlanObject,
    )
    def put(self, request: Request, organization: str) -> Response:
        org = _organization(organization)
        if not isinstance(request.data, dict):  # was read as {}: back to the default plan
            raise InvalidInput('Send a JSON object, e.g. {"plan": "pro", "weight": 2}.')
        data = request.data
        unknown = set(data) - {"plan", "weight"}
        if unknown:
            raise InvalidInput(
                f"Unknown field(s): {', '.join(sorted(unknown))}; send plan and weight."
            )
        plan = None
        if data.get("plan"):
            plan = Plan.objects.filter(slug=data["plan"]).first()
            if plan is None:
                raise InvalidInput(f"No plan {data['plan']!r}.", param="plan")
        weight = data.get("weight")
        try:
            weight = Decimal(str(weight)) if weight is not None else None
        except ArithmeticError:
            raise InvalidInput("weight must be a positive number.", param="weight") from None
        row = services.org_plan_set(
            organization=org,
            plan=plan,
            weight=weight,
            actor=actor_of(request),
            via=QuotaAuditEntry.Via.API,
        )
        return Response(
            {
                "object": "organization.plan",
                "organization_id": org.public_id,
                "plan": row.plan.slug if row.plan else None,
                "weight": float(row.weight) if row.weight is not None else None,
            }
        )


def audit_object(entry: QuotaAuditEntry) -> dict[str, Any]:
    return {
        "object": "quota.audit_entry",
        "id": str(entry.pk),
        "created_at": unix(entry.changed_at),
        "changed_by": entry.changed_by.get_username() if entry.changed_by else None,
        "via": entry.via,
        "organization": entry.organization.slug if entry.organization else None,
        "plan": entry.plan.slug if entry.plan else None,
        "flavor": entry.flavor.slug if entry.flavor else None,
        "field": entry.field,
        "old_value": entry.old_value,
        "new_value": entry.new_value,
    }


class StaffQuotaAuditView(StaffView):
    """GET /v1/admin/quota_audit?organization=…: who changed which quota, when, old → new."""

    @extend_schema(
        operation_id="admin_quota_audit_list",
        parameters=[
            OpenApiParameter(
                "organization",
                str,
                description="Only this organization's changes: its id (org-…) or slug.",
            ),
            *LIST_PARAMETERS,
        ],
        responses=docs.QuotaAuditEntryList,
    )
    def get(self, request: Request) -> Response:
        ref = request.query_params.get("organization")
        entries = selectors.quota_audit(organization=_organization(ref) if ref else None)
        return Response(
            page(request, entries.order_by("-changed_at", "-id"), audit_object, cursor=_after_id)
        )


def _after_id(queryset: Any, after: str) -> Any:
    # isascii: str.isdigit() also accepts digits such as "²" that int() refuses (was a 500).
    if not (after.isascii() and after.isdigit()):
        return None
    return queryset.filter(pk__lt=int(after))
