"""Billing tables: the double-entry ledger, price snapshots, usage records, charges, invoices,
provider statements.

The ledger (JournalEntry + LedgerLine), usage records and charges are append-only: their querysets
refuse update() and delete(), and their save() refuses to overwrite a row. A correction is a new,
reversing entry. An invoice claims usage records by a range of recorded_at (Invoice.usage_from,
usage_until), so invoicing never writes to a usage record either.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from django.db import models
from django.db.models import Q
from django.db.models.functions import Round
from django.utils import timezone

from marketplace.accounts.models import Organization
from marketplace.errors import Conflict
from marketplace.finetuning.models import FineTuningJob, JobAttempt


class ImmutableRow(Conflict):
    code = "immutable"


class AppendOnlyQuerySet(models.QuerySet):
    def update(self, **kwargs: Any) -> int:
        raise ImmutableRow(
            f"{self.model.__name__} rows are append-only; write a reversing entry instead."
        )

    def delete(self) -> tuple[int, dict[str, int]]:
        raise ImmutableRow(
            f"{self.model.__name__} rows are append-only; write a reversing entry instead."
        )


class AppendOnlyModel(models.Model):
    objects = AppendOnlyQuerySet.as_manager()

    class Meta:
        abstract = True

    def save(self, *args: Any, **kwargs: Any) -> None:
        if not self._state.adding:
            raise ImmutableRow(f"{type(self).__name__} {self.pk} is append-only; it cannot change.")
        super().save(*args, **kwargs)

    def delete(self, *args: Any, **kwargs: Any) -> tuple[int, dict[str, int]]:
        raise ImmutableRow(f"{type(self).__name__} {self.pk} is append-only; it cannot be deleted.")


class Account(models.TextChoices):
    """Ledger accounts. Amounts are signed: debit positive, credit negative.

    Liabilities (credit-normal): what the platform owes or holds for someone.
    """

    CASH = "cash", "Cash and payment clearing (asset)"
    CUSTOMER_BALANCE = "customer_balance", "Customer prepaid balance (liability, per org)"
    CUSTOMER_HELD = "customer_held", "Customer funds on hold (liability, per org)"
    PROVIDER_PAYABLE = "provider_payable", "Payable to provider (liability, per provider org)"
    PLATFORM_REVENUE = "platform_revenue", "Platform fee revenue"
    VAT_PAYABLE = "vat_payable", "VAT collected, owed to the tax office"
    PROVIDER_HOLDBACK = (
        "provider_holdback",
        "Provider payable held back for disputes (liability, per provider org)",
    )
    PAYOUT_CLEARING = "payout_clearing", "Payouts sent to the bank, not yet seen paid (clearing)"


class BillingAccount(models.Model):
    """One per organization: its credit line, and the row locked to serialize balance changes."""

    organization = models.OneToOneField(
        Organization, on_delete=models.CASCADE, related_name="billing_account"
    )
    credit_limit = models.DecimalField(
        max_digits=14,
        decimal_places=2,
        default=Decimal("0.00"),
        help_text="How far below zero the balance may go (an explicit credit line). 0: prepaid only.",
    )
    # Where invoices and credit notes are e-mailed; empty: to the organization's owners.
    billing_email = models.EmailField(blank=True, default="")
    # Low-balance alert: the org sets the threshold (null: no alert); low_balance_since is set
    # when the available balance falls below it (the alert goes out then, once) and cleared when
    # the balance is back at or above it, so each crossing alerts once.
    low_balance_threshold = models.DecimalField(
        max_digits=14,
        decimal_places=2,
        null=True,
        blank=True,
        help_text="Alert when the available balance falls below this amount (EUR). Empty: never.",
    )
    low_balance_since = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        constraints = [
            models.CheckConstraint(
                condition=Q(credit_limit__gte=0), name="billingaccount_credit_not_negative"
            ),
            models.CheckConstraint(
                condition=Q(low_balance_threshold__isnull=True) | Q(low_balance_threshold__gt=0),
                name="billingaccount_low_balance_threshold_positive",
            ),
        ]

    def __str__(self) -> str:
        return f"billing account of {self.organization_id}"


class JournalEntry(AppendOnlyModel):
    class Kind(models.TextChoices):
        TOPUP = "topup"
        HOLD = "hold"
        CAPTURE = "capture"
        REFUND = "refund"
        RELEASE = "release"
        PAYOUT = "payout"
        ADJUSTMENT = "adjustment"

    key = models.CharField(max_length=200, unique=True, help_text="Idempotency key.")
    kind = models.CharField(max_length=20, choices=Kind.choices)
    organization = models.ForeignKey(
        Organization, null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    job = models.ForeignKey(
        FineTuningJob, null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    memo = models.CharField(max_length=300, blank=True)
    created_by = models.CharField(max_length=150, blank=True)
    created_at = models.DateTimeField(default=timezone.now, db_index=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        verbose_name_plural = "journal entries"

    def __str__(self) -> str:
        return f"{self.kind} {self.key}"


class LedgerLine(AppendOnlyModel):
    entry = models.ForeignKey(JournalEntry, on_delete=models.PROTECT, related_name="lines")
    account = models.CharField(max_length=20, choices=Account.choices)
    organization = models.ForeignKey(
        Organization, null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    amount = models.DecimalField(
        max_digits=14, decimal_places=2, help_text="Signed: debit positive, credit negative."
    )
    currency = models.CharField(max_length=3, default="EUR")

    class Meta:
        indexes = [models.Index(fields=["account", "organization"], name="ledgerline_account_org")]

    def __str__(self) -> str:
        return f"{self.account} {self.amount} ({self.organization_id or 'platform'})"


class JobPricing(models.Model):
    """The job's price snapshot, taken at admission, and its hold counter.

    Mutable: a re-admission (requeue, resume) may move the job to another pool; the usage records
    of each attempt keep the snapshot they were metered under.
    """

    job = models.OneToOneField(FineTuningJob, on_delete=models.CASCADE, related_name="pricing")
    organization = models.ForeignKey(Organization, on_delete=models.CASCADE, related_name="+")
    pool = models.ForeignKey("capacity.Pool", null=True, on_delete=models.PROTECT, related_name="+")
    provider = models.ForeignKey(
        Organization, null=True, on_delete=models.PROTECT, related_name="+"
    )
    price_per_gpu_hour = models.DecimalField(max_digits=10, decimal_places=4)
    max_duration_seconds = models.PositiveIntegerField(default=0)
    admitted_at = models.DateTimeField(default=timezone.now)
    hold_seq = models.PositiveIntegerField(default=0)
    # The booking the job was admitted on, if any: its GPU-seconds inside the booking's window are
    # covered by the booking's own charge (BookingCharge) and metered at zero (covered_gpu_seconds).
    booking = models.ForeignKey(
        "capacity.Booking", null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )

    def __str__(self) -> str:
        return f"{self.job_id} at {self.price_per_gpu_hour}/GPU-hour"


class UsageRecord(AppendOnlyModel):
    """One per job attempt: GPU-seconds from training start on a ready pod to the attempt's end.

    Every field is a fact and never changes. `recorded_at` is set under the metering lock
    (services/usage.py), so an invoice run that cuts at T sees every record recorded before T.
    """

    key = models.CharField(max_length=100, unique=True)
    organization = models.ForeignKey(
        Organization, on_delete=models.PROTECT, related_name="+", db_index=False
    )
    job = models.ForeignKey(FineTuningJob, on_delete=models.PROTECT, related_name="+")
    attempt = models.OneToOneField(JobAttempt, on_delete=models.PROTECT, related_name="+")
    pool = models.ForeignKey(
        "capacity.Pool", null=True, on_delete=models.PROTECT, related_name="+", db_index=False
    )
    provider = models.ForeignKey(
        Organization, null=True, on_delete=models.PROTECT, related_name="+", db_index=False
    )
    price_per_gpu_hour = models.DecimalField(max_digits=10, decimal_places=4)
    gpu_count = models.PositiveIntegerField()
    gpu_seconds = models.DecimalField(max_digits=16, decimal_places=3)
    # The part of gpu_seconds inside the window of the booking the job ran on: already paid for by
    # the booking, so not billed again. Billable = gpu_seconds - covered_gpu_seconds.
    covered_gpu_seconds = models.DecimalField(
        max_digits=16, decimal_places=3, default=Decimal("0"), db_default=Decimal("0")
    )
    booking = models.ForeignKey(
        "capacity.Booking",
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="+",
        db_index=False,
    )
    started_at = models.DateTimeField(null=True)
    ended_at = models.DateTimeField()
    recorded_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["-recorded_at", "-id"]
        indexes = [
            models.Index(fields=["organization", "-recorded_at"], name="usage_org_recorded"),
            models.Index(fields=["recorded_at"], name="usage_recorded"),
            models.Index(fields=["provider", "recorded_at"], name="usage_provider_recorded"),
        ]
        constraints = [
            models.CheckConstraint(
                condition=Q(gpu_seconds__gte=0), name="usage_seconds_not_negative"
            ),
            models.CheckConstraint(
                condition=Q(covered_gpu_seconds__gte=0)
                & Q(covered_gpu_seconds__lte=models.F("gpu_seconds")),
                name="usage_covered_within_seconds",
            ),
        ]

    def __str__(self) -> str:
        return self.key


class Charge(AppendOnlyModel):
    """What the ledger captured (or refunded, when negative) for one stream of a job.

    A stream is one job on one pool at one price. Each charge is the difference between the
    stream's cumulative amounts (money.stream_split) after and before it.
    """

    key = models.CharField(max_length=200, unique=True)
    organization = models.ForeignKey(Organization, on_delete=models.PROTECT, related_name="+")
    job = models.ForeignKey(FineTuningJob, on_delete=models.PROTECT, related_name="+")
    pool = models.ForeignKey("capacity.Pool", null=True, on_delete=models.PROTECT, related_name="+")
    provider = models.ForeignKey(
        Organization, null=True, on_delete=models.PROTECT, related_name="+"
    )
    price_per_gpu_hour = models.DecimalField(max_digits=10, decimal_places=4)
    billable_gpu_seconds = models.DecimalField(
        max_digits=16, decimal_places=3, help_text="The stream's cumulative billable GPU-seconds."
    )
    net = models.DecimalField(max_digits=14, decimal_places=2)
    vat = models.DecimalField(max_digits=14, decimal_places=2)
    fee = models.DecimalField(max_digits=14, decimal_places=2)
    provider_amount = models.DecimalField(max_digits=14, decimal_places=2)
    entry = models.OneToOneField(JournalEntry, on_delete=models.PROTECT, related_name="charge")
    created_at = models.DateTimeField(default=timezone.now, db_index=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [models.Index(fields=["job"], name="charge_job")]
        constraints = [
            models.CheckConstraint(
                # Round(…, 2): SQLite adds decimals as floats; PostgreSQL is exact either way.
                condition=Q(net=Round(models.F("fee") + models.F("provider_amount"), 2)),
                name="charge_net_is_fee_plus_provider",
            )
        ]

    def __str__(self) -> str:
        return self.key


class BookingCharge(AppendOnlyModel):
    """What the ledger charged for a GPU booking (positive), or refunded on its cancellation
    (negative). At most one of each per booking (UNIQUE key: booking:<public_id>:charge|refund).

    The booking is paid in full when it is confirmed; work that runs inside its window is then
    metered at zero for those GPU-seconds (UsageRecord.covered_gpu_seconds).
    """

    class Kind(models.TextChoices):
        CHARGE = "charge"
        REFUND = "refund"

    key = models.CharField(max_length=200, unique=True)
    kind = models.CharField(max_length=10, choices=Kind.choices)
    organization = models.ForeignKey(Organization, on_delete=models.PROTECT, related_name="+")
    booking = models.ForeignKey(
        "capacity.Booking", on_delete=models.PROTECT, related_name="billing_charges"
    )
    pool = models.ForeignKey("capacity.Pool", on_delete=models.PROTECT, related_name="+")
    provider = models.ForeignKey(Organization, on_delete=models.PROTECT, related_name="+")
    price_per_gpu_hour = models.DecimalField(max_digits=10, decimal_places=4)
    vat_rate = models.DecimalField(max_digits=5, decimal_places=4)
    gpu_seconds = models.DecimalField(
        max_digits=16, decimal_places=3, help_text="GPUs x the booking's window, in seconds."
    )
    net = models.DecimalField(max_digits=14, decimal_places=2)
    vat = models.DecimalField(max_digits=14, decimal_places=2)
    fee = models.DecimalField(max_digits=14, decimal_places=2)
    provider_amount = models.DecimalField(max_digits=14, decimal_places=2)
    entry = models.OneToOneField(
        JournalEntry, on_delete=models.PROTECT, related_name="booking_charge"
    )
    created_at = models.DateTimeField(default=timezone.now, db_index=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [
            models.Index(fields=["organization", "created_at"], name="bookingcharge_org_created"),
            models.Index(fields=["provider", "created_at"], name="bookingcharge_prov_created"),
        ]
        constraints = [
            models.UniqueConstraint(fields=["booking", "kind"], name="bookingcharge_one_per_kind"),
            models.CheckConstraint(
                condition=Q(net=Round(models.F("fee") + models.F("provider_amount"), 2)),
                name="bookingcharge_net_is_fee_plus_provider",
            ),
        ]

    def __str__(self) -> str:
        return self.key


class Invoice(models.Model):
    class Status(models.TextChoices):
        DRAFT = "draft"
        FINALIZED = "finalized"
        VOID = "void"

    class Kind(models.TextChoices):
        INVOICE = "invoice"
        # A refund of something a finalized invoice billed: it references that invoice (credits),
        # carries negative lines, and takes its number from the same series.
        CREDIT_NOTE = "credit_note"

    public_id = models.CharField(max_length=40, unique=True)
    kind = models.CharField(max_length=12, choices=Kind.choices, default=Kind.INVOICE)
    credits = models.ForeignKey(
        "self", null=True, blank=True, on_delete=models.PROTECT, related_name="credit_notes"
    )
    organization = models.ForeignKey(
        Organization, on_delete=models.PROTECT, related_name="invoices"
    )
    period_start = models.DateTimeField()
    period_end = models.DateTimeField()
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.DRAFT)
    number = models.CharField(max_length=30, null=True, blank=True, unique=True)
    currency = models.CharField(max_length=3, default="EUR")
    # Snapshot of the customer at finalization: an invoice never changes afterwards.
    customer_name = models.CharField(max_length=200, blank=True)
    customer_country = models.CharField(max_length=2, blank=True)
    customer_vat_id = models.CharField(max_length=32, blank=True)
    vat_rate = models.DecimalField(max_digits=5, decimal_places=4, default=Decimal("0"))
    reverse_charge = models.BooleanField(default=False)
    vat_note = models.CharField(max_length=300, blank=True)
    subtotal = models.DecimalField(max_digits=14, decimal_places=2, default=Decimal("0.00"))
    vat = models.DecimalField(max_digits=14, decimal_places=2, default=Decimal("0.00"))
    total = models.DecimalField(max_digits=14, decimal_places=2, default=Decimal("0.00"))
    created_at = models.DateTimeField(default=timezone.now, db_index=True)
    finalized_at = models.DateTimeField(null=True, blank=True)
    voided_at = models.DateTimeField(null=True, blank=True)
    void_reason = models.CharField(max_length=300, blank=True)
    # The usage this invoice bills: the org's records with usage_from <= recorded_at < usage_until
    # (usage_from empty: since the beginning). Set at finalization; the finalized invoices of an
    # org tile its usage without gaps or overlaps (only the latest may be voided).
    usage_from = models.DateTimeField(null=True, blank=True)
    usage_until = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        constraints = [
            models.UniqueConstraint(
                fields=["organization", "period_start"],
                condition=~Q(status="void") & Q(kind="invoice"),
                name="invoice_one_live_per_org_period",
            ),
            models.CheckConstraint(
                condition=Q(total=Round(models.F("subtotal") + models.F("vat"), 2)),
                name="invoice_total_is_subtotal_plus_vat",
            ),
            models.CheckConstraint(
                condition=~Q(status="finalized") | Q(usage_until__isnull=False),
                name="invoice_finalized_has_usage_range",
            ),
            models.CheckConstraint(
                condition=Q(kind="invoice", credits__isnull=True)
                | Q(kind="credit_note", credits__isnull=False),
                name="invoice_credit_note_references_invoice",
            ),
        ]
        indexes = [
            models.Index(fields=["organization", "usage_until"], name="invoice_org_usage_until")
        ]

    def __str__(self) -> str:
        return self.number or self.public_id


class InvoiceLine(models.Model):
    invoice = models.ForeignKey(Invoice, on_delete=models.CASCADE, related_name="lines")
    # A line bills a job stream (job set), a booking's charge or refund (booking set), or an
    # org's per-token inference on a base model at one price (base_model set).
    job = models.ForeignKey(
        FineTuningJob, null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    booking = models.ForeignKey(
        "capacity.Booking",
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="+",
        db_index=False,
    )
    # Lines are read by invoice and by job only: no index on pool or provider (fewer writes when
    # a month's 100k lines are written at once).
    pool = models.ForeignKey(
        "capacity.Pool", null=True, on_delete=models.PROTECT, related_name="+", db_index=False
    )
    provider = models.ForeignKey(
        Organization, null=True, on_delete=models.PROTECT, related_name="+", db_index=False
    )
    description = models.CharField(max_length=300)
    gpu_seconds = models.DecimalField(max_digits=16, decimal_places=3)
    billable_gpu_seconds = models.DecimalField(max_digits=16, decimal_places=3)
    price_per_gpu_hour = models.DecimalField(max_digits=10, decimal_places=4)
    amount = models.DecimalField(max_digits=14, decimal_places=2)
    vat = models.DecimalField(max_digits=14, decimal_places=2)
    fee = models.DecimalField(max_digits=14, decimal_places=2)
    provider_amount = models.DecimalField(max_digits=14, decimal_places=2)
    is_correction = models.BooleanField(default=False)
    # Inference lines only (zero or empty otherwise): tokens and prices per million tokens.
    base_model = models.CharField(max_length=200, blank=True, default="")
    prompt_tokens = models.PositiveBigIntegerField(default=0)
    completion_tokens = models.PositiveBigIntegerField(default=0)
    price_per_million_prompt_tokens = models.DecimalField(
        max_digits=12, decimal_places=4, default=Decimal("0")
    )
    price_per_million_completion_tokens = models.DecimalField(
        max_digits=12, decimal_places=4, default=Decimal("0")
    )

    class Meta:
        ordering = ["id"]
        indexes = [models.Index(fields=["job"], name="invoiceline_job")]
        constraints = [
            models.CheckConstraint(
                condition=Q(job__isnull=False, booking__isnull=True, base_model="")
                | Q(job__isnull=True, booking__isnull=False, base_model="")
                | (Q(job__isnull=True, booking__isnull=True) & ~Q(base_model="")),
                name="invoiceline_job_booking_or_inference",
            )
        ]

    def __str__(self) -> str:
        return self.description

    @property
    def is_inference(self) -> bool:
        return bool(self.base_model)


class ProviderStatement(models.Model):
    """A provider's gross usage on its pools for a period, minus the platform fee; then paid."""

    class Status(models.TextChoices):
        DRAFT = "draft"
        FINALIZED = "finalized"
        PAID = "paid"

    public_id = models.CharField(max_length=40, unique=True)
    provider = models.ForeignKey(Organization, on_delete=models.PROTECT, related_name="statements")
    period_start = models.DateTimeField()
    period_end = models.DateTimeField()
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.DRAFT)
    fee_percent = models.DecimalField(max_digits=5, decimal_places=2)
    gross = models.DecimalField(max_digits=14, decimal_places=2, default=Decimal("0.00"))
    fee = models.DecimalField(max_digits=14, decimal_places=2, default=Decimal("0.00"))
    payable = models.DecimalField(max_digits=14, decimal_places=2, default=Decimal("0.00"))
    gpu_seconds = models.DecimalField(max_digits=18, decimal_places=3, default=Decimal("0"))
    # Of the payable, held back for disputes at finalization (PARTAGE_PAYOUT_HOLDBACK_PERCENT),
    # and earlier statements' holdbacks released on this one; due = payable - holdback + released.
    holdback = models.DecimalField(max_digits=14, decimal_places=2, default=Decimal("0.00"))
    released = models.DecimalField(max_digits=14, decimal_places=2, default=Decimal("0.00"))
    due = models.DecimalField(max_digits=14, decimal_places=2, default=Decimal("0.00"))
    holdback_release_after = models.DateTimeField(null=True, blank=True)
    holdback_released_by = models.ForeignKey(
        "self", null=True, blank=True, on_delete=models.PROTECT, related_name="releases"
    )
    payout_entry = models.OneToOneField(
        JournalEntry, null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    created_at = models.DateTimeField(default=timezone.now, db_index=True)
    finalized_at = models.DateTimeField(null=True, blank=True)
    paid_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        constraints = [
            models.UniqueConstraint(
                fields=["provider", "period_start"], name="statement_one_per_provider_period"
            ),
            models.CheckConstraint(
                condition=Q(gross=Round(models.F("fee") + models.F("payable"), 2)),
                name="statement_gross_is_fee_plus_payable",
            ),
            models.CheckConstraint(
                condition=Q(
                    due=Round(models.F("payable") - models.F("holdback") + models.F("released"), 2)
                ),
                name="statement_due_is_payable_less_holdback",
            ),
        ]

    def __str__(self) -> str:
        return self.public_id


class InvoiceNumberSequence(models.Model):
    """One gap-free series of invoice (and credit note) numbers per issuing entity and year:
    <issuer>-<year>-<000123>. The row is locked while numbers are handed out, inside the
    transaction that finalizes the invoices, so a rollback hands its numbers back."""

    issuer = models.CharField(max_length=20)
    year = models.PositiveIntegerField()
    last = models.PositiveIntegerField(default=0)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["issuer", "year"], name="invoiceseq_one_per_issuer_year"
            )
        ]

    def __str__(self) -> str:
        return f"invoice numbers {self.issuer} {self.year}: {self.last}"


