from django.apps import AppConfig


class QuotasConfig(AppConfig):
    name = "marketplace.quotas"
    label = "quotas"
