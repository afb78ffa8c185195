"""Quotas (plans, per-organization overrides, their audit trail) and allocations.

An Allocation is what one admitted attempt holds: GPUs on a pool, counted against its
organization's quota until `released_at` is set, exactly once, by a conditional UPDATE.
"""

from __future__ import annotations

from decimal import Decimal

from django.conf import settings
from django.db import models
from django.db.models import Q
from django.utils import timezone

from marketplace.accounts.models import Organization
from marketplace.capacity.models import Booking, GpuFlavor, Pool
from marketplace.finetuning.models import FineTuningJob

# The quota fields a plan sets per flavor and an organization may override.
QUOTA_FIELDS = (
    "guaranteed_gpus",
    "max_gpus",
    "monthly_gpu_hours",
    "max_job_hours",
    "max_concurrent_jobs",
)


class Plan(models.Model):
    """A named set of per-flavor quota defaults; at most one plan is the default for everyone."""

    slug = models.SlugField(max_length=40, unique=True)
    name = models.CharField(max_length=100)
    is_default = models.BooleanField(
        default=False, help_text="Applies to organizations without a plan of their own."
    )
    weight = models.DecimalField(
        max_digits=6,
        decimal_places=2,
        default=Decimal("1"),
        help_text="Fair-share weight of organizations on this plan.",
    )
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["slug"]
        constraints = [
            models.UniqueConstraint(
                fields=["is_default"], condition=Q(is_default=True), name="plan_one_default"
            ),
            models.CheckConstraint(condition=Q(weight__gt=0), name="plan_weight_positive"),
        ]

    def __str__(self) -> str:
        return self.slug


