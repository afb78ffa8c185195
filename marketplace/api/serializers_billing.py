"""Documented response shapes of the /v1 billing routes (OpenAPI only; views_billing builds the
bodies). The schemathesis test checks responses against these, so keep them in step.

Amounts are decimal strings: the DecimalFields below mirror the model columns they are read from
(max_digits, decimal_places), so the schema carries the same pattern the values keep to.
"""

from __future__ import annotations

from rest_framework import serializers

from marketplace.api.schema import const, list_of, unix_seconds


def money(help_text: str = "") -> serializers.DecimalField:
    """EUR, two decimals (may be negative: a balance under a credit limit)."""
    return serializers.DecimalField(max_digits=14, decimal_places=2, help_text=help_text or None)


def gpu_seconds(max_digits: int = 16) -> serializers.DecimalField:
    return serializers.DecimalField(max_digits=max_digits, decimal_places=3)


def price_per_gpu_hour() -> serializers.DecimalField:
    return serializers.DecimalField(
        max_digits=10, decimal_places=4, help_text="EUR per GPU-hour, 4 decimals."
    )


class BalanceAmounts(serializers.Serializer):
    available = money()
    held = money()
    credit_limit = money()


class BillingBalanceObject(serializers.Serializer):
    object = const("billing.balance")
    organization_id = serializers.CharField()
    currency = const("EUR")
    available = money()
    held = money()
    credit_limit = money()
    low_balance_threshold = serializers.DecimalField(
        max_digits=14,
        decimal_places=2,
        allow_null=True,
        help_text="billing.balance_low is announced when `available` falls below it; null: never.",
    )


class BillingSettingsObject(serializers.Serializer):
    object = const("billing.settings")
    low_balance_threshold = serializers.DecimalField(
        max_digits=14, decimal_places=2, allow_null=True
    )
    topup_methods = serializers.ListField(
        child=serializers.ChoiceField(choices=["card", "bank_transfer"]),
        help_text="The payment methods POST /v1/billing/topups accepts here.",
    )
    topup_min = money()
    topup_max = money()


class BillingUsageRecordObject(serializers.Serializer):
    id = serializers.CharField(help_text="usage-<n>; also the `after` cursor of the list.")
    object = const("billing.usage_record")
    job_id = serializers.CharField()
    attempt = serializers.IntegerField(help_text="The job attempt's number (1, 2… on retries).")
    pool = serializers.CharField(allow_null=True)
    gpu_count = serializers.IntegerField()
    gpu_seconds = gpu_seconds()
    price_per_gpu_hour = price_per_gpu_hour()
    currency = const("EUR")
    started_at = unix_seconds(
        allow_null=True, help_text="Training start on a ready pod; null if it never started."
    )
    ended_at = unix_seconds()
    created_at = unix_seconds(help_text="When the record was made (the `period` filter's time).")
    invoiced = serializers.BooleanField(help_text="Billed on a finalized invoice.")


class InvoiceLineObject(serializers.Serializer):
    object = const("billing.invoice_line")
    job_id = serializers.CharField(
        allow_null=True,
        help_text="The fine-tuning job this line bills; null on a booking or inference line.",
    )
    booking_id = serializers.CharField(
        allow_null=True,
        help_text="The GPU booking whose charge (or refund, a correction) this line bills; "
        "null on a job or inference line.",
    )
    pool = serializers.CharField(allow_null=True)
    description = serializers.CharField(allow_blank=True)
    gpu_seconds = gpu_seconds()
    price_per_gpu_hour = price_per_gpu_hour()
    base_model = serializers.CharField(
        allow_null=True,
        help_text="On an inference line, the base model whose fine-tuned models answered the "
        "chat completions it bills (one line per base model and price); else null.",
    )
    prompt_tokens = serializers.IntegerField(
        min_value=0, help_text="Inference lines: prompt tokens billed; else 0."
    )
    completion_tokens = serializers.IntegerField(
        min_value=0, help_text="Inference lines: completion tokens billed; else 0."
    )
    price_per_million_prompt_tokens = serializers.DecimalField(
        max_digits=12, decimal_places=4, help_text="Inference lines: EUR per million, before VAT."
    )
    price_per_million_completion_tokens = serializers.DecimalField(
        max_digits=12, decimal_places=4, help_text="Inference lines: EUR per million, before VAT."
    )
    amount = money()
    vat = money()
    correction = serializers.BooleanField()


class InvoiceDownloads(serializers.Serializer):
    pdf = serializers.CharField()
    html = serializers.CharField()
    csv = serializers.CharField()


