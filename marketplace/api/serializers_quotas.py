"""Documented request and response shapes of the /v1 quota routes (OpenAPI only; views_quotas
builds the bodies). tests/quotas/test_api_schema.py checks responses against these field for
field, so keep them in step.

GPU-hours and weights are JSON numbers here (the views turn the stored decimals into floats),
unlike billing's amounts, which are decimal strings.
"""

from __future__ import annotations

from rest_framework import serializers

from marketplace.api.schema import const, shape, unix_seconds
from marketplace.quotas.models import QuotaAuditEntry

MAX_QUOTA_GPUS = 100_000  # services.changes._clean: whole numbers from 0 to 100000
MAX_QUOTA_HOURS = 1e9


def _quota_fields() -> dict[str, serializers.Field]:
    """One organization's effective quota and current use for one GPU flavor."""
    return {
        "flavor": serializers.CharField(help_text="The GPU flavor's slug."),
        "flavor_name": serializers.CharField(),
        "guaranteed_gpus": serializers.IntegerField(
            help_text="GPUs the organization can always get (not preemptible)."
        ),
        "max_gpus": serializers.IntegerField(
            allow_null=True, help_text="Most GPUs at once; null: no cap but capacity."
        ),
        "used_gpus": serializers.IntegerField(help_text="GPUs held by live jobs now."),
        "used_guaranteed_gpus": serializers.IntegerField(),
        "borrowed_gpus": serializers.IntegerField(
            help_text="GPUs beyond the guarantee, borrowed from idle capacity (preemptible)."
        ),
        "booked_gpus": serializers.IntegerField(help_text="GPUs used on the org's bookings."),
        "running_jobs": serializers.IntegerField(),
        "queued_jobs": serializers.IntegerField(),
        "max_concurrent_jobs": serializers.IntegerField(
            allow_null=True, help_text="Null: no limit on live jobs."
        ),
        "max_job_hours": serializers.FloatField(help_text="Longest run of one job, in hours."),
        "monthly_gpu_hours": serializers.FloatField(
            allow_null=True, help_text="The month's GPU-hour budget; null: no budget cap."
        ),
        "gpu_hours_used": serializers.FloatField(
            help_text="This month: finished attempts' GPU-hours plus what running ones reserve "
            "(GPUs x max job hours)."
        ),
        "budget_resets_at": unix_seconds(help_text="Start of next month (UTC), Unix seconds."),
        "source": serializers.CharField(
            help_text='Where the values come from, e.g. "plan pro + override".'
        ),
    }


QuotaValues = shape("QuotaValues", _quota_fields())
QuotaObject = shape("QuotaObject", {"object": const("quota"), **_quota_fields()})


class UsageObject(serializers.Serializer):
    object = const("usage")
    flavor = serializers.CharField()
    gpu_hours_used = serializers.FloatField()
    monthly_gpu_hours = serializers.FloatField(allow_null=True, help_text="Null: no budget cap.")
    used_gpus = serializers.IntegerField()
    running_jobs = serializers.IntegerField()
    queued_jobs = serializers.IntegerField()


class OrganizationQuotasObject(serializers.Serializer):
    object = const("organization.quotas")
    organization_id = serializers.CharField()
    organization = serializers.CharField(help_text="The organization's slug.")
    weight = serializers.FloatField(help_text="Fair-share weight (its own, or its plan's).")
    plan = serializers.CharField(
        allow_null=True, help_text="The plan's slug (its own or the default); null: none."
    )
    flavors = QuotaValues(many=True)


class QueuedJobEntry(serializers.Serializer):
    position = serializers.IntegerField(
        help_text="Place in the whole queue, in the order the next admission pass considers jobs."
    )
    job_id = serializers.CharField()
    organization = serializers.CharField(help_text="The organization's slug.")
    gpus = serializers.IntegerField()
    priority = serializers.IntegerField()
    created_at = unix_seconds()
    pending_reason = serializers.CharField(allow_blank=True)
    estimated_start = unix_seconds(allow_null=True, help_text="Null: no estimate yet.")


class PoolQueueObject(serializers.Serializer):
    object = const("pool.queue")
    pool = serializers.CharField(help_text="The pool's id.")
    name = serializers.CharField()
    flavor = serializers.CharField()
    region = serializers.CharField()
    country = serializers.CharField()
    capacity_gpus = serializers.IntegerField(help_text="GPUs in service (less maintenance).")
    used_gpus = serializers.IntegerField()
    booked_unused_gpus = serializers.IntegerField()
    free_gpus = serializers.IntegerField()
    queued_jobs = serializers.IntegerField(help_text="Queued jobs that could run on this pool.")
    queue = QueuedJobEntry(many=True, help_text="The first 50 of them, in order.")