class PlanFlavorQuota(models.Model):
    """A plan's defaults for one GPU flavor. A flavor without a row is not in the plan."""

    plan = models.ForeignKey(Plan, on_delete=models.CASCADE, related_name="flavor_quotas")
    flavor = models.ForeignKey(GpuFlavor, on_delete=models.PROTECT, related_name="+")
    guaranteed_gpus = models.PositiveIntegerField(default=0)
    max_gpus = models.PositiveIntegerField(default=0)
    monthly_gpu_hours = models.DecimalField(
        max_digits=12, decimal_places=2, null=True, blank=True, help_text="Empty: no budget cap."
    )
    max_job_hours = models.DecimalField(max_digits=8, decimal_places=2, default=Decimal("24"))
    max_concurrent_jobs = models.PositiveIntegerField(default=10)

    class Meta:
        ordering = ["plan_id", "flavor_id"]
        constraints = [
            models.UniqueConstraint(fields=["plan", "flavor"], name="planquota_unique_flavor"),
            models.CheckConstraint(
                condition=Q(guaranteed_gpus__lte=models.F("max_gpus")),
                name="planquota_guarantee_le_max",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.plan_id}/{self.flavor_id}"


class OrganizationQuota(models.Model):
    """An organization's plan and weight. Its row is the 'org quota' lock of admission."""

    organization = models.OneToOneField(
        Organization, on_delete=models.CASCADE, related_name="quota"
    )
    plan = models.ForeignKey(
        Plan, null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    weight = models.DecimalField(
        max_digits=6,
        decimal_places=2,
        null=True,
        blank=True,
        help_text="Empty: the plan's weight.",
    )
    updated_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["organization_id"]  # never a join: rows are locked FOR UPDATE
        constraints = [
            models.CheckConstraint(
                condition=Q(weight__isnull=True) | Q(weight__gt=0), name="orgquota_weight_positive"
            ),
        ]

    def __str__(self) -> str:
        return f"quota of {self.organization_id}"


class FlavorQuotaOverride(models.Model):
    """Staff overrides of the plan for one organization and flavor; an empty field keeps the plan's."""

    organization = models.ForeignKey(
        Organization, on_delete=models.CASCADE, related_name="quota_overrides"
    )
    flavor = models.ForeignKey(GpuFlavor, on_delete=models.PROTECT, related_name="+")
    guaranteed_gpus = models.PositiveIntegerField(null=True, blank=True)
    max_gpus = models.PositiveIntegerField(null=True, blank=True)
    monthly_gpu_hours = models.DecimalField(max_digits=12, decimal_places=2, null=True, blank=True)
    max_job_hours = models.DecimalField(max_digits=8, decimal_places=2, null=True, blank=True)
    max_concurrent_jobs = models.PositiveIntegerField(null=True, blank=True)
    # "unlimited" budget cannot be told apart from "keep the plan's" with NULL alone.
    budget_unlimited = models.BooleanField(default=False)
    updated_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["organization_id", "flavor_id"]
        constraints = [
            models.UniqueConstraint(
                fields=["organization", "flavor"], name="quotaoverride_unique_org_flavor"
            ),
        ]

    def __str__(self) -> str:
        return f"override {self.organization_id}/{self.flavor_id}"


class QuotaAuditEntry(models.Model):
    """Append-only: who changed which quota value, when, from what to what."""

    class Via(models.TextChoices):
        ADMIN = "admin", "Django admin"
        API = "api", "Staff API"
        SERVICE = "service", "Service call"

    changed_at = models.DateTimeField(default=timezone.now, db_index=True)
    changed_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    via = models.CharField(max_length=10, choices=Via.choices, default=Via.SERVICE)
    organization = models.ForeignKey(
        Organization, null=True, blank=True, on_delete=models.CASCADE, related_name="+"
    )
    plan = models.ForeignKey(
        Plan, null=True, blank=True, on_delete=models.CASCADE, related_name="+"
    )
    flavor = models.ForeignKey(
        GpuFlavor, null=True, blank=True, on_delete=models.CASCADE, related_name="+"
    )
    field = models.CharField(max_length=40)
    old_value = models.CharField(max_length=100, blank=True)
    new_value = models.CharField(max_length=100, blank=True)

    class Meta:
        ordering = ["-changed_at", "-id"]
        verbose_name_plural = "quota audit entries"

    def __str__(self) -> str:
        return f"{self.field}: {self.old_value} → {self.new_value}"


class Allocation(models.Model):
    """GPUs held by one admitted attempt of a job, until released (exactly once)."""

    class Kind(models.TextChoices):
        GUARANTEED = "guaranteed", "Within the guarantee"
        BOOKED = "booked", "On a booking"
        BORROWED = "borrowed", "Borrowed idle capacity (preemptible)"

    job = models.ForeignKey(FineTuningJob, on_delete=models.CASCADE, related_name="allocations")
    attempt_number = models.PositiveIntegerField()
    organization = models.ForeignKey(Organization, on_delete=models.CASCADE, related_name="+")
    flavor = models.ForeignKey(
        GpuFlavor, null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    pool = models.ForeignKey(
        Pool, null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    booking = models.ForeignKey(
        Booking, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    gpus = models.PositiveIntegerField()
    kind = models.CharField(max_length=12, choices=Kind.choices)
    priority = models.IntegerField(default=0)
    # Budget reserved at admission (gpus x max job hours); replaced by actual use on release.
    reserved_gpu_hours = models.DecimalField(max_digits=12, decimal_places=3)
    used_gpu_hours = models.DecimalField(max_digits=12, decimal_places=3, null=True, blank=True)
    # The quota this admission was checked against (quotas may change while work runs).
    max_gpus_at_admission = models.PositiveIntegerField(null=True, blank=True)
    guaranteed_gpus_at_admission = models.PositiveIntegerField(default=0)
    admitted_at = models.DateTimeField(default=timezone.now)
    expected_end = models.DateTimeField()
    preempt_requested_at = models.DateTimeField(null=True, blank=True)
    released_at = models.DateTimeField(null=True, blank=True)
    release_reason = models.CharField(max_length=60, blank=True)

    class Meta:
        ordering = ["-admitted_at", "-id"]
        constraints = [
            # A job holds at most one live allocation: the one of its current attempt.
            models.UniqueConstraint(
                fields=["job"],
                condition=Q(released_at__isnull=True),
                name="allocation_one_live_per_job",
            ),
            models.CheckConstraint(condition=Q(gpus__gte=1), name="allocation_gpus_positive"),
        ]
        indexes = [
            models.Index(
                fields=["organization", "flavor"],
                condition=Q(released_at__isnull=True),
                name="allocation_live_org_flavor",
            ),
            models.Index(
                fields=["pool"], condition=Q(released_at__isnull=True), name="allocation_live_pool"
            ),
            models.Index(fields=["organization", "admitted_at"], name="allocation_org_admitted"),
            models.Index(fields=["job", "attempt_number"], name="allocation_job_attempt"),
        ]

    def __str__(self) -> str:
        return f"{self.job_id}#a{self.attempt_number} {self.gpus}x{self.flavor_id}"
