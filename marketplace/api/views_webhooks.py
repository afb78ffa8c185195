"""/v1 webhook endpoints (the OpenAI SDK's `client.webhooks`), event types, and the delivery log."""

from __future__ import annotations

from typing import Any

from django.db.models import Prefetch
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from marketplace.api import schema
from marketplace.api.idempotency import idempotent
from marketplace.api.models import WebhookDeliveryAttempt
from marketplace.api.pagination import page
from marketplace.api.representations import unix
from marketplace.api.views import LIST_PARAMETERS, org_of
from marketplace.api.webhooks import services
from marketplace.api.webhooks.events import EVENT_TYPES
from marketplace.api.webhooks.selectors import webhook_deliveries_for_org, webhook_endpoints_for_org
from marketplace.api.webhooks.signing import secret_hint
from marketplace.errors import InvalidInput, NotFound


def endpoint_object(endpoint: Any, *, with_secret: bool = False) -> dict[str, Any]:
    body = {
        "id": endpoint.id,
        "object": "webhook_endpoint",
        "created_at": unix(endpoint.created_at),
        "updated_at": unix(endpoint.updated_at),
        "name": endpoint.name,
        "url": endpoint.url,
        "event_types": list(endpoint.event_types),
        "signing_secret_hint": secret_hint(endpoint.secret),
    }
    if with_secret:
        body["signing_secret"] = endpoint.secret
    return body


def delivery_object(delivery: Any) -> dict[str, Any]:
    return {
        "id": delivery.id,
        "object": "webhook_delivery",
        "created_at": unix(delivery.created_at),
        "webhook_endpoint_id": delivery.endpoint_id,
        "event_id": delivery.event_id,
        "event_type": delivery.event.type,
        "status": delivery.status,
        "attempt_count": delivery.attempt_count,
        "last_status_code": delivery.last_status_code,
        "next_attempt_at": unix(delivery.next_attempt_at),
        "attempts": [
            {
                "number": a.number,
                "created_at": unix(a.created_at),
                "status_code": a.status_code,
                "error": a.error or None,
                "duration_ms": a.duration_ms,
            }
            for a in delivery.attempts.all()
        ],
    }


class EndpointCreateSerializer(serializers.Serializer):
    name = serializers.CharField(max_length=200)
    url = serializers.CharField(max_length=2000)
    event_types = serializers.ListField(child=serializers.CharField(), allow_empty=False)


class EndpointUpdateSerializer(serializers.Serializer):
    name = serializers.CharField(max_length=200, required=False)
    url = serializers.CharField(max_length=2000, required=False)
    event_types = serializers.ListField(child=serializers.CharField(), required=False)


class RotateSerializer(serializers.Serializer):
    keep_old_secret_active_for_24_hours = serializers.BooleanField(required=False, default=False)


class TestSerializer(serializers.Serializer):
    event_type = serializers.CharField()


def _valid(serializer_class: type[serializers.Serializer], request: Request) -> dict[str, Any]:
    serializer = serializer_class(data=request.data)
    serializer.is_valid(raise_exception=True)
    return dict(serializer.validated_data)


class EndpointListView(APIView):
    @extend_schema(
        operation_id="webhooks_list",
        parameters=LIST_PARAMETERS,
        responses=schema.WebhookEndpointList,
    )
    def get(self, request: Request) -> Response:
        return Response(page(request, webhook_endpoints_for_org(org_of(request)), endpoint_object))

    @extend_schema(
        operation_id="webhooks_create",
        request=EndpointCreateSerializer,
        responses=schema.WebhookEndpointWithSecretObject,
    )
    @idempotent
    def post(self, request: Request) -> Response:
        data = _valid(EndpointCreateSerializer, request)
        endpoint = services.webhook_endpoint_create(organization=org_of(request), **data)
        return Response(endpoint_object(endpoint, with_secret=True))


def _endpoint_or_404(request: Request, endpoint_id: str) -> Any:
    endpoint = webhook_endpoints_for_org(org_of(request)).filter(pk=endpoint_id).first()
    if endpoint is None:
        raise NotFound(f"No webhook endpoint {endpoint_id!r}.", param="webhook_endpoint_id")
    return endpoint


