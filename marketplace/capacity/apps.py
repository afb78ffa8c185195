from django.apps import AppConfig


class CapacityConfig(AppConfig):
    name = "marketplace.capacity"
    label = "capacity"

    def ready(self) -> None:
        # Register the booking-moments task and its beat entry in every process.
        from marketplace.capacity import tasks  # noqa: F401
        from marketplace.capacity.selectors import storage_refusal
        from marketplace.finetuning.storage import storage_residency_provide

        # Residency covers the data too: finetuning asks before it stores anything.
        storage_residency_provide(storage_refusal)
