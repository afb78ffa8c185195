from django.apps import AppConfig


class EventsConfig(AppConfig):
    name = "marketplace.events"
    label = "events"

    def ready(self) -> None:
        # Register the dispatch and sweep tasks in every process that loads Django.
        from marketplace.events import tasks  # noqa: F401
