"""Staff console: per-token prices per base model (add only: a new price is a new row) and the
read-only usage of fine-tuned models."""

from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.http import HttpRequest

from marketplace.inference.models import InferencePrice, InferenceUsage


@admin.register(InferencePrice)
class InferencePriceAdmin(admin.ModelAdmin):
    list_display = (
        "base_model",
        "price_per_million_prompt_tokens",
        "price_per_million_completion_tokens",
        "created_at",
        "created_by",
    )
    list_filter = ("base_model",)
    fields = (
        "base_model",
        "price_per_million_prompt_tokens",
        "price_per_million_completion_tokens",
    )

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return obj is None  # the add form only: a price in use never changes

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def save_model(
        self, request: HttpRequest, obj: InferencePrice, form: Any, change: bool
    ) -> None:
        obj.created_by = request.user  # type: ignore[assignment]
        super().save_model(request, obj, form, change)


@admin.register(InferenceUsage)
class InferenceUsageAdmin(admin.ModelAdmin):
    list_display = (
        "key",
        "organization",
        "model",
        "prompt_tokens",
        "completion_tokens",
        "amount",
        "net_charged",
        "vat_charged",
        "created_at",
    )
    list_filter = ("organization",)

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False
