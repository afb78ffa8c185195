"""Django admin for accounts: users, organizations, memberships, API keys (hashes only)."""

from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.contrib.auth.admin import UserAdmin

from marketplace.accounts.models import (
    ApiKey,
    Invitation,
    Membership,
    Organization,
    RoleChange,
    User,
)
from marketplace.accounts.services import membership_remove, membership_set


class MembershipInline(admin.TabularInline):
    model = Membership
    extra = 0
    autocomplete_fields = ["user"]


@admin.register(User)
class PartageUserAdmin(UserAdmin):
    search_fields = ["username", "email"]


@admin.register(Organization)
class OrganizationAdmin(admin.ModelAdmin):
    list_display = ["slug", "name", "kind", "country", "vat_id", "created_at"]
    list_filter = ["kind", "country"]
    search_fields = ["slug", "name", "legal_name", "vat_id"]
    readonly_fields = ["public_id", "created_at"]
    inlines = [MembershipInline]

    def save_formset(self, request: Any, form: Any, formset: Any, change: bool) -> None:
        """Memberships change through the services, so that every role change is audited."""
        if formset.model is not Membership:
            super().save_formset(request, form, formset, change)
            return
        changed = formset.save(commit=False)
        for membership in formset.deleted_objects:
            membership_remove(
                organization=form.instance,
                user=membership.user,
                changed_by=request.user,
                via="django_admin",
            )
        for membership in changed:
            membership_set(
                organization=form.instance,
                user=membership.user,
                role=membership.role,
                changed_by=request.user,
                via="django_admin",
            )


@admin.register(ApiKey)
class ApiKeyAdmin(admin.ModelAdmin):
    list_display = [
        "prefix",
        "name",
        "organization",
        "scopes",
        "created_at",
        "last_used_at",
        "revoked_at",
    ]
    search_fields = ["prefix", "name", "organization__slug"]
    # The hash is never shown and keys are never created here: the secret must be shown once.
    exclude = ["hashed_secret"]
    readonly_fields = ["prefix", "organization", "created_by", "created_at", "last_used_at"]

    def has_add_permission(self, request: object) -> bool:
        return False


@admin.register(RoleChange)
class RoleChangeAdmin(admin.ModelAdmin):
    """The audit of role changes: read-only, as an audit must be."""

    list_display = [
        "created_at",
        "organization",
        "username",
        "old_role",
        "new_role",
        "changed_by",
        "via",
    ]
    list_filter = ["via", "new_role"]
    search_fields = ["username", "organization__slug"]

    def has_add_permission(self, request: object) -> bool:
        return False

    def has_change_permission(self, request: object, obj: object = None) -> bool:
        return False

    def has_delete_permission(self, request: object, obj: object = None) -> bool:
        return False


@admin.register(Invitation)
class InvitationAdmin(admin.ModelAdmin):
    list_display = [
        "organization",
        "role",
        "created_by",
        "created_at",
        "expires_at",
        "accepted_by",
        "revoked_at",
    ]
    exclude = ["token_hash"]
    readonly_fields = [
        "organization",
        "role",
        "created_by",
        "created_at",
        "accepted_at",
        "accepted_by",
    ]

    def has_add_permission(self, request: object) -> bool:
        return False
