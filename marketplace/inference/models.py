"""Inference on fine-tuned models: the per-token prices staff set per base model, and one
append-only usage row per answered chat completion.

A price row is never edited: a new price is a new row, the latest per base model applies, and
every usage row names the price it was billed at.
"""

from __future__ import annotations

from decimal import Decimal

from django.conf import settings
from django.db import models
from django.db.models import Q
from django.utils import timezone

from marketplace.accounts.models import Organization
from marketplace.billing.models import AppendOnlyModel, JournalEntry
from marketplace.finetuning.models import FineTuningJob


class InferencePrice(AppendOnlyModel):
    base_model = models.CharField(max_length=200, db_index=True, help_text="Catalog id.")
    price_per_million_prompt_tokens = models.DecimalField(
        max_digits=12, decimal_places=4, help_text="EUR, before VAT."
    )
    price_per_million_completion_tokens = models.DecimalField(
        max_digits=12, decimal_places=4, help_text="EUR, before VAT."
    )
    created_at = models.DateTimeField(default=timezone.now)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )

    class Meta:
        ordering = ["-created_at", "-id"]
        constraints = [
            models.CheckConstraint(
                condition=Q(price_per_million_prompt_tokens__gte=0)
                & Q(price_per_million_completion_tokens__gte=0),
                name="inferenceprice_not_negative",
            )
        ]

    def __str__(self) -> str:
        return (
            f"{self.base_model}: {self.price_per_million_prompt_tokens} / "
            f"{self.price_per_million_completion_tokens} EUR per million tokens"
        )


class InferenceUsage(AppendOnlyModel):
    """One answered completion. `amount` is exact (unrounded); the ledger is charged in cents on
    the running total of the org's stream at that price (see services.usage_record)."""

    key = models.CharField(max_length=100, unique=True, help_text="The completion id.")
    organization = models.ForeignKey(
        Organization, on_delete=models.PROTECT, related_name="+", db_index=False
    )
    job = models.ForeignKey(FineTuningJob, on_delete=models.PROTECT, related_name="+")
    model = models.CharField(max_length=255)
    price = models.ForeignKey(
        InferencePrice, null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    prompt_tokens = models.PositiveIntegerField()
    completion_tokens = models.PositiveIntegerField()
    amount = models.DecimalField(max_digits=20, decimal_places=10, default=Decimal("0"))
    # The stream's running totals after this row: exact amount, and the cents charged so far.
    stream_amount = models.DecimalField(max_digits=20, decimal_places=10, default=Decimal("0"))
    stream_net_charged = models.DecimalField(max_digits=14, decimal_places=2, default=Decimal("0"))
    stream_vat_charged = models.DecimalField(max_digits=14, decimal_places=2, default=Decimal("0"))
    # What this completion's ledger entry charged: the cents its stream moved (often zero).
    # Invoices sum these, so their inference lines equal the ledger's charges to the cent.
    net_charged = models.DecimalField(max_digits=14, decimal_places=2, default=Decimal("0"))
    vat_charged = models.DecimalField(max_digits=14, decimal_places=2, default=Decimal("0"))
    entry = models.ForeignKey(
        JournalEntry, null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    # Stamped under the metering lock: invoices claim completions by it (billing/invoices.py).
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [
            models.Index(fields=["organization", "price", "-id"], name="inferenceusage_stream"),
            models.Index(fields=["created_at"], name="inferenceusage_created"),
        ]

    def __str__(self) -> str:
        return self.key
