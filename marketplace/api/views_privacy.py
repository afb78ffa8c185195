"""/v1 data protection: the organization's exports (request, list, retrieve, download), its
retention and what will expire when, and the record of staff access to its content."""

from __future__ import annotations

from typing import Any

from django.http import FileResponse, HttpRequest, HttpResponse
from django.urls import reverse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from marketplace.api import schema
from marketplace.api.idempotency import idempotent
from marketplace.api.pagination import page
from marketplace.api.representations import unix
from marketplace.api.views import LIST_PARAMETERS, AlwaysJson, org_of
from marketplace.errors import Conflict
from marketplace.finetuning.provenance import public_key_pem
from marketplace.privacy import selectors, services
from marketplace.privacy.models import DataExport, StaffAccess


def export_object(export: DataExport, request: Request | None = None) -> dict[str, Any]:
    url = None
    if export.status == DataExport.Status.READY:
        url = reverse("organization-export-content", args=[export.public_id])
        if request is not None:
            url = request.build_absolute_uri(url)
    return {
        "id": export.public_id,
        "object": "organization.export",
        "status": export.status,
        "bytes": export.bytes,
        "sha256": export.sha256 or None,
        "object_count": export.object_count,
        "created_at": unix(export.created_at),
        "ready_at": unix(export.ready_at),
        "expires_at": unix(export.expires_at),
        "download_url": url,
        "error": export.error or None,
    }


def staff_access_object(access: StaffAccess) -> dict[str, Any]:
    return {
        "id": f"access_{access.pk}",
        "object": "organization.staff_access",
        "staff": access.staff_username,
        "action": access.action,
        "via": access.via,
        "subject_type": access.subject_type,
        "subject_id": access.subject_id,
        "reason": access.reason,
        "created_at": unix(access.created_at),
    }


ExportObject = schema.shape(
    "ExportObject",
    {
        "id": serializers.CharField(),
        "object": schema.const("organization.export"),
        "status": serializers.ChoiceField(choices=DataExport.Status.values),
        "bytes": serializers.IntegerField(),
        "sha256": serializers.CharField(allow_null=True),
        "object_count": serializers.IntegerField(),
        "created_at": serializers.IntegerField(),
        "ready_at": serializers.IntegerField(allow_null=True),
        "expires_at": serializers.IntegerField(allow_null=True),
        "download_url": serializers.CharField(allow_null=True),
        "error": serializers.CharField(allow_null=True),
    },
)
ExportList = schema.list_of(ExportObject, "ExportList")
StaffAccessObject = schema.shape(
    "StaffAccessObject",
    {
        "id": serializers.CharField(),
        "object": schema.const("organization.staff_access"),
        "staff": serializers.CharField(),
        "action": serializers.ChoiceField(choices=StaffAccess.Action.values),
        "via": serializers.ChoiceField(choices=StaffAccess.Via.values),
        "subject_type": serializers.CharField(),
        "subject_id": serializers.CharField(),
        "reason": serializers.CharField(),
        "created_at": serializers.IntegerField(),
    },
)
StaffAccessList = schema.list_of(StaffAccessObject, "StaffAccessList")
RetentionObject = schema.shape(
    "RetentionObject",
    {
        "object": schema.const("organization.retention"),
        "retention_days": serializers.IntegerField(),
        "default_days": serializers.IntegerField(),
        "max_days": serializers.IntegerField(),
        "expiring": serializers.ListField(child=serializers.DictField()),
    },
)
RetentionSetSerializer = schema.shape(
    "RetentionSetSerializer",
    {
        "retention_days": serializers.IntegerField(
            allow_null=True, help_text="Days after the last job ended; null: platform default."
        )
    },
)


