"""Staff console for billing: top-ups and credit lines, read-only ledger, invoices, statements.

The ledger, usage and charges are append-only, so their admin pages are read-only.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from django import forms
from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest

from marketplace.billing import services
from marketplace.billing.models import (
    BillingAccount,
    BillingPeriod,
    BookingCharge,
    Charge,
    Invoice,
    InvoiceLine,
    JournalEntry,
    LedgerLine,
    Payout,
    PayoutBatch,
    ProviderStatement,
    Topup,
    UsageRecord,
)
from marketplace.errors import PartageError


class ReadOnlyAdmin(admin.ModelAdmin):
    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


class BillingAccountForm(forms.ModelForm):
    topup_amount = forms.DecimalField(
        required=False,
        max_digits=12,
        decimal_places=2,
        min_value=Decimal("0.01"),
        help_text="Record a prepaid top-up of this many EUR (a payment seen arriving).",
    )
    topup_reference = forms.CharField(
        required=False,
        max_length=100,
        help_text="The payment's reference, e.g. the bank transfer id.",
    )

    class Meta:
        model = BillingAccount
        fields = ["organization", "credit_limit", "billing_email"]

    def clean(self) -> dict[str, Any]:
        data = super().clean() or {}
        if data.get("topup_amount") and not data.get("topup_reference"):
            self.add_error("topup_reference", "A top-up needs the payment's reference.")
        return data


@admin.register(BillingAccount)
class BillingAccountAdmin(admin.ModelAdmin):
    form = BillingAccountForm
    list_display = ["organization", "credit_limit", "available", "held"]
    search_fields = ["organization__slug", "organization__name"]

    @admin.display(description="available (EUR)")
    def available(self, obj: BillingAccount) -> Decimal:
        return services.balance_available(organization=obj.organization_id)

    @admin.display(description="held (EUR)")
    def held(self, obj: BillingAccount) -> Decimal:
        return services.balance_held(organization=obj.organization_id)

    def save_model(
        self, request: HttpRequest, obj: BillingAccount, form: Any, change: bool
    ) -> None:
        services.credit_limit_set(organization=obj.organization, credit_limit=obj.credit_limit)
        services.billing_contact_set(organization=obj.organization, email=obj.billing_email)
        amount = form.cleaned_data.get("topup_amount")
        if amount:
            services.topup_record(
                organization=obj.organization,
                amount=amount,
                reference=form.cleaned_data["topup_reference"],
                created_by=request.user.get_username(),
            )
            self.message_user(request, f"Recorded a top-up of €{amount} for {obj.organization}.")


class LedgerLineInline(admin.TabularInline):
    model = LedgerLine
    extra = 0
    can_delete = False
    readonly_fields = ["account", "organization", "amount", "currency"]

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(JournalEntry)
class JournalEntryAdmin(ReadOnlyAdmin):
    list_display = ["created_at", "kind", "key", "organization", "job", "memo"]
    list_filter = ["kind"]
    search_fields = ["key", "memo", "job__id", "organization__slug"]
    inlines = [LedgerLineInline]


@admin.register(UsageRecord)
class UsageRecordAdmin(ReadOnlyAdmin):
    list_display = [
        "key",
        "organization",
        "job",
        "pool",
        "gpu_seconds",
        "price_per_gpu_hour",
        "recorded_at",
    ]
    search_fields = ["key", "job__id", "organization__slug"]


@admin.register(Charge)
class ChargeAdmin(ReadOnlyAdmin):
    list_display = ["created_at", "job", "provider", "net", "vat", "fee", "provider_amount"]
    search_fields = ["job__id", "key"]


@admin.register(BookingCharge)
class BookingChargeAdmin(ReadOnlyAdmin):
    list_display = [
        "created_at",
        "kind",
        "booking",
        "organization",
        "provider",
        "net",
        "vat",
        "fee",
    ]
    list_filter = ["kind"]
    search_fields = ["booking__public_id", "key", "organization__slug"]


class InvoiceLineInline(admin.TabularInline):
    model = InvoiceLine
    extra = 0
    can_delete = False
    fields = (
        "description",
        "gpu_seconds",
        "price_per_gpu_hour",
        "prompt_tokens",
        "completion_tokens",
        "amount",
        "vat",
        "is_correction",
    )
    readonly_fields = fields

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(Invoice)
class InvoiceAdmin(ReadOnlyAdmin):
    list_display = [
        "__str__",
        "kind",
        "organization",
        "period_start",
        "status",
        "subtotal",
        "vat",
        "total",
    ]
    list_filter = ["status", "kind"]
    inlines = [InvoiceLineInline]
    actions = ["finalize", "void"]

    @admin.action(description="Finalize the selected draft invoices")
    def finalize(self, request: HttpRequest, queryset: QuerySet[Invoice]) -> None:
        for invoice in queryset:
            try:
                services.invoice_finalize(invoice=invoice)
            except PartageError as e:
                self.message_user(request, f"{invoice}: {e.message}", messages.ERROR)

    @admin.action(description="Void the selected invoices (their usage goes on the next invoice)")
    def void(self, request: HttpRequest, queryset: QuerySet[Invoice]) -> None:
        for invoice in queryset:
            try:
                services.invoice_void(
                    invoice=invoice, reason=f"voided by {request.user.get_username()} in the admin"
                )
            except PartageError as e:
                self.message_user(request, f"{invoice}: {e.message}", messages.ERROR)


@admin.register(ProviderStatement)
class ProviderStatementAdmin(ReadOnlyAdmin):
    list_display = [
        "public_id",
        "provider",
        "period_start",
        "status",
        "gross",
        "fee",
        "payable",
        "holdback",
        "released",
        "due",
    ]
    list_filter = ["status"]
    actions = ["finalize", "mark_paid"]

    @admin.action(description="Finalize the selected statements")
    def finalize(self, request: HttpRequest, queryset: QuerySet[ProviderStatement]) -> None:
        for statement in queryset:
            try:
                services.statement_finalize(statement=statement)
            except PartageError as e:
                self.message_user(request, f"{statement.public_id}: {e.message}", messages.ERROR)

    @admin.action(description="Record the payout of the selected finalized statements")
    def mark_paid(self, request: HttpRequest, queryset: QuerySet[ProviderStatement]) -> None:
        for statement in queryset:
            try:
                services.statement_pay(
                    statement=statement,
                    reference="admin payout",
                    created_by=request.user.get_username(),
                )
            except PartageError as e:
                self.message_user(request, f"{statement.public_id}: {e.message}", messages.ERROR)


@admin.register(BillingPeriod)
class BillingPeriodAdmin(ReadOnlyAdmin):
    """Closed by beat (or early, from the cockpit's billing page): read-only here."""

    list_display = ["start", "end", "closed_at", "closed_by", "early", "invoices", "statements"]


class PayoutInline(admin.TabularInline):
    model = Payout
    extra = 0
    can_delete = False
    fields = ("public_id", "provider", "statement", "amount", "creditor_name", "iban", "bic")
    readonly_fields = (
        "public_id",
        "provider",
        "statement",
        "amount",
        "creditor_name",
        "iban",
        "bic",
    )

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(PayoutBatch)
class PayoutBatchAdmin(ReadOnlyAdmin):
    """Marked sent and paid from the cockpit's billing page (ledger + audit): read-only here."""

    list_display = ["public_id", "period_end", "status", "payout_count", "total", "sent_by"]
    list_filter = ["status"]
    exclude = ["sepa_xml"]
    inlines = [PayoutInline]


@admin.register(Topup)
class TopupAdmin(ReadOnlyAdmin):
    """Self-serve top-ups; bank transfers are marked received in the staff cockpit."""

    list_display = ["public_id", "organization", "method", "status", "amount", "reference"]
    list_filter = ["method", "status"]
    search_fields = ["public_id", "reference", "organization__slug"]
    date_hierarchy = "created_at"
