from django.apps import AppConfig


class CapacityConfig(AppConfig):
    name = "marketplace.capacity"
    label = "capacity"

    def ready(self) -> None:
        # Register the booking-moments task and its beat entry in every process.
        from marketplace.capacity import tasks  # noqa: F401
