"""Documented response shapes of the /v1 capacity routes (OpenAPI only; views_capacity builds
the bodies). The schemathesis test checks responses against these, so keep them in step."""

from __future__ import annotations

from rest_framework import serializers

from marketplace.api.schema import const, list_of
from marketplace.api.serializers_billing import BalanceCoverageObject


class FlavorObject(serializers.Serializer):
    id = serializers.CharField()
    object = const("gpu_flavor")
    model = serializers.CharField()
    memory_gb = serializers.IntegerField()
    interconnect = serializers.ChoiceField(choices=["pcie", "nvlink", "sxm"])


class ProviderRef(serializers.Serializer):
    id = serializers.CharField()
    name = serializers.CharField()


class OfferObject(serializers.Serializer):
    id = serializers.CharField()
    object = const("offer")
    provider = ProviderRef()
    flavor = FlavorObject()
    gpu_count = serializers.IntegerField()
    free_gpus = serializers.IntegerField(help_text="Free for on-demand work at the asked instant.")
    region = serializers.CharField()
    country = serializers.CharField()
    certifications = serializers.ListField(child=serializers.CharField())
    price_per_gpu_hour = serializers.CharField(help_text="Decimal EUR, 4 places.")
    currency = serializers.CharField()


class PoolObject(serializers.Serializer):
    id = serializers.CharField()
    object = const("pool")
    created_at = serializers.IntegerField()
    name = serializers.CharField()
    flavor = FlavorObject()
    gpu_count = serializers.IntegerField()
    region = serializers.CharField()
    country = serializers.CharField()
    certifications = serializers.ListField(child=serializers.CharField())
    price_per_gpu_hour = serializers.CharField()
    currency = serializers.CharField()
    status = serializers.ChoiceField(
        choices=["pending_approval", "active", "maintenance", "rejected", "retiring", "retired"]
    )
    approved_at = serializers.IntegerField(allow_null=True)
    review_note = serializers.CharField(allow_null=True)
    cluster = serializers.CharField(allow_null=True)
    node_selector = serializers.DictField(child=serializers.CharField())
    tolerations = serializers.ListField(child=serializers.JSONField())


class MaintenanceObject(serializers.Serializer):
    id = serializers.IntegerField()
    object = const("maintenance_window")
    start = serializers.IntegerField()
    end = serializers.IntegerField()
    gpu_count = serializers.IntegerField(allow_null=True)
    reason = serializers.CharField(allow_blank=True)


class BookingObject(serializers.Serializer):
    id = serializers.CharField()
    object = const("booking")
    created_at = serializers.IntegerField()
    pool = serializers.CharField()
    flavor = serializers.CharField()
    gpus = serializers.IntegerField()
    start = serializers.IntegerField()
    end = serializers.IntegerField()
    status = serializers.ChoiceField(choices=["confirmed", "cancelled"])
    price_per_gpu_hour = serializers.CharField()
    amount = serializers.CharField(
        help_text="Decimal EUR before VAT: GPUs x window hours x price, half-even to the cent."
    )
    vat = serializers.CharField(
        help_text="Decimal EUR: the VAT charged on `amount` when the booking was confirmed "
        "(the organization's VAT treatment; 0.00 under reverse charge or outside the EU)."
    )
    total = serializers.CharField(
        help_text="Decimal EUR: amount + vat, what the prepaid balance was charged."
    )
    currency = serializers.CharField()
    cancellation_policy = serializers.CharField()
    cancelled_at = serializers.IntegerField(allow_null=True)
    refund_fraction = serializers.CharField(allow_null=True)
    refund_amount = serializers.CharField(
        allow_null=True, help_text="Decimal EUR before VAT refunded; null unless cancelled."
    )
    refund_vat = serializers.CharField(
        allow_null=True,
        help_text="Decimal EUR: the VAT given back with the refund; null unless cancelled.",
    )
    refund_total = serializers.CharField(
        allow_null=True,
        help_text="Decimal EUR: refund_amount + refund_vat, credited back to the prepaid "
        "balance; null unless cancelled.",
    )


