"""/v1 capacity API: GPU flavors, offers (live free capacity), providers' pools, bookings,
an organization's residency policy. Thin: each view validates, then calls one service or selector.
"""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from django.db.models import Q, QuerySet
from django.utils import timezone
from drf_spectacular.utils import extend_schema
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from marketplace.accounts.models import ApiKey
from marketplace.api import serializers_capacity as docs
from marketplace.api.idempotency import idempotent
from marketplace.api.pagination import page
from marketplace.api.representations import unix
from marketplace.api.views import LIST_PARAMETERS
from marketplace.billing import selectors as billing_selectors
from marketplace.billing import services as billing
from marketplace.capacity import placement, policies, selectors, services
from marketplace.capacity.models import Booking, GpuFlavor, MaintenanceWindow, Pool
from marketplace.errors import InvalidInput, NotFound


def org_of(request: Request) -> Any:
    return request.user.organization  # type: ignore[union-attr]


def _validated(serializer_class: type[serializers.Serializer], data: Any) -> dict[str, Any]:
    serializer = serializer_class(data=data)
    serializer.is_valid(raise_exception=True)
    return dict(serializer.validated_data)


def _instant(value: int, param: str) -> datetime:
    try:
        return datetime.fromtimestamp(value, tz=UTC)
    except (OverflowError, OSError, ValueError):
        raise InvalidInput(f"{param} must be a Unix timestamp in seconds.", param=param) from None


def _cursor_by_public_id(queryset: QuerySet[Any], after: str) -> QuerySet[Any] | None:
    anchor = (
        queryset.model._default_manager.filter(public_id=after).values("created_at", "pk").first()
    )
    if anchor is None:
        return None
    return queryset.filter(
        Q(created_at__lt=anchor["created_at"])
        | Q(created_at=anchor["created_at"], pk__lt=anchor["pk"])
    )


def _public_page(request: Request, queryset: QuerySet[Any], render: Any) -> dict[str, Any]:
    return page(
        request,
        queryset,
        render,
        id_of=lambda obj: obj.public_id,
        cursor=_cursor_by_public_id,
    )


# ---------------------------------------------------------------- representations


def flavor_object(flavor: GpuFlavor) -> dict[str, Any]:
    return {
        "id": flavor.slug,
        "object": "gpu_flavor",
        "model": flavor.model_name,
        "memory_gb": flavor.memory_gb,
        "interconnect": flavor.interconnect,
    }


def offer_object(pool: Pool, free_gpus: int) -> dict[str, Any]:
    return {
        "id": pool.public_id,
        "object": "offer",
        "provider": {"id": pool.provider.public_id, "name": pool.provider.name},
        "flavor": flavor_object(pool.flavor),
        "gpu_count": pool.gpu_count,
        "free_gpus": free_gpus,
        "region": pool.region,
        "country": pool.country,
        "certifications": pool.certifications,
        "price_per_gpu_hour": str(pool.price_per_gpu_hour),
        "currency": pool.currency,
    }


def pool_object(pool: Pool) -> dict[str, Any]:
    return {
        "id": pool.public_id,
        "object": "pool",
        "created_at": unix(pool.created_at),
        "name": pool.name,
        "flavor": flavor_object(pool.flavor),
        "gpu_count": pool.gpu_count,
        "region": pool.region,
        "country": pool.country,
        "certifications": pool.certifications,
        "price_per_gpu_hour": str(pool.price_per_gpu_hour),
        "currency": pool.currency,
        "status": pool.status,
        "approved_at": unix(pool.approved_at),
        "review_note": pool.review_note or None,
        "cluster": pool.cluster.name if pool.cluster else None,
        "node_selector": pool.node_selector,
        "tolerations": pool.tolerations,
    }


def maintenance_object(window: MaintenanceWindow) -> dict[str, Any]:
    return {
        "id": window.pk,
        "object": "maintenance_window",
        "start": unix(window.start),
        "end": unix(window.end),
        "gpu_count": window.gpu_count,
        "reason": window.reason,
    }


