from django.apps import AppConfig


class QuotasConfig(AppConfig):
    name = "marketplace.quotas"
    label = "quotas"

    def ready(self) -> None:
        # Finetuning asks for admissions, and capacity reads live allocations, through
        # interfaces they define and quotas provides: quotas depends on them, not the reverse.
        from marketplace.capacity.running import live_allocations_provide
        from marketplace.finetuning.admission import admission_provide
        from marketplace.quotas.admission_provider import QuotasAdmission
        from marketplace.quotas.selectors import live_allocations_on_pools

        admission_provide(QuotasAdmission())
        live_allocations_provide(live_allocations_on_pools)
