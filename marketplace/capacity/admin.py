"""Django admin for capacity: staff approve providers and pools, attach clusters, see bookings.

Approval actions call the services, so the admin enforces the same rules as everything else.
"""

from __future__ import annotations

from typing import Any

from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest

from marketplace.accounts.models import User
from marketplace.capacity import services
from marketplace.capacity.models import (
    Booking,
    ClusterConnection,
    GpuFlavor,
    MaintenanceWindow,
    Placement,
    Pool,
    ProviderProfile,
    ResidencyPolicy,
)
from marketplace.errors import PartageError


def _each(
    modeladmin: admin.ModelAdmin,
    request: HttpRequest,
    queryset: QuerySet[Any],
    apply: Any,
    verb: str,
) -> None:
    """Apply a service to each selected row; report successes and each refusal with its reason."""
    done = 0
    for obj in queryset:
        try:
            apply(obj)
            done += 1
        except PartageError as e:
            modeladmin.message_user(request, f"{obj}: {e.message}", level=messages.ERROR)
    if done:
        modeladmin.message_user(request, f"{verb} {done} item(s).", level=messages.SUCCESS)


def _staff(request: HttpRequest) -> User:
    assert isinstance(request.user, User)  # the admin only lets staff users in
    return request.user


@admin.register(GpuFlavor)
class GpuFlavorAdmin(admin.ModelAdmin):
    list_display = ["slug", "model_name", "memory_gb", "interconnect", "gpu_resource_name"]
    search_fields = ["slug", "model_name"]


@admin.register(ProviderProfile)
class ProviderProfileAdmin(admin.ModelAdmin):
    list_display = [
        "organization",
        "legal_name",
        "country",
        "vat_id",
        "approval_status",
        "approved_by",
        "approved_at",
    ]
    list_filter = ["approval_status"]
    search_fields = ["organization__slug", "organization__legal_name", "organization__vat_id"]
    readonly_fields = ["approval_status", "approved_by", "approved_at", "created_at"]
    list_select_related = ["organization", "approved_by"]
    actions = ["approve", "reject"]

    @admin.display(description="Legal name")
    def legal_name(self, profile: ProviderProfile) -> str:
        return profile.organization.legal_name

    @admin.display(description="Country")
    def country(self, profile: ProviderProfile) -> str:
        return profile.organization.country

    @admin.display(description="VAT id")
    def vat_id(self, profile: ProviderProfile) -> str:
        return profile.organization.vat_id

    @admin.action(description="Approve selected providers")
    def approve(self, request: HttpRequest, queryset: QuerySet[ProviderProfile]) -> None:
        _each(
            self,
            request,
            queryset,
            lambda p: services.provider_approve(organization=p.organization, by=_staff(request)),
            "Approved",
        )

    @admin.action(description="Reject selected providers")
    def reject(self, request: HttpRequest, queryset: QuerySet[ProviderProfile]) -> None:
        _each(
            self,
            request,
            queryset,
            lambda p: services.provider_reject(organization=p.organization, by=_staff(request)),
            "Rejected",
        )


@admin.register(ClusterConnection)
class ClusterConnectionAdmin(admin.ModelAdmin):
    list_display = ["name", "kind", "namespace", "credentials_ref", "provider"]
    search_fields = ["name"]


class MaintenanceInline(admin.TabularInline):
    model = MaintenanceWindow
    extra = 0
    fields = ["start", "end", "gpu_count", "reason"]
    # Created through the service, which checks bookings.
    readonly_fields = ["start", "end", "gpu_count", "reason"]

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(Pool)
class PoolAdmin(admin.ModelAdmin):
    list_display = [
        "public_id",
        "name",
        "provider",
        "flavor",
        "gpu_count",
        "country",
        "region",
        "price_per_gpu_hour",
        "status",
        "cluster",
    ]
    list_filter = ["status", "flavor", "country"]
    search_fields = ["public_id", "name", "provider__slug"]
    list_select_related = ["provider", "flavor", "cluster"]
    readonly_fields = [
        "public_id",
        "status",
        "approved_by",
        "approved_at",
        "created_at",
        "updated_at",
    ]
    inlines = [MaintenanceInline]
    actions = ["approve", "reject", "retire"]

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> list[str]:
        # A saved pool's size changes only through pool_update (PATCH /v1/pools/{id}), which
        # locks the pool and refuses to shrink it below its bookings; its flavor and provider
        # never change (bookings and placements refer to them).
        fixed = ["provider", "flavor", "gpu_count"] if obj is not None else []
        return [*self.readonly_fields, *fixed]

    @admin.action(description="Approve selected pools (needs an approved provider and a cluster)")
    def approve(self, request: HttpRequest, queryset: QuerySet[Pool]) -> None:
        _each(
            self,
            request,
            queryset,
            lambda p: services.pool_approve(pool=p, by=_staff(request)),
            "Approved",
        )

    @admin.action(description="Reject selected pending pools")
    def reject(self, request: HttpRequest, queryset: QuerySet[Pool]) -> None:
        _each(
            self,
            request,
            queryset,
            lambda p: services.pool_reject(pool=p, by=_staff(request)),
            "Rejected",
        )

    @admin.action(description="Retire selected pools (no confirmed bookings ahead)")
    def retire(self, request: HttpRequest, queryset: QuerySet[Pool]) -> None:
        _each(self, request, queryset, lambda p: services.pool_retire(pool=p), "Retired")


@admin.register(Booking)
class BookingAdmin(admin.ModelAdmin):
    list_display = [
        "public_id",
        "organization",
        "pool",
        "gpu_count",
        "start",
        "end",
        "status",
        "amount",
        "refund_amount",
    ]
    list_filter = ["status"]
    search_fields = ["public_id", "organization__slug", "pool__public_id"]
    list_select_related = ["organization", "pool"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False  # bookings go through booking_create, which checks capacity

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(Placement)
class PlacementAdmin(admin.ModelAdmin):
    list_display = ["job", "pool", "booking", "gpu_count", "price_per_gpu_hour", "decided_at"]
    search_fields = ["job__id", "pool__public_id"]
    list_select_related = ["job", "pool", "booking"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(ResidencyPolicy)
class ResidencyPolicyAdmin(admin.ModelAdmin):
    list_display = ["organization", "eu_only", "countries", "updated_at"]
    search_fields = ["organization__slug"]