class EndpointDetailView(APIView):
    @extend_schema(operation_id="webhooks_retrieve", responses=schema.WebhookEndpointObject)
    def get(self, request: Request, webhook_endpoint_id: str) -> Response:
        return Response(endpoint_object(_endpoint_or_404(request, webhook_endpoint_id)))

    @extend_schema(
        operation_id="webhooks_update",
        request=EndpointUpdateSerializer,
        responses=schema.WebhookEndpointObject,
    )
    def post(self, request: Request, webhook_endpoint_id: str) -> Response:
        _endpoint_or_404(request, webhook_endpoint_id)
        data = _valid(EndpointUpdateSerializer, request)
        endpoint = services.webhook_endpoint_update(
            organization=org_of(request), endpoint_id=webhook_endpoint_id, **data
        )
        return Response(endpoint_object(endpoint))

    @extend_schema(operation_id="webhooks_delete", responses={200: schema.DeletedObject})
    def delete(self, request: Request, webhook_endpoint_id: str) -> Response:
        endpoint = services.webhook_endpoint_delete(
            organization=org_of(request), endpoint_id=webhook_endpoint_id
        )
        return Response({"id": endpoint.id, "object": "webhook_endpoint.deleted", "deleted": True})


class EndpointRotateView(APIView):
    @extend_schema(
        operation_id="webhooks_rotate_secret",
        request=RotateSerializer,
        responses=schema.WebhookEndpointWithSecretObject,
    )
    @idempotent
    def post(self, request: Request, webhook_endpoint_id: str) -> Response:
        _endpoint_or_404(request, webhook_endpoint_id)
        data = _valid(RotateSerializer, request)
        endpoint = services.webhook_endpoint_rotate_secret(
            organization=org_of(request),
            endpoint_id=webhook_endpoint_id,
            keep_old_secret_for_24_hours=data["keep_old_secret_active_for_24_hours"],
        )
        return Response(endpoint_object(endpoint, with_secret=True))


class EndpointTestView(APIView):
    @extend_schema(
        operation_id="webhooks_test",
        request=TestSerializer,
        responses=schema.WebhookTestResultObject,
    )
    def post(self, request: Request, webhook_endpoint_id: str) -> Response:
        _endpoint_or_404(request, webhook_endpoint_id)  # a foreign id is a 404, whatever the body
        data = _valid(TestSerializer, request)
        attempt = services.webhook_endpoint_test(
            organization=org_of(request),
            endpoint_id=webhook_endpoint_id,
            event_type=data["event_type"],
        )
        return Response(
            {
                "object": "webhook_endpoint.test",
                "webhook_endpoint_id": webhook_endpoint_id,
                "event_type": data["event_type"],
                "status_code": attempt.status_code or 0,
                "success": True,
                "error": attempt.error or None,
                "delivery_id": attempt.delivery_id,
            }
        )


class EventTypeListView(APIView):
    @extend_schema(
        operation_id="webhooks_event_types_list", responses=schema.WebhookEventTypeListObject
    )
    def get(self, request: Request) -> Response:
        return Response({"object": "list", "data": sorted(EVENT_TYPES)})


def _deliveries(request: Request) -> Any:
    attempts = Prefetch("attempts", queryset=WebhookDeliveryAttempt.objects.order_by("number"))
    return webhook_deliveries_for_org(org_of(request)).prefetch_related(attempts)


DELIVERY_STATUSES = ["pending", "succeeded", "failed"]


class DeliveryListView(APIView):
    @extend_schema(
        operation_id="webhook_deliveries_list",
        parameters=[
            *LIST_PARAMETERS,
            OpenApiParameter("webhook_endpoint_id", str),
            OpenApiParameter("status", str, enum=DELIVERY_STATUSES),
        ],
        responses=schema.WebhookDeliveryList,
    )
    def get(self, request: Request) -> Response:
        deliveries = _deliveries(request)
        endpoint_id = request.query_params.get("webhook_endpoint_id")
        if endpoint_id:
            deliveries = deliveries.filter(endpoint_id=endpoint_id)
        status = request.query_params.get("status")
        if status is not None:
            if status not in DELIVERY_STATUSES:
                raise InvalidInput(
                    f"status must be one of {', '.join(DELIVERY_STATUSES)}, not {status!r}.",
                    param="status",
                )
            deliveries = deliveries.filter(status=status)
        return Response(page(request, deliveries, delivery_object))


class DeliveryDetailView(APIView):
    @extend_schema(
        operation_id="webhook_deliveries_retrieve", responses=schema.WebhookDeliveryObject
    )
    def get(self, request: Request, delivery_id: str) -> Response:
        delivery = _deliveries(request).filter(pk=delivery_id).first()
        if delivery is None:
            raise NotFound(f"No webhook delivery {delivery_id!r}.", param="delivery_id")
        return Response(delivery_object(delivery))


class DeliveryRedeliverView(APIView):
    @extend_schema(
        operation_id="webhook_deliveries_redeliver",
        request=None,
        responses=schema.WebhookDeliveryObject,
    )
    @idempotent
    def post(self, request: Request, delivery_id: str) -> Response:
        services.webhook_delivery_redeliver(organization=org_of(request), delivery_id=delivery_id)
        delivery = _deliveries(request).get(pk=delivery_id)
        return Response(delivery_object(delivery))