class InvoiceObject(serializers.Serializer):
    id = serializers.CharField()
    object = const("billing.invoice")
    kind = serializers.ChoiceField(
        choices=["invoice", "credit_note"],
        help_text="A credit note refunds part of a finalized invoice (credits); amounts negative.",
    )
    credits = serializers.CharField(
        allow_null=True, help_text="The id of the invoice a credit note credits; else null."
    )
    credits_number = serializers.CharField(allow_null=True)
    number = serializers.CharField(allow_null=True, help_text="Null until finalized.")
    status = serializers.ChoiceField(choices=["draft", "finalized", "void"])
    period_start = unix_seconds()
    period_end = unix_seconds()
    currency = serializers.CharField()
    subtotal = money()
    vat = money()
    total = money()
    vat_rate = serializers.DecimalField(
        max_digits=5, decimal_places=4, help_text="A fraction: 0.2000 is 20 %."
    )
    reverse_charge = serializers.BooleanField()
    vat_note = serializers.CharField(allow_blank=True)
    created_at = unix_seconds()
    finalized_at = unix_seconds(allow_null=True)
    downloads = InvoiceDownloads(help_text="Paths of the PDF, HTML and CSV exports.")


class InvoiceDetailObject(InvoiceObject):
    lines = InvoiceLineObject(many=True)


class ProviderStatementObject(serializers.Serializer):
    id = serializers.CharField()
    object = const("billing.provider_statement")
    status = serializers.ChoiceField(choices=["draft", "finalized", "paid"])
    period_start = unix_seconds()
    period_end = unix_seconds()
    currency = const("EUR")
    gpu_seconds = gpu_seconds(max_digits=18)
    gross = money()
    platform_fee_percent = serializers.DecimalField(max_digits=5, decimal_places=2)
    platform_fee = money()
    payable = money(help_text="gross - platform_fee.")
    holdback = money(help_text="Part of the payable held back for disputes this period.")
    holdback_released = money(help_text="Earlier holdbacks released on this statement.")
    due = money(help_text="What is paid out: payable - holdback + holdback_released.")
    payout = serializers.CharField(allow_null=True, help_text="The payout's id, once batched.")
    created_at = unix_seconds()
    finalized_at = unix_seconds(allow_null=True)
    paid_at = unix_seconds(allow_null=True)


class PayoutObject(serializers.Serializer):
    id = serializers.CharField()
    object = const("billing.payout")
    statement = serializers.CharField(help_text="The statement this pays.")
    status = serializers.ChoiceField(
        choices=["created", "sent", "paid"],
        help_text="created: in a SEPA file; sent: handed to the bank; paid: executed.",
    )
    amount = money()
    currency = const("EUR")
    creditor_name = serializers.CharField()
    iban_last4 = serializers.CharField(help_text="The last 4 characters of the account paid.")
    created_at = unix_seconds()
    sent_at = unix_seconds(allow_null=True)
    paid_at = unix_seconds(allow_null=True)


class BalanceCoverageObject(serializers.Serializer):
    covered = serializers.BooleanField(
        help_text="Whether the prepaid balance (plus any credit line) covers `needed` now."
    )
    needed = money()
    available = money()
    shortfall = serializers.DecimalField(
        max_digits=14,
        decimal_places=2,
        help_text="EUR to add before confirming (0.00 when covered): POST /v1/billing/topups.",
    )
    currency = const("EUR")


class CostEstimateObject(serializers.Serializer):
    object = const("billing.cost_estimate")
    pool = serializers.CharField(help_text="The cheapest active pool that can run the job.")
    gpu_flavor = serializers.CharField()
    gpu_count = serializers.IntegerField()
    estimated_duration_seconds = serializers.IntegerField()
    price_per_gpu_hour = price_per_gpu_hour()
    currency = const("EUR")
    amount = money()
    vat = money()
    total = money()
    balance = BalanceCoverageObject(
        help_text="Whether the balance covers `total` (the most the job can hold), and the "
        "shortfall."
    )


class BankTransferInstructions(serializers.Serializer):
    reference = serializers.CharField(help_text="Quote it exactly on the transfer.")
    beneficiary = serializers.CharField()
    iban = serializers.CharField()
    bic = serializers.CharField()
    proforma = serializers.CharField(help_text="Path of the proforma PDF.")


class TopupObject(serializers.Serializer):
    object = const("billing.topup")
    id = serializers.CharField()
    method = serializers.ChoiceField(choices=["card", "bank_transfer"])
    status = serializers.ChoiceField(choices=["pending", "credited", "expired", "failed"])
    amount = money()
    currency = const("EUR")
    checkout_url = serializers.CharField(
        allow_null=True, help_text="Card: send the customer here to pay (Stripe Checkout)."
    )
    bank_transfer = BankTransferInstructions(allow_null=True)
    failure_reason = serializers.CharField(allow_blank=True)
    created_at = unix_seconds()
    expires_at = unix_seconds(allow_null=True)
    credited_at = unix_seconds(allow_null=True)


UsageRecordList = list_of(BillingUsageRecordObject, "BillingUsageRecordList")
InvoiceList = list_of(InvoiceObject, "BillingInvoiceList")
ProviderStatementList = list_of(ProviderStatementObject, "BillingProviderStatementList")
PayoutList = list_of(PayoutObject, "BillingPayoutList")
TopupList = list_of(TopupObject, "BillingTopupList")
