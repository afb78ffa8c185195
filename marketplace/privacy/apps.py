from django.apps import AppConfig


class PrivacyConfig(AppConfig):
    name = "marketplace.privacy"
    label = "privacy"

    def ready(self) -> None:
        # Register the data-protection Celery tasks (and their beat entries) in every process.
        from marketplace.privacy import tasks  # noqa: F401
