"""Per-token inference charges are on the invoice: one line per base model and price, with its
tokens and rates, adding up with the job and booking lines to exactly what the ledger charged in
the period. Inference is platform revenue: provider statements do not carry it."""

from __future__ import annotations

import csv
import io
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from django.urls import reverse

from marketplace.accounts.models import Organization
from marketplace.api.views_billing import line_object
from marketplace.billing import services as billing
from marketplace.billing.exports import invoice_csv, invoice_html, invoice_pdf
from marketplace.billing.models import Account, InvoiceLine, LedgerLine
from marketplace.billing.money import cents, org_vat_rate
from marketplace.inference.models import InferenceUsage
from marketplace.inference.services import price_set, usage_record
from tests.billing.conftest import T0, assert_invariants, book, job_new, run_job, topup
from tests.inference.conftest import fine_tuned, vllm  # noqa: F401 (a fixture)
from tests.inference.test_chat_completions import ask

CHARGED = [Account.PLATFORM_REVENUE, Account.PROVIDER_PAYABLE, Account.VAT_PAYABLE]


def ledger_charged(org: Organization, start: datetime, end: datetime) -> tuple[Decimal, Decimal]:
    """(net, VAT) the ledger charged the org in [start, end): what its entries credited to
    revenue, the providers and the tax office (refunds count negative)."""
    legs = LedgerLine.objects.filter(
        entry__organization=org,
        entry__created_at__gte=start,
        entry__created_at__lt=end,
        account__in=CHARGED,
    )
    net = -sum((leg.amount for leg in legs if leg.account != Account.VAT_PAYABLE), Decimal(0))
    vat = -sum((leg.amount for leg in legs if leg.account == Account.VAT_PAYABLE), Decimal(0))
    return net, vat


def complete(org: Organization, job: Any, key: str, prompt: int, answer: int) -> InferenceUsage:
    return usage_record(
        organization=org,
        job=job,
        model=job.fine_tuned_model,
        completion_id=key,
        prompt_tokens=prompt,
        completion_tokens=answer,
    )


def test_a_month_of_jobs_bookings_and_completions_is_one_invoice_equal_to_the_ledger(
    org_a: Any,
    provider_org: Any,
    pool: Any,
    clock: Any,
    client_a: Any,
    vllm: Any,  # noqa: F811
) -> None:
    topup(org_a, "100.00")
    booking = book(org_a, pool, gpus=1, start=T0 + timedelta(hours=1), hours=1)  # €2.50
    run_job(job_new(org_a), pool, clock, seconds=2469)  # €1.714583… → €1.71

    first = price_set(
        base_model="partage/tiny-llama",
        prompt_per_million=Decimal("2.5"),
        completion_per_million=Decimal("10"),
    )
    model_a, model_b = fine_tuned(org_a), fine_tuned(org_a)
    # 7 x (1234 x 2.5 + 567 x 10) / 1e6 = 7 x €0.008755 = €0.061285: no single completion is a
    # cent, the stream is 6 cents (and 1 cent of VAT).
    for n in range(7):
        clock.shift(timedelta(minutes=5))
        complete(org_a, model_a if n % 2 else model_b, f"c-{n}", 1234, 567)
    clock.shift(timedelta(minutes=5))
    answer = ask(client_a, model_a.fine_tuned_model)  # one through the endpoint: 2 + 4 tokens
    assert answer.status_code == 200, answer.content
    # Staff change the price mid-month: a second stream, a second line.
    second = price_set(
        base_model="partage/tiny-llama",
        prompt_per_million=Decimal("3"),
        completion_per_million=Decimal("12.5"),
    )
    for n in range(5):
        clock.shift(timedelta(minutes=5))
        complete(org_a, model_a, f"d-{n}", 800, 300)  # 5 x €0.00615 = €0.03075 → €0.03
    # December: on the next invoice, not this one.
    clock.move_to(datetime(2026, 12, 1, 0, 0, 5, tzinfo=T0.tzinfo))
    for n in range(3):
        complete(org_a, model_b, f"e-{n}", 1000, 1000)  # 3 x €0.0155 = €0.0465: 0.09 total

    november = billing.month_bounds(2026, 11)
    [invoice] = billing.invoices_finalize(period_start=november[0], period_end=november[1])

    lines = list(InvoiceLine.objects.filter(invoice=invoice))
    inference = {line.price_per_million_prompt_tokens: line for line in lines if line.base_model}
    assert set(inference) == {first.price_per_million_prompt_tokens, Decimal("3.0000")}
    on_first, on_second = inference[Decimal("2.5000")], inference[Decimal("3.0000")]
    assert (on_first.prompt_tokens, on_first.completion_tokens) == (7 * 1234 + 2, 7 * 567 + 4)
    assert on_first.price_per_million_completion_tokens == Decimal("10.0000")
    exact_first = (Decimal(7 * 1234 + 2) * Decimal("2.5") + Decimal(7 * 567 + 4) * 10) / 10**6
    assert on_first.amount == cents(exact_first) == Decimal("0.06")
    assert on_first.vat == cents(on_first.amount * org_vat_rate(org_a))
    assert (on_second.prompt_tokens, on_second.completion_tokens) == (4000, 1500)
    assert (
        on_second.price_per_million_completion_tokens == second.price_per_million_completion_tokens
    )
    assert on_second.amount == Decimal("0.03")
    assert "Inference on partage/tiny-llama: 8 completion(s) on 2 fine-tuned model(s)" in (
        on_first.description
    )
    for line in inference.values():  # platform revenue: no provider, no provider share
        assert line.provider_id is None and line.pool_id is None and line.job_id is None
        assert (line.fee, line.provider_amount) == (line.amount, Decimal("0.00"))
        assert not line.is_correction
    # Job and booking lines are there as before.
    assert {bool(line.job_id) for line in lines if not line.base_model} == {True, False}
    assert any(line.booking_id == booking.pk for line in lines)

    # The invoice shows every cent the ledger charged in November, and nothing more.
    net, vat = ledger_charged(org_a, *november)
    assert (invoice.subtotal, invoice.vat) == (net, vat)
    assert (
        invoice.total
        == net + vat
        == Decimal("2.50")
        + Decimal("1.71")
        + Decimal("0.09")
        + (Decimal("0.50") + Decimal("0.34") + Decimal("0.02"))
    )

    # Every rendering carries the inference lines.
    rows = list(csv.DictReader(io.StringIO(invoice_csv(invoice))))
    tokens = [row for row in rows if row["base_model"] == "partage/tiny-llama"]
    assert sorted(
        (row["prompt_tokens"], row["completion_tokens"], row["amount"]) for row in tokens
    ) == [
        ("4000", "1500", "0.03"),
        (str(7 * 1234 + 2), str(7 * 567 + 4), "0.06"),
    ]
    html = invoice_html(invoice)
    assert f"{7 * 1234 + 2} + {7 * 567 + 4} tokens" in html
    assert "2.5000 / 10.0000 per M tokens" in html
    assert invoice_pdf(invoice).startswith(b"%PDF")
    body = line_object(on_first)
    assert body["base_model"] == "partage/tiny-llama" and body["prompt_tokens"] == 7 * 1234 + 2
    assert body["price_per_million_completion_tokens"] == "10.0000"

    # December's completions go on December's invoice, which equals December's charges; the
    # stream's cents across both invoices are its rounded running total (no cent twice).
    clock.move_to(datetime(2027, 1, 1, 1, 0, tzinfo=T0.tzinfo))
    december = billing.month_bounds(2026, 12)
    [later] = billing.invoices_finalize(period_start=december[0], period_end=december[1])
    [december_line] = InvoiceLine.objects.filter(invoice=later)
    assert (december_line.prompt_tokens, december_line.completion_tokens) == (3000, 3000)
    assert (later.subtotal, later.vat) == ledger_charged(org_a, *december)
    assert december_line.price_per_million_prompt_tokens == Decimal("3.0000")  # the latest price
    stream_total = 5 * Decimal("0.00615") + 3 * Decimal("0.0155")  # €0.07725
    assert on_second.amount + december_line.amount == cents(stream_total) == Decimal("0.08")

    # The provider's statement has its pool's booking and job usage only.
    [statement] = billing.statements_build(period_start=november[0], period_end=november[1])
    assert statement.provider_id == provider_org.pk
    assert statement.gross == Decimal("2.50") + Decimal("1.71")
    assert_invariants()


