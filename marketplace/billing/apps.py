from django.apps import AppConfig


class BillingConfig(AppConfig):
    name = "marketplace.billing"
    label = "billing"

    def ready(self) -> None:
        # Capacity and finetuning ask for money through interfaces they define; billing
        # provides them, so that billing depends on them and not the reverse.
        from marketplace.billing.providers import BillingBookingPayments, BillingJobCharging
        from marketplace.capacity.payments import booking_payments_provide
        from marketplace.finetuning.charging import job_charging_provide

        booking_payments_provide(BillingBookingPayments())
        job_charging_provide(BillingJobCharging())
