"""Writes for billing: metering, holds, the ledger, top-ups, invoices, statements and payouts.

The job life cycle calls attempt_meter, job_settle and job_over_budget (usage.py); the admission
pass calls hold_place (holds_place for a batch; holds.py); capacity's booking services call
booking_charge and booking_refund; organizations top up their balance (topups.py) and are
alerted when it runs low (alerts.py). The money rules (rounding, VAT, fee split) live in
marketplace/billing/money.py.
"""

from marketplace.billing.services.alerts import balance_low_check, low_balance_threshold_set
from marketplace.billing.services.bookings import (
    booking_charge,
    booking_charged,
    booking_net,
    booking_price,
    booking_refund,
    booking_refund_quote,
    booking_refunded,
)
from marketplace.billing.services.holds import HoldRequest, hold_place, holds_place
from marketplace.billing.services.invoices import (
    billing_contact_set,
    invoice_draft,
    invoice_finalize,
    invoice_void,
    invoices_finalize,
    month_bounds,
    period_parse,
)
from marketplace.billing.services.ledger import (
    Leg,
    account_lock,
    balance_available,
    balance_held,
    entry_post,
    job_held,
    provider_payable,
)
from marketplace.billing.services.payments import (
    ManualPaymentProvider,
    PaymentConfirmation,
    PaymentProvider,
    credit_limit_set,
    money_parse,
    topup_record,
)
from marketplace.billing.services.payouts import (
    payout_batch_create,
    payout_batch_mark_paid,
    payout_batch_mark_sent,
)
from marketplace.billing.services.periods import (
    period_close,
    period_close_early,
    periods_close_due,
    periods_due,
)
from marketplace.billing.services.pseudonymise import (
    organization_billing_pseudonymise,
    user_billing_pseudonymise,
)
from marketplace.billing.services.purge import (
    accounting_retention_cutoff,
    organization_accounting_purge,
)
from marketplace.billing.services.statements import (
    statement_build,
    statement_finalize,
    statement_pay,
    statements_build,
    statements_close,
)
from marketplace.billing.services.topups import (
    PaymentProviderUnavailable,
    WebhookRefused,
    methods_available,
    stripe_webhook_handle,
    topup_amount_parse,
    topup_bank_received,
    topup_start,
)
from marketplace.billing.services.usage import (
    attempt_meter,
    job_cost_so_far,
    job_over_budget,
    job_settle,
)

__all__ = [
    "HoldRequest",
    "Leg",
    "ManualPaymentProvider",
    "PaymentConfirmation",
    "PaymentProvider",
    "PaymentProviderUnavailable",
    "WebhookRefused",
    "account_lock",
    "accounting_retention_cutoff",
    "attempt_meter",
    "balance_available",
    "balance_held",
    "balance_low_check",
    "billing_contact_set",
    "booking_charge",
    "booking_charged",
    "booking_net",
    "booking_price",
    "booking_refund",
    "booking_refund_quote",
    "booking_refunded",
    "credit_limit_set",
    "entry_post",
    "hold_place",
    "holds_place",
    "invoice_draft",
    "invoice_finalize",
    "invoice_void",
    "invoices_finalize",
    "job_cost_so_far",
    "job_held",
    "job_over_budget",
    "job_settle",
    "low_balance_threshold_set",
    "methods_available",
    "money_parse",
    "month_bounds",
    "organization_accounting_purge",
    "organization_billing_pseudonymise",
    "payout_batch_create",
    "payout_batch_mark_paid",
    "payout_batch_mark_sent",
    "period_close",
    "period_close_early",
    "period_parse",
    "periods_close_due",
    "periods_due",
    "provider_payable",
    "statement_build",
    "statement_finalize",
    "statement_pay",
    "statements_build",
    "statements_close",
    "stripe_webhook_handle",
    "topup_amount_parse",
    "topup_bank_received",
    "topup_record",
    "topup_start",
    "user_billing_pseudonymise",
]
