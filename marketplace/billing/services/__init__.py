"""Writes for billing: metering, holds, the ledger, top-ups, invoices, statements and payouts.

The job life cycle calls attempt_meter, job_settle and job_over_budget (usage.py); the admission
pass calls hold_place (holds_place for a batch; holds.py); capacity's booking services call
booking_charge and booking_refund. The money rules (rounding, VAT, fee split) live in
marketplace/billing/money.py.
"""

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
from marketplace.billing.services.pseudonymise import (
    organization_billing_pseudonymise,
    user_billing_pseudonymise,
)
from marketplace.billing.services.statements import (
    statement_build,
    statement_finalize,
    statement_pay,
    statements_build,
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
    "account_lock",
    "attempt_meter",
    "balance_available",
    "balance_held",
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
    "money_parse",
    "month_bounds",
    "organization_billing_pseudonymise",
    "period_parse",
    "provider_payable",
    "statement_build",
    "statement_finalize",
    "statement_pay",
    "statements_build",
    "topup_record",
    "user_billing_pseudonymise",
]