class ExportListView(APIView):
    api_resource = "organization"

    @extend_schema(
        operation_id="organization_exports_list", parameters=LIST_PARAMETERS, responses=ExportList
    )
    def get(self, request: Request) -> Response:
        exports = selectors.exports_for_org(org_of(request))
        return Response(
            page(
                request,
                exports,
                lambda e: export_object(e, request),
                id_of=lambda e: e.public_id,
                cursor=_export_cursor,
            )
        )

    @extend_schema(operation_id="organization_exports_create", request=None, responses=ExportObject)
    @idempotent
    def post(self, request: Request) -> Response:
        export = services.export_request(organization=org_of(request), requested_by=None)
        return Response(export_object(export, request))


def _export_cursor(queryset: Any, after: str) -> Any:
    anchor = queryset.filter(public_id=after).values("created_at", "pk").first()
    if anchor is None:
        return None
    from django.db.models import Q

    return queryset.filter(
        Q(created_at__lt=anchor["created_at"])
        | Q(created_at=anchor["created_at"], pk__lt=anchor["pk"])
    )


class ExportDetailView(APIView):
    api_resource = "organization"

    @extend_schema(operation_id="organization_exports_retrieve", responses=ExportObject)
    def get(self, request: Request, export_id: str) -> Response:
        return Response(
            export_object(selectors.export_for_org(org_of(request), export_id), request)
        )


class ExportContentView(APIView):
    api_resource = "organization"
    content_negotiation_class = AlwaysJson
    http_method_names = ["get", "head", "options"]

    @extend_schema(
        operation_id="organization_exports_content",
        responses={(200, "application/gzip"): OpenApiTypes.BINARY},
    )
    def get(self, request: Request, export_id: str) -> FileResponse:
        export = selectors.export_for_org(org_of(request), export_id)
        if export.status != DataExport.Status.READY or not export.archive:
            raise Conflict(
                f"Export {export.public_id} is {export.status}; only a ready export can be "
                "downloaded (request a new one if it expired).",
                param="export_id",
                code="export_not_ready",
            )
        return FileResponse(
            export.archive.open("rb"),
            content_type="application/gzip",
            as_attachment=True,
            filename=f"{export.public_id}.tar.gz",
        )


class StaffAccessListView(APIView):
    api_resource = "organization"

    @extend_schema(
        operation_id="organization_staff_access_list",
        parameters=LIST_PARAMETERS,
        responses=StaffAccessList,
    )
    def get(self, request: Request) -> Response:
        accesses = selectors.staff_accesses_for_org(org_of(request))
        return Response(
            page(
                request,
                accesses,
                staff_access_object,
                id_of=lambda a: f"access_{a.pk}",
                cursor=_access_cursor,
            )
        )


def _access_cursor(queryset: Any, after: str) -> Any:
    raw = after.removeprefix("access_")
    if not raw.isdigit():
        return None
    from marketplace.api.pagination import _after_by_created

    return _after_by_created(queryset, raw)


def retention_object(org: Any) -> dict[str, Any]:
    from django.conf import settings

    return {
        "object": "organization.retention",
        "retention_days": services.retention_days_for(org),
        "default_days": settings.PARTAGE_RETENTION_DEFAULT_DAYS,
        "max_days": settings.PARTAGE_RETENTION_MAX_DAYS,
        "expiring": [
            {
                "kind": e.kind,
                "id": e.object_id if e.kind == "file" else e.label,
                "expires_at": unix(e.expires_at),
                "jobs": list(e.job_ids),
            }
            for e in selectors.retention_schedule(org)
        ],
    }


class RetentionView(APIView):
    api_resource = "organization"

    @extend_schema(operation_id="organization_retention_retrieve", responses=RetentionObject)
    def get(self, request: Request) -> Response:
        return Response(retention_object(org_of(request)))

    @extend_schema(
        operation_id="organization_retention_update",
        request=RetentionSetSerializer,
        responses=RetentionObject,
    )
    def post(self, request: Request) -> Response:
        serializer = RetentionSetSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        org = org_of(request)
        services.retention_set(organization=org, days=serializer.validated_data["retention_days"])
        return Response(retention_object(org))


def provenance_public_key(request: HttpRequest) -> HttpResponse:
    """The Ed25519 public key that verifies adapter provenance (no authentication)."""
    return HttpResponse(public_key_pem(), content_type="application/x-pem-file")
