from django.apps import AppConfig


class CapacityConfig(AppConfig):
    name = "marketplace.capacity"
    label = "capacity"
