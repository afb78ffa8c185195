from django.apps import AppConfig


class InferenceConfig(AppConfig):
    name = "marketplace.inference"
    label = "inference"
    verbose_name = "Inference on fine-tuned models"

    def ready(self) -> None:
        # Billing invoices the per-token charges through an interface it defines; inference
        # provides it, so that inference depends on billing and not the reverse.
        from marketplace.billing.usage_sources import inference_usage_provide
        from marketplace.inference.invoicing import InferenceInvoicing

        inference_usage_provide(InferenceInvoicing())
