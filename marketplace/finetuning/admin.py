"""Django admin for fine-tuning: raw data, read-only (state changes go through the services)."""

from __future__ import annotations

from typing import Any

from django.contrib import admin

from marketplace.finetuning.models import Checkpoint, File, FineTuningJob, JobAttempt, JobEvent


class ReadOnlyAdmin(admin.ModelAdmin):
    def has_add_permission(self, request: Any) -> bool:
        return False

    def has_change_permission(self, request: Any, obj: Any = None) -> bool:
        return False


@admin.register(File)
class FileAdmin(ReadOnlyAdmin):
    list_display = [
        "id",
        "organization",
        "purpose",
        "bytes",
        "line_count",
        "created_at",
    ]
    list_filter = ["purpose", "status"]
    # Names and messages are the customer's content: lists show metadata only, and opening one
    # object asks staff for a reason (marketplace/privacy/admin.py records it).
    search_fields = ["id", "sha256", "organization__slug"]


ATTEMPT_FIELDS: list[Any] = [
    "number",
    "executor",
    "name",
    "status",
    "exit_code",
    "training_started_at",
    "ended_at",
    "gpu_seconds",
]


class AttemptInline(admin.TabularInline):
    model = JobAttempt
    extra = 0
    fields = ATTEMPT_FIELDS
    readonly_fields = ATTEMPT_FIELDS
    can_delete = False


@admin.register(FineTuningJob)
class FineTuningJobAdmin(ReadOnlyAdmin):
    list_display = [
        "id",
        "organization",
        "model",
        "status",
        "failure_class",
        "gpu_flavor",
        "gpu_count",
        "created_at",
    ]
    list_filter = ["status", "failure_class", "gpu_flavor"]
    search_fields = ["id", "organization__slug", "model"]
    inlines = [AttemptInline]


@admin.register(JobEvent)
class JobEventAdmin(ReadOnlyAdmin):
    list_display = ["job", "seq", "level", "type", "created_at"]
    list_filter = ["level", "type"]
    search_fields = ["job__id"]


@admin.register(Checkpoint)
class CheckpointAdmin(ReadOnlyAdmin):
    list_display = ["job", "step", "bytes", "created_at"]
    search_fields = ["job__id"]
