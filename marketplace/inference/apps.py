from django.apps import AppConfig


class InferenceConfig(AppConfig):
    name = "marketplace.inference"
    label = "inference"
    verbose_name = "Inference on fine-tuned models"
