from django.apps import AppConfig


class ApiConfig(AppConfig):
    name = "marketplace.api"
    label = "api"

    def ready(self) -> None:
        # Register the webhook Celery tasks in every process that loads Django (web and worker).
        from marketplace.api import tasks  # noqa: F401
        from marketplace.api.webhooks.privacy import webhooks_erase, webhooks_export
        from marketplace.privacy.registry import eraser_register, export_section_register

        export_section_register("webhooks", webhooks_export)
        eraser_register("webhooks", webhooks_erase)