class BillingPeriod(models.Model):
    """A closed billing period: its invoices and provider statements are finalized and its
    payouts batched. Periods tile time: each starts where the previous one ended."""

    start = models.DateTimeField(unique=True)
    end = models.DateTimeField()
    closed_at = models.DateTimeField(default=timezone.now)
    closed_by = models.CharField(max_length=150, help_text="'scheduler' or the staff member.")
    early = models.BooleanField(default=False, help_text="Closed by staff before its normal end.")
    invoices = models.PositiveIntegerField(default=0)
    statements = models.PositiveIntegerField(default=0)

    class Meta:
        ordering = ["-start"]
        constraints = [
            models.CheckConstraint(condition=Q(end__gt=models.F("start")), name="period_not_empty")
        ]

    def __str__(self) -> str:
        return f"period {self.start:%Y-%m-%d %H:%M} → {self.end:%Y-%m-%d %H:%M}"


class PayoutBatch(models.Model):
    """The payouts of one closed period, as one SEPA credit-transfer file (pain.001.001.09).

    created → sent (staff uploaded the file to the bank: provider payable → payout clearing)
    → paid (the bank executed it: payout clearing → cash). Each step is in the ledger.
    """

    class Status(models.TextChoices):
        CREATED = "created"
        SENT = "sent"
        PAID = "paid"

    public_id = models.CharField(max_length=40, unique=True)
    period_start = models.DateTimeField()
    period_end = models.DateTimeField()
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.CREATED)
    message_id = models.CharField(max_length=35, unique=True)
    sepa_xml = models.TextField(help_text="The pain.001.001.09 file, validated against its XSD.")
    total = models.DecimalField(max_digits=14, decimal_places=2)
    payout_count = models.PositiveIntegerField()
    created_at = models.DateTimeField(default=timezone.now, db_index=True)
    sent_at = models.DateTimeField(null=True, blank=True)
    sent_by = models.CharField(max_length=150, blank=True)
    paid_at = models.DateTimeField(null=True, blank=True)
    paid_by = models.CharField(max_length=150, blank=True)
    paid_entry = models.OneToOneField(
        JournalEntry, null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )

    class Meta:
        ordering = ["-created_at", "-id"]

    def __str__(self) -> str:
        return self.public_id