class QuotaAuditEntryObject(serializers.Serializer):
    id = serializers.CharField(help_text="Also the `after` cursor of the list.")
    object = const("quota.audit_entry")
    created_at = unix_seconds(help_text="When the value was changed.")
    changed_by = serializers.CharField(allow_null=True, help_text="Username; null: a service.")
    via = serializers.ChoiceField(choices=QuotaAuditEntry.Via.values)
    organization = serializers.CharField(allow_null=True, help_text="The organization's slug.")
    plan = serializers.CharField(allow_null=True, help_text="The plan's slug, for plan changes.")
    flavor = serializers.CharField(allow_null=True)
    field = serializers.CharField()
    old_value = serializers.CharField(allow_blank=True)
    new_value = serializers.CharField(allow_blank=True)


class OrganizationPlanObject(serializers.Serializer):
    object = const("organization.plan")
    organization_id = serializers.CharField()
    plan = serializers.CharField(allow_null=True, help_text="Null: the default plan.")
    weight = serializers.FloatField(allow_null=True, help_text="Null: the plan's weight.")


def _plain_list(
    item: type[serializers.Serializer], name: str, **extra: serializers.Field
) -> type[serializers.Serializer]:
    """`{"object": "list", **extra, "data": [...], "has_more": false}`: the whole list at once
    (no cursor, so no first_id / last_id)."""
    return shape(
        name,
        {
            "object": const("list"),
            **extra,
            "data": item(many=True),
            "has_more": serializers.BooleanField(),
        },
    )


QuotaList = _plain_list(QuotaObject, "QuotaList")
UsageList = _plain_list(
    UsageObject,
    "UsageList",
    period_start=unix_seconds(help_text="This month's start (UTC)."),
    period_end=unix_seconds(help_text="Next month's start (UTC)."),
)
OrganizationQuotasList = _plain_list(OrganizationQuotasObject, "OrganizationQuotasList")
PoolQueueList = _plain_list(PoolQueueObject, "PoolQueueList")
QuotaAuditEntryList = shape(
    "QuotaAuditEntryList",
    {
        "object": const("list"),
        "data": QuotaAuditEntryObject(many=True),
        "has_more": serializers.BooleanField(),
        "first_id": serializers.CharField(allow_null=True),
        "last_id": serializers.CharField(allow_null=True),
    },
)


# ---------------------------------------------------------------- request bodies


def _gpus(help_text: str) -> serializers.IntegerField:
    return serializers.IntegerField(
        required=False,
        allow_null=True,
        min_value=0,
        max_value=MAX_QUOTA_GPUS,
        help_text=f"{help_text} Null: back to the plan's value.",
    )


class QuotaOverride(serializers.Serializer):
    """Only the fields sent change (at least one); every changed value is audited."""

    guaranteed_gpus = _gpus("GPUs always available; at most max_gpus.")
    max_gpus = _gpus("Most GPUs at once.")
    max_concurrent_jobs = _gpus("Most live jobs at once.")
    monthly_gpu_hours = serializers.FloatField(
        required=False,
        allow_null=True,
        min_value=0,
        max_value=MAX_QUOTA_HOURS,
        help_text="The month's GPU-hour budget (kept to 2 decimals). Null: back to the plan's.",
    )
    max_job_hours = serializers.FloatField(
        required=False,
        allow_null=True,
        min_value=0.01,
        max_value=MAX_QUOTA_HOURS,
        help_text="Longest run of one job, more than 0 hours. Null: back to the plan's.",
    )
    budget_unlimited = serializers.BooleanField(
        required=False,
        allow_null=True,
        help_text="true: no budget cap whatever the plan says; false or null: the budget applies.",
    )


class OrganizationPlan(serializers.Serializer):
    plan = serializers.CharField(
        required=False, allow_null=True, allow_blank=True, help_text="A plan's slug; null: default."
    )
    weight = serializers.FloatField(
        required=False,
        allow_null=True,
        min_value=0.01,
        max_value=9999.99,
        help_text="Fair-share weight (kept to 2 decimals); null: the plan's.",
    )
