"""Data protection tables: each organization's retention choice, its data exports, the erasure of
an organization (with its grace period), and the record of staff access to customer content.

What these promise, and for how long anything is kept, is written in docs/data-protection.md.
"""

from __future__ import annotations

from django.conf import settings
from django.db import models
from django.utils import timezone

from marketplace.accounts.models import Organization


class OrganizationPrivacy(models.Model):
    """An organization's data-protection choices. No row: the platform defaults."""

    organization = models.OneToOneField(
        Organization, on_delete=models.CASCADE, related_name="privacy"
    )
    # Days training files and checkpoints are kept after the last job that used them ended.
    # Empty: PARTAGE_RETENTION_DEFAULT_DAYS. Never above PARTAGE_RETENTION_MAX_DAYS.
    retention_days = models.PositiveIntegerField(null=True, blank=True)
    updated_at = models.DateTimeField(default=timezone.now)

    class Meta:
        verbose_name_plural = "organization privacy settings"

    def __str__(self) -> str:
        return f"privacy of {self.organization_id}"


class DataExport(models.Model):
    """One archive of everything an organization has with Partage, downloadable for a while."""

    class Status(models.TextChoices):
        PENDING = "pending"
        BUILDING = "building"
        READY = "ready"
        FAILED = "failed"
        EXPIRED = "expired"

    public_id = models.CharField(max_length=40, unique=True, editable=False)
    organization = models.ForeignKey(
        Organization, on_delete=models.CASCADE, related_name="data_exports"
    )
    requested_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.PENDING)
    archive = models.FileField(upload_to="exports/", max_length=300, blank=True)
    bytes = models.BigIntegerField(default=0)
    sha256 = models.CharField(max_length=64, blank=True)
    object_count = models.PositiveIntegerField(default=0)
    error = models.TextField(blank=True)
    created_at = models.DateTimeField(default=timezone.now, db_index=True)
    ready_at = models.DateTimeField(null=True, blank=True)
    expires_at = models.DateTimeField(null=True, blank=True, db_index=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [models.Index(fields=["organization", "-created_at"], name="export_org_created")]

    def __str__(self) -> str:
        return self.public_id


class OrganizationErasure(models.Model):
    """An owner asked to delete the organization: erased at `erase_after` unless cancelled.

    The row outlives the erasure (with the pseudonym only): it is the proof that it happened.
    """

    class Status(models.TextChoices):
        SCHEDULED = "scheduled"
        CANCELLED = "cancelled"
        ERASED = "erased"

    organization = models.ForeignKey(
        Organization, on_delete=models.PROTECT, related_name="erasures"
    )
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.SCHEDULED)
    requested_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    requested_at = models.DateTimeField(default=timezone.now)
    erase_after = models.DateTimeField(db_index=True)
    cancelled_at = models.DateTimeField(null=True, blank=True)
    erased_at = models.DateTimeField(null=True, blank=True)
    pseudonym = models.CharField(max_length=40, blank=True)
    # What was removed: {"files": n, "bytes": n, "jobs": n, ...}
    report = models.JSONField(default=dict, blank=True)

    class Meta:
        ordering = ["-requested_at", "-id"]
        constraints = [
            models.UniqueConstraint(
                fields=["organization"],
                condition=models.Q(status="scheduled"),
                name="erasure_one_scheduled_per_org",
            )
        ]

    def __str__(self) -> str:
        return f"erasure of {self.organization_id} ({self.status})"


class StaffAccess(models.Model):
    """Staff viewed or downloaded an organization's content: who, what, when and why.

    Append-only in practice (no service changes a row); the organization reads its own.
    """

    class Action(models.TextChoices):
        VIEW = "view"
        DOWNLOAD = "download"

    class Via(models.TextChoices):
        COCKPIT = "cockpit"
        ADMIN = "admin"
        COMMAND = "command"

    organization = models.ForeignKey(
        Organization, on_delete=models.CASCADE, related_name="staff_accesses"
    )
    staff = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    # Kept if the staff account goes: the record must still say who.
    staff_username = models.CharField(max_length=150)
    action = models.CharField(max_length=10, choices=Action.choices)
    via = models.CharField(max_length=10, choices=Via.choices)
    subject_type = models.CharField(max_length=40)  # file, job, checkpoint, job_event, ...
    subject_id = models.CharField(max_length=60)
    reason = models.CharField(max_length=500)
    created_at = models.DateTimeField(default=timezone.now, db_index=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [
            models.Index(fields=["organization", "-created_at"], name="staffaccess_org_created")
        ]
        verbose_name_plural = "staff accesses"

    def __str__(self) -> str:
        return f"{self.staff_username} {self.action} {self.subject_type} {self.subject_id}"