class Payout(models.Model):
    """One credit transfer to a provider: the amount due on one finalized statement."""

    public_id = models.CharField(max_length=40, unique=True)
    batch = models.ForeignKey(PayoutBatch, on_delete=models.PROTECT, related_name="payouts")
    statement = models.OneToOneField(
        ProviderStatement, on_delete=models.PROTECT, related_name="payout"
    )
    provider = models.ForeignKey(Organization, on_delete=models.PROTECT, related_name="payouts")
    amount = models.DecimalField(max_digits=14, decimal_places=2)
    # The creditor as written in the file (a snapshot: later edits of the details do not change it).
    creditor_name = models.CharField(max_length=70)
    iban = models.CharField(max_length=34)
    bic = models.CharField(max_length=11, blank=True)
    sent_entry = models.OneToOneField(
        JournalEntry, null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )

    class Meta:
        ordering = ["id"]
        constraints = [
            models.CheckConstraint(condition=Q(amount__gt=0), name="payout_amount_positive")
        ]

    def __str__(self) -> str:
        return self.public_id


class Topup(models.Model):
    """A self-serve top-up of the prepaid balance: started by the organization, credited once
    when the money is confirmed (the payment provider's signed webhook for a card payment,
    staff for a bank transfer). The ledger entry's key (topup:<method>:<reference>) is UNIQUE."""

    class Method(models.TextChoices):
        CARD = "card", "Card (Stripe Checkout)"
        BANK_TRANSFER = "bank_transfer", "Bank transfer"

    class Status(models.TextChoices):
        PENDING = "pending"
        CREDITED = "credited"
        EXPIRED = "expired"
        FAILED = "failed"

    public_id = models.CharField(max_length=40, unique=True)
    organization = models.ForeignKey(Organization, on_delete=models.PROTECT, related_name="topups")
    method = models.CharField(max_length=20, choices=Method.choices)
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.PENDING)
    amount = models.DecimalField(max_digits=14, decimal_places=2)
    currency = models.CharField(max_length=3, default="EUR")
    # The payment reference the customer quotes on a bank transfer (PTG-XXXX-XXXX), or the
    # provider's id of the payment (the Stripe Checkout Session id) for a card top-up.
    reference = models.CharField(max_length=255, unique=True)
    checkout_url = models.URLField(max_length=2000, blank=True)
    entry = models.OneToOneField(
        JournalEntry, null=True, blank=True, on_delete=models.PROTECT, related_name="topup"
    )
    created_by = models.CharField(max_length=150, blank=True)
    credited_by = models.CharField(max_length=150, blank=True)
    failure_reason = models.CharField(max_length=300, blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    expires_at = models.DateTimeField(null=True, blank=True)
    credited_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [
            models.Index(fields=["organization", "-created_at"], name="topup_org_created"),
            models.Index(fields=["status", "method"], name="topup_status_method"),
        ]
        constraints = [
            models.CheckConstraint(condition=Q(amount__gt=0), name="topup_amount_positive"),
            models.CheckConstraint(
                condition=~Q(status="credited") | Q(entry__isnull=False),
                name="topup_credited_has_entry",
            ),
        ]

    def __str__(self) -> str:
        return self.public_id
