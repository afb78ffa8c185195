from django.apps import AppConfig


class ApiConfig(AppConfig):
    name = "marketplace.api"
    label = "api"

    def ready(self) -> None:
        # Register the webhook Celery tasks in every process that loads Django (web and worker),
        # and webhook delivery as a consumer of the domain-event outbox.
        from marketplace.api import tasks  # noqa: F401
        from marketplace.api.webhooks.consumer import webhook_consumers_register

        webhook_consumers_register()
