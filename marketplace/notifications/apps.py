import importlib
import pkgutil

from django.apps import AppConfig


class NotificationsConfig(AppConfig):
    name = "marketplace.notifications"
    label = "notifications"

    def ready(self) -> None:
        from marketplace.notifications import emails, topics

        # Each topic module registers its renderers when imported.
        for module in pkgutil.iter_modules(topics.__path__):
            importlib.import_module(f"{topics.__name__}.{module.name}")
        emails.email_consumer_register()