def booking_object(booking: Booking) -> dict[str, Any]:
    # The VAT and totals are billing's: what the ledger charged (and refunded) for the booking.
    charged = billing.booking_charged(booking=booking)
    refunded = billing.booking_refunded(booking=booking)
    return {
        "id": booking.public_id,
        "object": "booking",
        "created_at": unix(booking.created_at),
        "pool": booking.pool.public_id,
        "flavor": booking.flavor.slug,
        "gpus": booking.gpu_count,
        "start": unix(booking.start),
        "end": unix(booking.end),
        "status": booking.status,
        "price_per_gpu_hour": str(booking.price_per_gpu_hour),
        "amount": str(booking.amount),
        "vat": str(charged.vat),
        "total": str(charged.customer_total),
        "currency": booking.currency,
        "cancellation_policy": booking.cancellation_policy,
        "cancelled_at": unix(booking.cancelled_at),
        "refund_fraction": str(booking.refund_fraction)
        if booking.refund_fraction is not None
        else None,
        "refund_amount": str(booking.refund_amount) if booking.refund_amount is not None else None,
        "refund_vat": str(refunded.vat) if refunded is not None else None,
        "refund_total": str(refunded.customer_total) if refunded is not None else None,
    }


def _schedule(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [
        {
            "cancel_before": unix(row["cancel_before"]),
            "refund_fraction": str(row["refund_fraction"]),
            "refund_amount": str(row["refund_amount"]),
        }
        for row in rows
    ]


# ---------------------------------------------------------------- catalogue and offers


class FlavorListView(APIView):
    @extend_schema(operation_id="gpu_flavors_list", responses=docs.FlavorList)
    def get(self, request: Request) -> Response:
        data = [flavor_object(f) for f in selectors.flavors()]
        return Response({"object": "list", "data": data, "has_more": False})


class OfferQuerySerializer(serializers.Serializer):
    gpu_model = serializers.CharField(required=False, max_length=100)
    flavor = serializers.CharField(required=False, max_length=40)
    min_memory_gb = serializers.IntegerField(required=False, min_value=1, max_value=100_000)
    country = serializers.CharField(required=False, min_length=2, max_length=2)
    region = serializers.CharField(required=False, max_length=60)
    max_price = serializers.DecimalField(
        required=False, max_digits=10, decimal_places=4, min_value=Decimal("0")
    )
    available_at = serializers.IntegerField(required=False, min_value=0)
    gpus = serializers.IntegerField(required=False, min_value=1, max_value=100_000)


class OfferListView(APIView):
    """Anyone logged in may search offers; each shows live free GPUs (at `available_at`)."""

    @extend_schema(
        operation_id="offers_list",
        parameters=[OfferQuerySerializer, *LIST_PARAMETERS],
        responses=docs.OfferList,
    )
    def get(self, request: Request) -> Response:
        query = _validated(
            OfferQuerySerializer,
            {k: v for k, v in request.query_params.items() if k not in {"after", "limit"}},
        )
        at = query.pop("available_at", None)
        filters = selectors.OfferFilters(
            **query, at=_instant(at, "available_at") if at is not None else timezone.now()
        )
        pools, free = selectors.offers(filters)
        return Response(_public_page(request, pools, lambda p: offer_object(p, free.get(p.pk, 0))))


# ---------------------------------------------------------------- providers' pools


class PoolWriteSerializer(serializers.Serializer):
    name = serializers.CharField(required=False, max_length=100)
    flavor = serializers.CharField(required=False, max_length=40)
    gpu_count = serializers.IntegerField(required=False)
    region = serializers.CharField(required=False, max_length=60)
    country = serializers.CharField(required=False, max_length=2)
    certifications = serializers.ListField(child=serializers.CharField(), required=False)
    price_per_gpu_hour = serializers.CharField(required=False)
    node_selector = serializers.DictField(child=serializers.CharField(), required=False)
    tolerations = serializers.ListField(child=serializers.DictField(), required=False)


def _known_fields(request: Request, allowed: set[str]) -> dict[str, Any]:
    if not isinstance(request.data, dict):
        raise InvalidInput("Send a JSON object.")
    unknown = set(request.data) - allowed
    if unknown:
        raise InvalidInput(
            f"Unknown field(s): {', '.join(sorted(unknown))}. Known: {', '.join(sorted(allowed))}.",
            param=sorted(unknown)[0],
        )
    return dict(request.data)


POOL_FIELDS = set(PoolWriteSerializer().fields)


class PoolListView(APIView):
    """A provider's own pools."""

    @extend_schema(operation_id="pools_list", parameters=LIST_PARAMETERS, responses=docs.PoolList)
    def get(self, request: Request) -> Response:
        pools = selectors.pools_for_provider(org_of(request))
        return Response(_public_page(request, pools, pool_object))

    @extend_schema(
        operation_id="pools_create", request=PoolWriteSerializer, responses={201: docs.PoolObject}
    )
    @idempotent
    def post(self, request: Request) -> Response:
        data = _validated(PoolWriteSerializer, _known_fields(request, POOL_FIELDS))
        for required in ("flavor", "country"):
            if required not in data:
                raise InvalidInput(f"{required} is required.", param=required)
        pool = services.pool_create(
            provider=org_of(request),
            flavor=data.pop("flavor"),
            country=data.pop("country"),
            **data,
        )
        return Response(pool_object(pool), status=201)


def _own_pool(request: Request, pool_id: str) -> Pool:
    pool = selectors.pool_for_provider(org_of(request), pool_id)
    if pool is None:
        raise NotFound(f"No pool with id {pool_id!r} among yours.", param="pool_id")
    return pool


class PoolDetailView(APIView):
    @extend_schema(operation_id="pools_retrieve", responses=docs.PoolObject)
    def get(self, request: Request, pool_id: str) -> Response:
        return Response(pool_object(_own_pool(request, pool_id)))

    @extend_schema(
        operation_id="pools_update", request=PoolWriteSerializer, responses=docs.PoolObject
    )
    def patch(self, request: Request, pool_id: str) -> Response:
        changes = _known_fields(request, POOL_FIELDS)
        pool = services.pool_update(provider=org_of(request), pool_id=pool_id, changes=changes)
        return Response(
            pool_object(selectors.pool_for_provider(org_of(request), pool.public_id) or pool)
        )

    @extend_schema(operation_id="pools_retire", responses=docs.PoolObject)
    def delete(self, request: Request, pool_id: str) -> Response:
        pool = services.pool_retire(pool=_own_pool(request, pool_id))
        return Response(pool_object(pool))


class MaintenanceSerializer(serializers.Serializer):
    start = serializers.IntegerField(min_value=0)
    end = serializers.IntegerField(min_value=0)
    gpu_count = serializers.IntegerField(required=False, allow_null=True, min_value=1)
    reason = serializers.CharField(required=False, allow_blank=True, max_length=200, default="")


class PoolMaintenanceView(APIView):
    @extend_schema(operation_id="pool_maintenance_windows_list", responses=docs.MaintenanceList)
    def get(self, request: Request, pool_id: str) -> Response:
        pool = _own_pool(request, pool_id)
        windows = [maintenance_object(w) for w in pool.maintenance_windows.all()]
        return Response({"object": "list", "data": windows, "has_more": False})

    @extend_schema(
        operation_id="pool_maintenance_windows_create",
        request=MaintenanceSerializer,
        responses={201: docs.MaintenanceObject},
    )
    @idempotent
    def post(self, request: Request, pool_id: str) -> Response:
        pool = _own_pool(request, pool_id)
        data = _validated(MaintenanceSerializer, request.data)
        window = services.maintenance_window_create(
            pool=pool,
            start=_instant(data["start"], "start"),
            end=_instant(data["end"], "end"),
            gpu_count=data.get("gpu_count"),
            reason=data["reason"],
        )
        return Response(maintenance_object(window), status=201)


# ---------------------------------------------------------------- bookings


class BookingSerializer(serializers.Serializer):
    flavor = serializers.CharField(max_length=40)
    gpus = serializers.IntegerField(min_value=1, max_value=100_000)
    start = serializers.IntegerField(min_value=0)
    end = serializers.IntegerField(min_value=0)
    pool = serializers.CharField(required=False, allow_null=True, max_length=40)
    region = serializers.CharField(required=False, allow_null=True, max_length=60)


def _booking_args(request: Request) -> dict[str, Any]:
    data = _validated(BookingSerializer, request.data)
    return {
        "organization": org_of(request),
        "flavor": data["flavor"],
        "gpu_count": data["gpus"],
        "start": _instant(data["start"], "start"),
        "end": _instant(data["end"], "end"),
        "pool_id": data.get("pool") or None,
        "region": data.get("region") or None,
    }


class BookingListView(APIView):
    @extend_schema(
        operation_id="bookings_list", parameters=LIST_PARAMETERS, responses=docs.BookingList
    )
    def get(self, request: Request) -> Response:
        bookings = selectors.bookings_for_org(org_of(request)).prefetch_related("billing_charges")
        return Response(_public_page(request, bookings, booking_object))

    @extend_schema(
        operation_id="bookings_create",
        request=BookingSerializer,
        responses={201: docs.BookingObject},
    )
    @idempotent
    def post(self, request: Request) -> Response:
        key = request.auth
        booking = services.booking_create(
            **_booking_args(request), created_by_key=key if isinstance(key, ApiKey) else None
        )
        return Response(booking_object(booking), status=201)


class BookingQuoteView(APIView):
    """Price, pool and the cancellation refunds, before confirming. Writes nothing."""

    @extend_schema(
        operation_id="bookings_quote", request=BookingSerializer, responses=docs.BookingQuoteObject
    )
    def post(self, request: Request) -> Response:
        args = _booking_args(request)
        quote = services.booking_quote(**args)
        earliest = quote.earliest
        price = (
            billing.booking_price(organization=args["organization"], amount=quote.amount)
            if quote.amount is not None
            else None
        )
        return Response(
            {
                "object": "booking.quote",
                "fits": quote.fits,
                "pool": quote.pool.public_id if quote.pool else None,
                "gpus": quote.gpu_count,
                "start": unix(quote.start),
                "end": unix(quote.end),
                "price_per_gpu_hour": str(quote.price_per_gpu_hour)
                if quote.price_per_gpu_hour
                else None,
                "amount": str(quote.amount) if quote.amount is not None else None,
                "vat": str(price.vat) if price is not None else None,
                "total": str(price.customer_total) if price is not None else None,
                "currency": "EUR",
                "cancellation_policy": services.policies.CANCELLATION_POLICY,
                "cancellation_rules": services.policies.POLICY_TEXT,
                "refund_schedule": _schedule(quote.refund_schedule),
                "earliest": {
                    "pool": earliest.pool.public_id,
                    "start": unix(earliest.start),
                    "end": unix(earliest.end),
                }
                if earliest
                else None,
                "balance": billing_selectors.balance_coverage(
                    args["organization"], amount=price.customer_total
                ).as_dict()
                if price is not None
                else None,
            }
        )


def _own_booking(request: Request, booking_id: str) -> Booking:
    booking = selectors.booking_for_org(org_of(request), booking_id)
    if booking is None:
        raise NotFound(f"No booking with id {booking_id!r}.", param="booking_id")
    return booking


class BookingDetailView(APIView):
    @extend_schema(operation_id="bookings_retrieve", responses=docs.BookingObject)
    def get(self, request: Request, booking_id: str) -> Response:
        return Response(booking_object(_own_booking(request, booking_id)))


class BookingCancellationQuoteView(APIView):
    @extend_schema(
        operation_id="bookings_cancellation_quote", responses=docs.CancellationQuoteObject
    )
    def get(self, request: Request, booking_id: str) -> Response:
        booking = _own_booking(request, booking_id)
        quote = services.booking_cancellation_quote(booking=booking)
        refund = billing.booking_refund_quote(booking=booking, refund_amount=quote.refund_amount)
        return Response(
            {
                "object": "booking.cancellation_quote",
                "booking": booking.public_id,
                "cancellable": quote.cancellable,
                "refund_fraction": str(quote.refund_fraction),
                "refund_amount": str(quote.refund_amount),
                "refund_vat": str(refund.vat),
                "refund_total": str(refund.customer_total),
                "currency": booking.currency,
                "reason": quote.reason,
                "cancellation_rules": services.policies.POLICY_TEXT,
                "refund_schedule": _schedule(
                    services.policies.refund_schedule(amount=booking.amount, start=booking.start)
                ),
            }
        )


class BookingCancelView(APIView):
    @extend_schema(operation_id="bookings_cancel", request=None, responses=docs.BookingObject)
    @idempotent
    def post(self, request: Request, booking_id: str) -> Response:
        booking = services.booking_cancel(organization=org_of(request), booking_id=booking_id)
        return Response(booking_object(_own_booking(request, booking.public_id)))


# ---------------------------------------------------------------- estimate before submitting


class PlacementEstimateSerializer(serializers.Serializer):
    gpu_flavor = serializers.CharField(max_length=40)
    gpu_count = serializers.IntegerField(min_value=1, max_value=100_000, default=1)
    estimated_duration_seconds = serializers.IntegerField(min_value=1, max_value=92 * 24 * 3600)
    residency = serializers.DictField(required=False, allow_null=True)


class PlacementEstimateView(APIView):
    """Before submitting a job: the pool it would run on, when it could start, what it would
    cost (GPU price x GPUs x duration, before VAT) and why. Writes nothing."""

    @extend_schema(
        operation_id="placement_estimate",
        request=PlacementEstimateSerializer,
        responses=docs.PlacementEstimateObject,
    )
    def post(self, request: Request) -> Response:
        data = _validated(PlacementEstimateSerializer, request.data)
        if selectors.flavor_by_slug(data["gpu_flavor"]) is None:
            known = ", ".join(f.slug for f in selectors.flavors()) or "none yet"
            raise InvalidInput(
                f"Unknown GPU flavor {data['gpu_flavor']!r}; known flavors: {known}.",
                param="gpu_flavor",
            )
        estimate = placement.job_estimate(
            organization=org_of(request),
            gpu_flavor=data["gpu_flavor"],
            gpu_count=data["gpu_count"],
            residency=policies.residency_parse(data.get("residency")),
            gpu_hours_per_gpu=Decimal(data["estimated_duration_seconds"]) / 3600,
        )
        return Response(
            {
                "object": "placement_estimate",
                "gpu_flavor": data["gpu_flavor"],
                "gpu_count": data["gpu_count"],
                "estimated_duration_seconds": data["estimated_duration_seconds"],
                "pool": estimate.pool.public_id if estimate.pool else None,
                "price_per_gpu_hour": str(estimate.price_per_gpu_hour)
                if estimate.price_per_gpu_hour is not None
                else None,
                "estimated_start": unix(estimate.estimated_start),
                "estimated_cost": str(estimate.estimated_cost)
                if estimate.estimated_cost is not None
                else None,
                "currency": "EUR",
                "reason": estimate.reason,
            }
        )


# ---------------------------------------------------------------- residency


class StrictBooleanField(serializers.BooleanField):
    """A JSON true or false only: the schema says boolean, so 0, 1 and "yes" are refused."""

    def to_internal_value(self, data: Any) -> bool:
        if not isinstance(data, bool):
            self.fail("invalid", input=data)
        return data


class ResidencySerializer(serializers.Serializer):
    eu_only = StrictBooleanField()
    # What capacity.policies.country_code accepts: two ASCII letters, ISO 3166-1 alpha-2.
    countries = serializers.ListField(
        child=serializers.RegexField(r"^[A-Za-z]{2}$"), required=False, default=list
    )


class ResidencyPolicyView(APIView):
    def _render(self, request: Request) -> dict[str, Any]:
        residency = selectors.residency_for_org(org_of(request))
        return {
            "object": "residency_policy",
            "eu_only": residency.eu_only,
            "countries": sorted(residency.countries),
            "description": residency.describe(),
        }

    @extend_schema(operation_id="residency_policy_retrieve", responses=docs.ResidencyObject)
    def get(self, request: Request) -> Response:
        return Response(self._render(request))

    @extend_schema(
        operation_id="residency_policy_update",
        request=ResidencySerializer,
        responses=docs.ResidencyObject,
    )
    def put(self, request: Request) -> Response:
        data = _validated(ResidencySerializer, request.data)
        services.residency_policy_set(
            organization=org_of(request), eu_only=data["eu_only"], countries=data["countries"]
        )
        return Response(self._render(request))
