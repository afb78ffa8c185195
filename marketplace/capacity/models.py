"""Supply and demand of GPU capacity: flavors, providers, clusters, pools, maintenance,
bookings, job placements and organizations' data-residency policies.

Credentials never live here: a ClusterConnection holds only a *reference* (a mounted path or a
Kubernetes secret name) to where they are.
"""

from __future__ import annotations

from decimal import Decimal

from django.conf import settings
from django.db import models
from django.db.models import Q
from django.utils import timezone

from marketplace.accounts.models import ApiKey, Organization
from marketplace.finetuning.models import FineTuningJob

# Member states of the European Union (ISO 3166-1 alpha-2), for EU-only residency.
EU_COUNTRIES = frozenset(
    {
        "AT", "BE", "BG", "HR", "CY", "CZ", "DK", "EE", "FI", "FR", "DE", "GR", "HU", "IE",
        "IT", "LV", "LT", "LU", "MT", "NL", "PL", "PT", "RO", "SK", "SI", "ES", "SE",
    }
)  # fmt: skip


class GpuFlavor(models.Model):
    """A kind of GPU that pools offer, e.g. slug "h100-80g"."""

    class Interconnect(models.TextChoices):
        PCIE = "pcie", "PCIe"
        NVLINK = "nvlink", "NVLink"
        SXM = "sxm", "SXM / NVSwitch"

    slug = models.SlugField(max_length=40, unique=True)
    model_name = models.CharField(max_length=100, help_text="e.g. NVIDIA H100")
    memory_gb = models.PositiveIntegerField()
    interconnect = models.CharField(
        max_length=10, choices=Interconnect.choices, default=Interconnect.PCIE
    )
    gpu_resource_name = models.CharField(max_length=100, default="nvidia.com/gpu")
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["slug"]

    def __str__(self) -> str:
        return self.slug


class ApprovalStatus(models.TextChoices):
    PENDING = "pending", "Pending approval"
    APPROVED = "approved", "Approved"
    REJECTED = "rejected", "Rejected"
    SUSPENDED = "suspended", "Suspended"


class ProviderProfile(models.Model):
    """What a provider organization adds to accounts.Organization (legal name, country and VAT
    id live there): the payout reference and the platform's approval."""

    organization = models.OneToOneField(
        Organization, on_delete=models.CASCADE, related_name="provider_profile"
    )
    payout_reference = models.CharField(
        max_length=100,
        blank=True,
        help_text="e.g. an IBAN reference or payment-provider account id",
    )
    # Where payouts go: a SEPA credit transfer to this account (validated with schwifty).
    payout_name = models.CharField(
        max_length=70, blank=True, default="", help_text="The account holder."
    )
    payout_iban = models.CharField(max_length=34, blank=True, default="")
    payout_bic = models.CharField(max_length=11, blank=True, default="")
    approval_status = models.CharField(
        max_length=20, choices=ApprovalStatus.choices, default=ApprovalStatus.PENDING
    )
    approved_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    approved_at = models.DateTimeField(null=True, blank=True)
    review_note = models.TextField(blank=True)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["organization__slug"]

    def __str__(self) -> str:
        return f"provider {self.organization.slug}"

    @property
    def is_approved(self) -> bool:
        return self.approval_status == ApprovalStatus.APPROVED


class ClusterConnection(models.Model):
    """How to reach a Kubernetes cluster. `credentials_ref` points at the secret; never holds it."""

    class Kind(models.TextChoices):
        KUBECONFIG = "kubeconfig", "Kubeconfig file (mounted secret)"
        IN_CLUSTER = "in_cluster", "In-cluster service account"
        LOCAL = "local", "This machine (the local executor; the embedded default's demo pool)"

    name = models.SlugField(max_length=60, unique=True)
    provider = models.ForeignKey(
        Organization,
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="cluster_connections",
        help_text="Empty for a cluster the platform runs itself.",
    )
    kind = models.CharField(max_length=20, choices=Kind.choices, default=Kind.KUBECONFIG)
    namespace = models.CharField(max_length=63, default="partage-jobs")
    credentials_ref = models.CharField(
        max_length=300,
        blank=True,
        help_text="Path of the mounted kubeconfig, e.g. "
        "/var/run/secrets/partage/clusters/<name>/kubeconfig, or a Secret name. Empty for in_cluster.",
    )
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name


