"""Usage that other apps charge to the ledger and that invoices must show: billing's side.

Inference (marketplace/inference) charges per token through billing's ledger, so it depends on
billing; billing cannot import it back. Billing defines here what it needs to invoice that
usage, and the inference app provides it at start-up (`InferenceConfig.ready`), the way billing
provides capacity's and finetuning's money interfaces (capacity/payments.py,
finetuning/charging.py).

An install without the inference app has no inference usage: no provider, no lines.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Protocol


@dataclass(frozen=True)
class InferenceTotal:
    """An org's completions on one priced stream (a base model at one price), recorded in the
    range an invoice claims: their tokens and exactly the cents their ledger entries charged."""

    organization_id: int
    base_model: str
    price_per_million_prompt_tokens: Decimal
    price_per_million_completion_tokens: Decimal
    completions: int
    models: int  # distinct fine-tuned models asked
    prompt_tokens: int
    completion_tokens: int
    net: Decimal  # the sum of what the completions' ledger entries charged, before VAT
    vat: Decimal
    late: bool  # recorded before the invoice's period: its own invoice could not bill it


class InferenceUsageSource(Protocol):
    def totals(
        self,
        *,
        period_start: datetime,
        period_end: datetime,
        covered: dict[int, datetime],
        organization_ids: list[int] | None,
    ) -> list[InferenceTotal]:
        """Per org and stream, the usage recorded before period_end that no finalized invoice
        billed (claimed with billing's `uninvoiced` range, on the usage's stamp taken under the
        metering lock), split into late (before period_start) and in-period totals."""
        ...


_source: InferenceUsageSource | None = None


def inference_usage_provide(source: InferenceUsageSource | None) -> None:
    global _source
    _source = source


def inference_totals(
    *,
    period_start: datetime,
    period_end: datetime,
    covered: dict[int, datetime],
    organization_ids: list[int] | None,
) -> list[InferenceTotal]:
    if _source is None:
        return []
    return _source.totals(
        period_start=period_start,
        period_end=period_end,
        covered=covered,
        organization_ids=organization_ids,
    )
