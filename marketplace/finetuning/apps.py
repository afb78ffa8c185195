from django.apps import AppConfig


class FinetuningConfig(AppConfig):
    name = "marketplace.finetuning"
    label = "finetuning"
