"""/v1 organization, members and API keys. A new key's secret is shown once, at creation."""

from __future__ import annotations

from typing import Any

from drf_spectacular.utils import extend_schema
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from marketplace.accounts import scopes as key_scopes
from marketplace.accounts import selectors as account_selectors
from marketplace.accounts import services as account_services
from marketplace.accounts.models import ApiKey, Membership
from marketplace.api import schema
from marketplace.api.authentication import api_key_of
from marketplace.api.idempotency import idempotent
from marketplace.api.pagination import page
from marketplace.api.representations import unix
from marketplace.api.views import LIST_PARAMETERS, org_of
from marketplace.errors import Forbidden, NotFound

KEY_ID_PREFIX = "key_"


def organization_object(org: Any) -> dict[str, Any]:
    return {
        "id": org.public_id,
        "object": "organization",
        "name": org.name,
        "slug": org.slug,
        "kind": org.kind,
        "country": org.country,
        "created_at": unix(org.created_at),
    }


def member_object(membership: Membership) -> dict[str, Any]:
    return {
        "id": f"user_{membership.user_id}",
        "object": "organization.member",
        "username": membership.user.username,
        "email": membership.user.email,
        "role": membership.role,
        "created_at": unix(membership.created_at),
    }


def api_key_object(key: ApiKey, *, secret: str | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {
        "id": f"{KEY_ID_PREFIX}{key.pk}",
        "object": "api_key",
        "name": key.name,
        "prefix": key.prefix,
        "created_at": unix(key.created_at),
        "last_used_at": unix(key.last_used_at),
        "revoked_at": unix(key.revoked_at),
        "read_only": key.read_only,
        "scopes": list(key.scopes),
        "resources": list(key.resources or []),
    }
    if secret is not None:
        body["secret"] = secret
    return body


class OrganizationView(APIView):
    api_resource = "organization"

    @extend_schema(operation_id="organization_retrieve", responses=schema.OrganizationObject)
    def get(self, request: Request) -> Response:
        return Response(organization_object(org_of(request)))


class MemberListView(APIView):
    api_resource = "organization"

    @extend_schema(
        operation_id="organization_members_list",
        parameters=LIST_PARAMETERS,
        responses=schema.MemberList,
    )
    def get(self, request: Request) -> Response:
        memberships = (
            Membership.objects.filter(organization=org_of(request))
            .select_related("user")
            .order_by("-created_at", "-pk")
        )
        return Response(
            page(
                request,
                memberships,
                member_object,
                id_of=lambda m: f"user_{m.user_id}",
                cursor=_member_cursor,
            )
        )


def _member_cursor(queryset: Any, after: str) -> Any:
    user_id = after.removeprefix("user_")
    anchor = (
        queryset.filter(user_id=user_id).values("created_at", "pk").first()
        if user_id.isdigit()
        else None
    )
    if anchor is None:
        return None
    from django.db.models import Q

    return queryset.filter(
        Q(created_at__lt=anchor["created_at"])
        | Q(created_at=anchor["created_at"], pk__lt=anchor["pk"])
    )


ApiKeyCreateSerializer = schema.shape(
    "ApiKeyCreateSerializer",
    {
        "name": serializers.CharField(max_length=100),
        "read_only": serializers.BooleanField(
            required=False, default=False, help_text="Shorthand for scopes ['read']."
        ),
        "scopes": serializers.ListField(
            child=serializers.ChoiceField(choices=list(key_scopes.SCOPES)),
            required=False,
            min_length=1,
            help_text=f"{key_scopes.SCOPES_HELP}. Default: the calling key's own scopes (or "
            "['read'] with read_only). A key can never create a key that does more than itself.",
        ),
        "resources": serializers.ListField(
            child=serializers.CharField(max_length=40),
            required=False,
            default=list,
            help_text="Limit the key to these resources (first /v1 path segment, webhooks "
            "grouped); empty means all.",
        ),
    },
)


def _no_wider_resources(caller: ApiKey, *, resources: list[str]) -> None:
    """A key limited to resources cannot mint a key that reaches others (its scopes are bounded
    by api_key_create)."""
    if caller.resources:
        wider = sorted(set(resources or ["(all)"]) - set(caller.resources))
        if wider:
            raise Forbidden(
                f"This key is limited to {', '.join(caller.resources)}; it cannot create a key "
                f"for {', '.join(wider)}.",
                param="resources",
            )


def _key_pk(key_id: str) -> int:
    raw = key_id.removeprefix(KEY_ID_PREFIX)
    if not raw.isdigit() or not key_id.startswith(KEY_ID_PREFIX):
        raise NotFound(f"No API key {key_id!r}.", param="key_id")
    return int(raw)


class ApiKeyListView(APIView):
    @extend_schema(
        operation_id="api_keys_list", parameters=LIST_PARAMETERS, responses=schema.ApiKeyList
    )
    def get(self, request: Request) -> Response:
        keys = account_selectors.api_keys_for_org(org_of(request)).order_by("-created_at", "-pk")
        return Response(
            page(
                request,
                keys,
                api_key_object,
                id_of=lambda k: f"{KEY_ID_PREFIX}{k.pk}",
                cursor=_key_cursor,
            )
        )

    @extend_schema(
        operation_id="api_keys_create",
        request=ApiKeyCreateSerializer,
        responses=schema.ApiKeyWithSecretObject,
    )
    @idempotent
    def post(self, request: Request) -> Response:
        serializer = ApiKeyCreateSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        data = serializer.validated_data
        caller = api_key_of(request)
        _no_wider_resources(caller, resources=data["resources"])
        scopes = data.get("scopes")
        if scopes is None and not data["read_only"]:
            scopes = list(caller.scopes)
        issued = account_services.api_key_create(
            organization=org_of(request),
            name=data["name"],
            read_only=data["read_only"],
            scopes=scopes,
            allowed_scopes=list(caller.scopes),
            resources=sorted(set(data["resources"])),
        )
        return Response(api_key_object(issued.api_key, secret=issued.secret))


def _key_cursor(queryset: Any, after: str) -> Any:
    try:
        pk = _key_pk(after)
    except NotFound:
        return None
    from marketplace.api.pagination import _after_by_created

    return _after_by_created(queryset, str(pk))


class ApiKeyDetailView(APIView):
    api_resource = "api_keys"

    @extend_schema(operation_id="api_keys_retrieve", responses=schema.ApiKeyObject)
    def get(self, request: Request, key_id: str) -> Response:
        key = account_selectors.api_keys_for_org(org_of(request)).filter(pk=_key_pk(key_id)).first()
        if key is None:
            raise NotFound(f"No API key {key_id!r}.", param="key_id")
        return Response(api_key_object(key))


class ApiKeyRevokeView(APIView):
    api_resource = "api_keys"

    @extend_schema(operation_id="api_keys_revoke", request=None, responses=schema.ApiKeyObject)
    def post(self, request: Request, key_id: str) -> Response:
        key = account_services.api_key_revoke(organization=org_of(request), key_id=_key_pk(key_id))
        return Response(api_key_object(key))
