"""Writes for inference: answer a chat completion on a fine-tuned model, and meter and bill it.

THE BILLING RULE. A completion costs prompt_tokens x P_prompt / 1e6 + completion_tokens x
P_completion / 1e6 EUR (exact, unrounded), at the latest price staff set for the base model.
Each org's completions at one price form a stream; with C its exact running total,
net(C) = round_half_even(C, 0.01) and vat(C) = round_half_even(net(C) x VAT rate, 0.01), and each
completion posts the difference of net and VAT before and after it to the ledger (zero when the
cents did not move). So a stream of tiny requests is charged exactly what it costs in one piece,
and no cent is ever charged twice. The completion id is the idempotency key of both the usage
row and the ledger entry: recording it again changes nothing.

Each row keeps the cents its entry charged (net_charged, vat_charged) and is stamped under the
metering lock, so an invoice claims every completion once, by created_at, and its inference
lines add up to what the ledger charged (invoicing.py). Inference is platform revenue.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from django.db import transaction
from django.utils import timezone

from marketplace.accounts.models import Organization
from marketplace.billing.models import Account, BillingAccount, JournalEntry
from marketplace.billing.money import ZERO, cents, org_vat_rate
from marketplace.billing.services.ledger import Leg, account_lock, balance_available, entry_post
from marketplace.billing.services.usage import metering_lock
from marketplace.errors import InsufficientFunds
from marketplace.finetuning.models import FineTuningJob
from marketplace.inference import selectors
from marketplace.inference.backends import ChatRequest, Delta, backend_for
from marketplace.inference.models import InferencePrice, InferenceUsage

logger = logging.getLogger("partage.inference")
MILLION = Decimal(1_000_000)


@dataclass
class Completion:
    """A chat completion under way: iterate `deltas`; `usage` is set once they are exhausted."""

    id: str
    created: int
    model: str
    job: FineTuningJob
    deltas: Iterator[Delta]
    usage: InferenceUsage | None = None
    finish_reason: str | None = None


def completion_cost(
    price: InferencePrice | None, prompt_tokens: int, completion_tokens: int
) -> Decimal:
    if price is None:
        return Decimal(0)
    return (
        Decimal(prompt_tokens) * price.price_per_million_prompt_tokens
        + Decimal(completion_tokens) * price.price_per_million_completion_tokens
    ) / MILLION


def _funds_check(organization: Organization, price: InferencePrice | None) -> None:
    if price is None or (
        price.price_per_million_prompt_tokens == 0
        and price.price_per_million_completion_tokens == 0
    ):
        return
    account = BillingAccount.objects.filter(organization=organization).first()
    credit = account.credit_limit if account else ZERO
    if balance_available(organization=organization) + credit <= 0:
        raise InsufficientFunds(
            "Your organization's balance is used up: top it up (Billing) to use fine-tuned models.",
        )


def chat_completion_start(
    *, organization: Organization, model: str, request: ChatRequest
) -> Completion:
    """Authorize `model` for the org, check its funds, and start the answer on its backend."""
    job = selectors.fine_tuned_model_resolve(organization, model)
    _funds_check(organization, selectors.price_for(job.model))
    completion_id = f"chatcmpl-{uuid.uuid4().hex}"
    completion = Completion(
        id=completion_id, created=int(time.time()), model=model, job=job, deltas=iter(())
    )
    upstream = backend_for(job.model).stream(job=job, request=request)
    completion.deltas = _metered(completion, upstream, organization)
    return completion


def _metered(
    completion: Completion, upstream: Iterator[Delta], org: Organization
) -> Iterator[Delta]:
    """Pass the deltas through; record the usage when the server reports it (the last delta)."""
    for delta in upstream:
        if delta.prompt_tokens is not None or delta.finish_reason is not None:
            completion.finish_reason = delta.finish_reason
            completion.usage = usage_record(
                organization=org,
                job=completion.job,
                model=completion.model,
                completion_id=completion.id,
                prompt_tokens=delta.prompt_tokens or 0,
                completion_tokens=delta.completion_tokens or 0,
            )
        yield delta


def usage_record(
    *,
    organization: Organization,
    job: FineTuningJob,
    model: str,
    completion_id: str,
    prompt_tokens: int,
    completion_tokens: int,
) -> InferenceUsage:
    """Meter one completion and charge its stream's moved cents. Idempotent on completion_id."""
    existing = InferenceUsage.objects.filter(key=completion_id).first()
    if existing is not None:
        return existing
    price = selectors.price_for(job.model)
    amount = completion_cost(price, prompt_tokens, completion_tokens)
    with transaction.atomic():
        # Stamped under the metering lock, like fine-tuning usage and booking charges: an
        # invoice cut waits for it, and a completion stamped after the cut is on the next one.
        metering_lock()
        account_lock(organization_id=organization.pk)  # one writer per org's streams
        existing = InferenceUsage.objects.filter(key=completion_id).first()
        if existing is not None:
            return existing
        previous = (
            InferenceUsage.objects.filter(organization=organization, price=price)
            .order_by("-id")
            .first()
        )
        before_amount = previous.stream_amount if previous else ZERO
        before_net = previous.stream_net_charged if previous else ZERO
        before_vat = previous.stream_vat_charged if previous else ZERO
        total = before_amount + amount
        net = cents(total)
        vat = cents(net * org_vat_rate(organization))
        entry = None
        if net != before_net or vat != before_vat:
            entry = entry_post(
                key=f"inference:{completion_id}",
                kind=JournalEntry.Kind.CAPTURE,
                organization_id=organization.pk,
                job_id=job.id,
                memo=f"Inference on {model}: {prompt_tokens}+{completion_tokens} tokens",
                legs=[
                    Leg(
                        Account.CUSTOMER_BALANCE,
                        (net - before_net) + (vat - before_vat),
                        organization.pk,
                    ),
                    Leg(Account.PLATFORM_REVENUE, -(net - before_net)),
                    Leg(Account.VAT_PAYABLE, -(vat - before_vat)),
                ],
            )
        return InferenceUsage.objects.create(
            key=completion_id,
            organization=organization,
            job=job,
            model=model,
            price=price,
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            amount=amount,
            stream_amount=total,
            stream_net_charged=net,
            stream_vat_charged=vat,
            net_charged=net - before_net,
            vat_charged=vat - before_vat,
            entry=entry,
            # Its entry's stamp (taken under the metering lock): the invoice that claims the
            # completion is the one whose period holds the ledger's charge.
            created_at=entry.created_at if entry is not None else timezone.now(),
        )


def price_set(
    *,
    base_model: str,
    prompt_per_million: Decimal,
    completion_per_million: Decimal,
    created_by: Any = None,
) -> InferencePrice:
    """Staff set the per-token price of a base model (a new row; earlier usage keeps its own)."""
    from workers import catalog

    try:
        catalog.get_entry(base_model)
    except catalog.CatalogError as e:
        from marketplace.errors import InvalidInput

        raise InvalidInput(str(e), param="base_model") from e
    return InferencePrice.objects.create(
        base_model=base_model,
        price_per_million_prompt_tokens=Decimal(prompt_per_million),
        price_per_million_completion_tokens=Decimal(completion_per_million),
        created_by=created_by,
    )