class Pool(models.Model):
    """A provider's set of identical GPUs in one cluster, offered at one price."""

    class Status(models.TextChoices):
        PENDING = "pending_approval", "Pending approval"
        ACTIVE = "active", "Active"
        MAINTENANCE = "maintenance", "In maintenance"
        REJECTED = "rejected", "Rejected"
        # Its provider is leaving: no new work; what runs finishes, then it is retired.
        RETIRING = "retiring", "Retiring"
        RETIRED = "retired", "Retired"

    public_id = models.CharField(max_length=40, unique=True, editable=False)
    provider = models.ForeignKey(Organization, on_delete=models.PROTECT, related_name="pools")
    name = models.CharField(max_length=100)
    flavor = models.ForeignKey(GpuFlavor, on_delete=models.PROTECT, related_name="pools")
    gpu_count = models.PositiveIntegerField()
    cluster = models.ForeignKey(
        ClusterConnection, null=True, blank=True, on_delete=models.PROTECT, related_name="pools"
    )
    region = models.CharField(max_length=60, help_text="e.g. eu-west-paris")
    country = models.CharField(max_length=2, help_text="ISO 3166-1 alpha-2")
    certifications = models.JSONField(default=list, blank=True)  # e.g. ["iso27001", "hds"]
    price_per_gpu_hour = models.DecimalField(max_digits=10, decimal_places=4)
    currency = models.CharField(max_length=3, default="EUR", editable=False)
    status = models.CharField(max_length=20, choices=Status.choices, default=Status.PENDING)
    approved_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    approved_at = models.DateTimeField(null=True, blank=True)
    review_note = models.TextField(blank=True)
    node_selector = models.JSONField(default=dict, blank=True)
    tolerations = models.JSONField(default=list, blank=True)
    created_at = models.DateTimeField(default=timezone.now, db_index=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        constraints = [
            models.CheckConstraint(condition=Q(gpu_count__gte=1), name="pool_gpu_count_positive"),
            models.CheckConstraint(
                condition=Q(price_per_gpu_hour__gte=Decimal("0")), name="pool_price_not_negative"
            ),
        ]
        indexes = [models.Index(fields=["status", "flavor"], name="pool_status_flavor")]

    def __str__(self) -> str:
        return f"{self.public_id} ({self.name})"


class MaintenanceWindow(models.Model):
    """GPUs of a pool taken out of service for [start, end). `gpu_count` null: the whole pool."""

    pool = models.ForeignKey(Pool, on_delete=models.CASCADE, related_name="maintenance_windows")
    start = models.DateTimeField()
    end = models.DateTimeField()
    gpu_count = models.PositiveIntegerField(null=True, blank=True)
    reason = models.CharField(max_length=200, blank=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["start"]
        constraints = [
            models.CheckConstraint(
                condition=Q(end__gt=models.F("start")), name="maint_end_after_start"
            ),
        ]
        indexes = [models.Index(fields=["pool", "end"], name="maint_pool_end")]

    def __str__(self) -> str:
        return f"maintenance of {self.pool_id} [{self.start:%Y-%m-%d %H:%M}, {self.end:%Y-%m-%d %H:%M})"


class Booking(models.Model):
    """An organization's reservation of N GPUs on one pool for [start, end)."""

    class Status(models.TextChoices):
        CONFIRMED = "confirmed", "Confirmed"
        CANCELLED = "cancelled", "Cancelled"

    public_id = models.CharField(max_length=40, unique=True, editable=False)
    organization = models.ForeignKey(
        Organization, on_delete=models.CASCADE, related_name="bookings"
    )
    pool = models.ForeignKey(Pool, on_delete=models.PROTECT, related_name="bookings")
    flavor = models.ForeignKey(GpuFlavor, on_delete=models.PROTECT, related_name="+")
    gpu_count = models.PositiveIntegerField()
    start = models.DateTimeField()
    end = models.DateTimeField()
    status = models.CharField(max_length=20, choices=Status.choices, default=Status.CONFIRMED)
    # The price at booking time; later price changes don't touch confirmed bookings.
    price_per_gpu_hour = models.DecimalField(max_digits=10, decimal_places=4)
    amount = models.DecimalField(max_digits=14, decimal_places=2)  # gpu_count * hours * price
    currency = models.CharField(max_length=3, default="EUR", editable=False)
    cancellation_policy = models.CharField(max_length=40)
    cancelled_at = models.DateTimeField(null=True, blank=True)
    cancelled_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    refund_fraction = models.DecimalField(max_digits=5, decimal_places=4, null=True, blank=True)
    refund_amount = models.DecimalField(max_digits=14, decimal_places=2, null=True, blank=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_by_key = models.ForeignKey(
        ApiKey, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(default=timezone.now, db_index=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        constraints = [
            models.CheckConstraint(
                condition=Q(end__gt=models.F("start")), name="booking_end_after_start"
            ),
            models.CheckConstraint(
                condition=Q(gpu_count__gte=1), name="booking_gpu_count_positive"
            ),
        ]
        indexes = [
            models.Index(fields=["pool", "status", "end"], name="booking_pool_status_end"),
            models.Index(fields=["organization", "-created_at"], name="booking_org_created"),
        ]

    def __str__(self) -> str:
        return self.public_id


class Placement(models.Model):
    """Where a job runs (one row per job; a re-placement after a requeue updates it) and why."""

    job = models.OneToOneField(FineTuningJob, on_delete=models.CASCADE, related_name="placement")
    pool = models.ForeignKey(Pool, on_delete=models.PROTECT, related_name="placements")
    booking = models.ForeignKey(
        Booking, null=True, blank=True, on_delete=models.SET_NULL, related_name="placements"
    )
    gpu_count = models.PositiveIntegerField()
    price_per_gpu_hour = models.DecimalField(max_digits=10, decimal_places=4)
    reason = models.TextField()
    decided_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["-decided_at"]

    def __str__(self) -> str:
        return f"{self.job_id} on {self.pool_id}"


class ResidencyPolicy(models.Model):
    """Where an organization's jobs may run: EU only, and/or an allow-list of countries.

    Both set: the country must satisfy both. Neither: anywhere.
    """

    organization = models.OneToOneField(
        Organization, on_delete=models.CASCADE, related_name="residency_policy"
    )
    eu_only = models.BooleanField(default=False)
    countries = models.JSONField(default=list, blank=True)  # ISO alpha-2 codes; [] = any
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        verbose_name_plural = "residency policies"

    def __str__(self) -> str:
        return f"residency of {self.organization_id}"
