from django.apps import AppConfig


class ApiConfig(AppConfig):
    name = "marketplace.api"
    label = "api"

    def ready(self) -> None:
        # Register the webhook Celery tasks in every process that loads Django (web and worker).
        from marketplace.api import tasks  # noqa: F401