class RefundRow(serializers.Serializer):
    cancel_before = serializers.IntegerField()
    refund_fraction = serializers.CharField()
    refund_amount = serializers.CharField()


class WindowRef(serializers.Serializer):
    pool = serializers.CharField()
    start = serializers.IntegerField()
    end = serializers.IntegerField()


class BookingQuoteObject(serializers.Serializer):
    object = const("booking.quote")
    fits = serializers.BooleanField()
    pool = serializers.CharField(allow_null=True)
    gpus = serializers.IntegerField()
    start = serializers.IntegerField()
    end = serializers.IntegerField()
    price_per_gpu_hour = serializers.CharField(allow_null=True)
    amount = serializers.CharField(
        allow_null=True, help_text="Decimal EUR before VAT; null when no pool is priced."
    )
    vat = serializers.CharField(
        allow_null=True,
        help_text="Decimal EUR: the VAT that confirming charges on `amount` (the "
        "organization's VAT treatment); null with amount.",
    )
    total = serializers.CharField(
        allow_null=True,
        help_text="Decimal EUR: amount + vat, what confirming charges the prepaid balance; "
        "null with amount.",
    )
    currency = serializers.CharField()
    cancellation_policy = serializers.CharField()
    cancellation_rules = serializers.CharField()
    refund_schedule = RefundRow(many=True)
    earliest = WindowRef(allow_null=True)
    balance = BalanceCoverageObject(
        allow_null=True,
        help_text="Whether the prepaid balance covers `total`, charged on confirming, and the "
        "shortfall in EUR; null with amount. Confirming with a shortfall fails with "
        "insufficient_funds.",
    )


class CancellationQuoteObject(serializers.Serializer):
    object = const("booking.cancellation_quote")
    booking = serializers.CharField()
    cancellable = serializers.BooleanField()
    refund_fraction = serializers.CharField()
    refund_amount = serializers.CharField(
        help_text="Decimal EUR before VAT that cancelling now refunds."
    )
    refund_vat = serializers.CharField(
        help_text="Decimal EUR: the VAT given back with it (at the rate the booking was "
        "charged; the cumulative rounding rule, so a full refund returns all the VAT charged)."
    )
    refund_total = serializers.CharField(
        help_text="Decimal EUR: refund_amount + refund_vat, credited back to the prepaid balance."
    )
    currency = serializers.CharField()
    reason = serializers.CharField()
    cancellation_rules = serializers.CharField()
    refund_schedule = RefundRow(many=True)


class PlacementEstimateObject(serializers.Serializer):
    object = const("placement_estimate")
    gpu_flavor = serializers.CharField()
    gpu_count = serializers.IntegerField()
    estimated_duration_seconds = serializers.IntegerField()
    pool = serializers.CharField(allow_null=True, help_text="Null when no pool can take the job.")
    price_per_gpu_hour = serializers.CharField(allow_null=True)
    estimated_start = serializers.IntegerField(
        allow_null=True, help_text="Unix seconds; null when no pool could ever take the job."
    )
    estimated_cost = serializers.CharField(
        allow_null=True, help_text="GPU price x GPUs x duration, EUR before VAT."
    )
    currency = serializers.CharField()
    reason = serializers.CharField()


class ResidencyObject(serializers.Serializer):
    object = const("residency_policy")
    eu_only = serializers.BooleanField()
    countries = serializers.ListField(child=serializers.CharField())
    description = serializers.CharField()


FlavorList = list_of(FlavorObject, "GpuFlavorList")
OfferList = list_of(OfferObject, "OfferList")
PoolList = list_of(PoolObject, "PoolList")
MaintenanceList = list_of(MaintenanceObject, "MaintenanceWindowList")
BookingList = list_of(BookingObject, "BookingList")
