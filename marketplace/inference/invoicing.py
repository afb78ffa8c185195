"""Inference's side of billing's invoice interface (marketplace/billing/usage_sources.py): the
priced completions an invoice claims, per org and stream, with exactly the cents they charged.

The aggregation runs in the database, one row per (org, price, late) comes back.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal

from django.db.models import Case, Count, Sum, When

from marketplace.billing.money import exact_cents
from marketplace.billing.services.invoices import uninvoiced
from marketplace.billing.usage_sources import InferenceTotal
from marketplace.inference.models import InferencePrice, InferenceUsage


class InferenceInvoicing:
    def totals(
        self,
        *,
        period_start: datetime,
        period_end: datetime,
        covered: dict[int, datetime],
        organization_ids: list[int] | None,
    ) -> list[InferenceTotal]:
        claimed = uninvoiced(
            period_end, covered, organization_ids, model=InferenceUsage, stamp="created_at"
        ).filter(price__isnull=False)  # an unpriced model is served at no charge: nothing billed
        rows = (
            claimed.annotate(
                late=Case(When(created_at__lt=period_start, then=1), default=0),
            )
            .values("organization_id", "price_id", "late")
            .annotate(
                completions=Count("id"),
                models=Count("model", distinct=True),
                prompt=Sum("prompt_tokens"),
                completion=Sum("completion_tokens"),
                net=Sum("net_charged"),
                vat=Sum("vat_charged"),
            )
            .order_by()
        )
        rows = list(rows)
        prices = InferencePrice.objects.in_bulk({row["price_id"] for row in rows})
        totals = []
        for row in rows:
            price = prices[row["price_id"]]
            totals.append(
                InferenceTotal(
                    organization_id=row["organization_id"],
                    base_model=price.base_model,
                    price_per_million_prompt_tokens=Decimal(price.price_per_million_prompt_tokens),
                    price_per_million_completion_tokens=Decimal(
                        price.price_per_million_completion_tokens
                    ),
                    completions=row["completions"],
                    models=row["models"],
                    prompt_tokens=int(row["prompt"] or 0),
                    completion_tokens=int(row["completion"] or 0),
                    net=exact_cents(row["net"]),
                    vat=exact_cents(row["vat"]),
                    late=bool(row["late"]),
                )
            )
        return totals
