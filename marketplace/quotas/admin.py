"""Django admin for quotas. Saves go through the audited services (never signals)."""

from __future__ import annotations

from typing import Any

from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest

from marketplace.accounts.models import User
from marketplace.errors import InvalidInput
from marketplace.quotas import services
from marketplace.quotas.models import (
    QUOTA_FIELDS,
    Allocation,
    FlavorQuotaOverride,
    OrganizationQuota,
    Plan,
    PlanFlavorQuota,
    QuotaAuditEntry,
)

VIA = QuotaAuditEntry.Via.ADMIN


def _actor(request: HttpRequest) -> User | None:
    return request.user if isinstance(request.user, User) else None


def _report(admin_view: admin.ModelAdmin, request: HttpRequest, error: InvalidInput) -> None:
    admin_view.message_user(request, f"Not saved: {error.message}", level=messages.ERROR)


@admin.register(Plan)
class _NoDeleteAdmin(admin.ModelAdmin):
    """Deleting these rows would change quotas without an audit entry: change values instead
    (a plan's flavor row to max_gpus 0; an organization back to the default plan)."""

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


class PlanAdmin(_NoDeleteAdmin):
    list_display = ("slug", "name", "is_default", "weight")

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> tuple[str, ...]:
        return ("slug",) if obj is not None else ()

    def save_model(self, request: HttpRequest, obj: Plan, form: Any, change: bool) -> None:
        try:
            if change:
                services.plan_update(
                    plan=obj,
                    name=obj.name,
                    weight=obj.weight,
                    is_default=obj.is_default,
                    actor=_actor(request),
                    via=VIA,
                )
            else:
                created = services.plan_create(
                    slug=obj.slug,
                    name=obj.name,
                    weight=obj.weight,
                    is_default=obj.is_default,
                    actor=_actor(request),
                    via=VIA,
                )
                obj.pk = created.pk
        except InvalidInput as e:
            _report(self, request, e)


@admin.register(PlanFlavorQuota)
class PlanFlavorQuotaAdmin(_NoDeleteAdmin):
    list_display = ("plan", "flavor", *QUOTA_FIELDS)
    list_filter = ("plan", "flavor")

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> tuple[str, ...]:
        return ("plan", "flavor") if obj is not None else ()  # a change edits values only

    def save_model(
        self, request: HttpRequest, obj: PlanFlavorQuota, form: Any, change: bool
    ) -> None:
        try:
            row = services.plan_flavor_quota_set(
                plan=obj.plan,
                flavor=obj.flavor,
                values={field: getattr(obj, field) for field in QUOTA_FIELDS},
                actor=_actor(request),
                via=VIA,
            )
            obj.pk = row.pk
        except InvalidInput as e:
            _report(self, request, e)


@admin.register(OrganizationQuota)
class OrganizationQuotaAdmin(_NoDeleteAdmin):
    list_display = ("organization", "plan", "weight", "updated_at")
    search_fields = ("organization__slug",)
    fields = ("organization", "plan", "weight")

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> tuple[str, ...]:
        return ("organization",) if obj is not None else ()

    def save_model(
        self, request: HttpRequest, obj: OrganizationQuota, form: Any, change: bool
    ) -> None:
        try:
            row = services.org_plan_set(
                organization=obj.organization,
                plan=obj.plan,
                weight=obj.weight,
                actor=_actor(request),
                via=VIA,
            )
            obj.pk = row.pk
        except InvalidInput as e:
            _report(self, request, e)


@admin.register(FlavorQuotaOverride)
class FlavorQuotaOverrideAdmin(admin.ModelAdmin):
    list_display = ("organization", "flavor", *QUOTA_FIELDS, "budget_unlimited")
    search_fields = ("organization__slug",)
    fields = ("organization", "flavor", *QUOTA_FIELDS, "budget_unlimited")

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> tuple[str, ...]:
        return ("organization", "flavor") if obj is not None else ()

    def save_model(
        self, request: HttpRequest, obj: FlavorQuotaOverride, form: Any, change: bool
    ) -> None:
        values = {field: getattr(obj, field) for field in (*QUOTA_FIELDS, "budget_unlimited")}
        try:
            row = services.org_quota_override_set(
                organization=obj.organization,
                flavor=obj.flavor,
                values=values,
                actor=_actor(request),
                via=VIA,
            )
            obj.pk = row.pk
        except InvalidInput as e:
            _report(self, request, e)

    def delete_model(self, request: HttpRequest, obj: FlavorQuotaOverride) -> None:
        """Back to the plan's values, audited, then drop the empty override."""
        services.org_quota_override_set(
            organization=obj.organization,
            flavor=obj.flavor,
            values={**dict.fromkeys(QUOTA_FIELDS), "budget_unlimited": False},
            actor=_actor(request),
            via=VIA,
        )
        FlavorQuotaOverride.objects.filter(pk=obj.pk).delete()

    def delete_queryset(
        self, request: HttpRequest, queryset: QuerySet[FlavorQuotaOverride]
    ) -> None:
        """The list's bulk delete action: each one audited like a single delete."""
        for override in queryset.select_related("organization", "flavor"):
            self.delete_model(request, override)


class ReadOnlyAdmin(admin.ModelAdmin):
    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(QuotaAuditEntry)
class QuotaAuditEntryAdmin(ReadOnlyAdmin):
    list_display = (
        "changed_at",
        "changed_by",
        "via",
        "organization",
        "plan",
        "flavor",
        "field",
        "old_value",
        "new_value",
    )
    list_filter = ("via", "field")
    search_fields = ("organization__slug", "plan__slug")


@admin.register(Allocation)
class AllocationAdmin(ReadOnlyAdmin):
    list_display = (
        "job",
        "attempt_number",
        "organization",
        "flavor",
        "pool",
        "gpus",
        "kind",
        "admitted_at",
        "preempt_requested_at",
        "released_at",
        "release_reason",
    )
    list_filter = ("kind", "flavor")
    search_fields = ("job__id", "organization__slug")
