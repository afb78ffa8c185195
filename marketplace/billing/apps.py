from django.apps import AppConfig


class BillingConfig(AppConfig):
    name = "marketplace.billing"
    label = "billing"

    def ready(self) -> None:
        # Register the period-closing task and its beat entry in every process that loads Django.
        from marketplace.billing import tasks  # noqa: F401
