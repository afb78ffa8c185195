from django.apps import AppConfig


class PrivacyConfig(AppConfig):
    name = "marketplace.privacy"
    label = "privacy"

    def ready(self) -> None:
        # Register the data-protection Celery tasks (and their beat entries) in every process,
        # and refuse new content of an organization whose deletion is scheduled.
        from marketplace.accounts.guards import content_guard_register
        from marketplace.privacy import tasks  # noqa: F401
        from marketplace.privacy.services.erasure import erasure_content_guard

        content_guard_register("erasure_scheduled", erasure_content_guard)