def test_a_draft_previews_the_inference_lines_and_free_models_bill_nothing(
    org_a: Any, clock: Any, admin_client: Any
) -> None:
    topup(org_a, "10.00")
    job = fine_tuned(org_a)
    complete(org_a, job, "free-1", 10_000, 10_000)  # no price set: served at no charge
    price_set(
        base_model="partage/tiny-llama",
        prompt_per_million=Decimal("100"),
        completion_per_million=Decimal("100"),
    )
    complete(org_a, job, "paid-1", 10_000, 5_000)  # €1.50
    november = billing.month_bounds(2026, 11)
    draft = billing.invoice_draft(
        organization=org_a, period_start=november[0], period_end=november[1]
    )
    [line] = InvoiceLine.objects.filter(invoice=draft)
    assert (line.prompt_tokens, line.completion_tokens, line.amount) == (
        10_000,
        5_000,
        Decimal("1.50"),
    )
    assert (draft.subtotal, draft.vat) == ledger_charged(org_a, *november)

    # Staff see the line's tokens in the invoice's admin page, and each completion's cents.
    page = admin_client.get(reverse("admin:billing_invoice_change", args=[draft.pk]))
    assert page.status_code == 200 and "Inference on partage/tiny-llama" in page.content.decode()
    assert "10000" in page.content.decode() and "5000" in page.content.decode()
    usage = admin_client.get(reverse("admin:inference_inferenceusage_changelist"))
    assert usage.status_code == 200 and "paid-1" in usage.content.decode()


def test_completions_no_invoice_billed_in_their_month_are_a_late_line_on_the_next(
    org_a: Any, clock: Any
) -> None:
    topup(org_a, "10.00")
    job = fine_tuned(org_a)
    price_set(
        base_model="partage/tiny-llama",
        prompt_per_million=Decimal("100"),
        completion_per_million=Decimal("100"),
    )
    complete(org_a, job, "nov-1", 10_000, 0)  # €1.00, November (no November invoice is made)
    clock.move_to(datetime(2026, 12, 10, tzinfo=T0.tzinfo))
    complete(org_a, job, "dec-1", 0, 20_000)  # €2.00, December
    clock.move_to(datetime(2027, 1, 2, tzinfo=T0.tzinfo))
    december = billing.month_bounds(2026, 12)
    [invoice] = billing.invoices_finalize(period_start=december[0], period_end=december[1])
    late, current = InvoiceLine.objects.filter(invoice=invoice).order_by("-is_correction")
    assert (late.is_correction, late.amount, late.prompt_tokens) == (True, Decimal("1.00"), 10_000)
    assert "(from an earlier period)" in late.description
    assert (current.is_correction, current.amount, current.completion_tokens) == (
        False,
        Decimal("2.00"),
        20_000,
    )
    assert invoice.subtotal == Decimal("3.00") == ledger_charged(org_a, T0, december[1])[0]
