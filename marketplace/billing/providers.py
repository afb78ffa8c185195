"""Billing's side of the interfaces capacity and finetuning define for money
(marketplace/capacity/payments.py, marketplace/finetuning/charging.py)."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from marketplace.capacity.models import Booking
    from marketplace.finetuning.models import FineTuningJob, JobAttempt


class BillingBookingPayments:
    def net(self, *, gpus: int, start: datetime, end: datetime, price: Decimal) -> Decimal:
        from marketplace.billing.services.bookings import booking_net

        return booking_net(gpus=gpus, start=start, end=end, price=price)

    def charge(self, *, booking: Booking) -> Any:
        from marketplace.billing.services.bookings import booking_charge

        return booking_charge(booking=booking)

    def refund(self, *, booking: Booking, refund_amount: Decimal) -> Any:
        from marketplace.billing.services.bookings import booking_refund

        return booking_refund(booking=booking, refund_amount=refund_amount)


class BillingJobCharging:
    def attempt_meter(self, *, attempt: JobAttempt) -> Any:
        from marketplace.billing.services import attempt_meter

        return attempt_meter(attempt=attempt)

    def job_settle(self, *, job: FineTuningJob) -> None:
        from marketplace.billing.services import job_settle

        job_settle(job=job)

    def job_over_budget(self, *, job: FineTuningJob) -> bool:
        from marketplace.billing.services import job_over_budget

        return job_over_budget(job=job)
