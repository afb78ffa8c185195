from django.apps import AppConfig


class ApiConfig(AppConfig):
    name = "marketplace.api"
    label = "api"

    def ready(self) -> None:
        # Register the webhook Celery tasks in every process that loads Django (web and worker),
        # and webhook delivery as a consumer of the domain-event outbox.
        from marketplace.api import tasks  # noqa: F401
        from marketplace.api.webhooks.consumer import webhook_consumers_register
        from marketplace.api.webhooks.privacy import webhooks_erase, webhooks_export
        from marketplace.privacy.registry import eraser_register, export_section_register

        webhook_consumers_register()
        # What the webhook tables add to an organization's export and erasure.
        export_section_register("webhooks", webhooks_export)
        eraser_register("webhooks", webhooks_erase)
