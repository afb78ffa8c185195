"""Completions are metered per token and billed at the price staff set per base model: exact
Decimal running totals per stream, whole cents in the ledger, idempotent on the completion id."""

from __future__ import annotations

from decimal import Decimal

import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from marketplace.billing.models import Account, JournalEntry, LedgerLine
from marketplace.billing.money import cents, org_vat_rate
from marketplace.billing.services import topup_record
from marketplace.errors import InvalidInput
from marketplace.inference.models import InferenceUsage
from marketplace.inference.services import price_set, usage_record
from tests.inference.conftest import fine_tuned
from tests.inference.test_chat_completions import ask


def _charged(org) -> Decimal:
    lines = LedgerLine.objects.filter(
        entry__key__startswith="inference:", account=Account.CUSTOMER_BALANCE, organization=org
    )
    return sum((line.amount for line in lines), Decimal("0"))


def test_each_answer_is_billed_by_its_tokens_at_the_staff_price(client_a, org_a, carol, vllm):
    topup_record(organization=org_a, amount=Decimal("100.00"), reference="t1")
    price_set(
        base_model="partage/tiny-llama",
        prompt_per_million=Decimal("1500"),
        completion_per_million=Decimal("3000"),
        created_by=carol,
    )
    job = fine_tuned(org_a)
    usages = [ask(client_a, job.fine_tuned_model).json()["usage"] for _ in range(3)]
    exact = sum(
        Decimal(u["prompt_tokens"]) * 1500 / 10**6 + Decimal(u["completion_tokens"]) * 3000 / 10**6
        for u in usages
    )
    assert exact == Decimal("0.045")  # 3 x (2 x 0.0015 + 4 x 0.003)
    rows = list(InferenceUsage.objects.filter(organization=org_a).order_by("id"))
    assert [r.amount for r in rows] == [Decimal("0.015")] * 3
    assert rows[-1].stream_amount == exact
    net = cents(exact)
    vat = cents(net * org_vat_rate(org_a))
    assert _charged(org_a) == net + vat  # 0.04 + 0.01 (FR, 20 %), not 3 x cents(0.015)
    for entry in JournalEntry.objects.filter(key__startswith="inference:"):
        assert sum(line.amount for line in entry.lines.all()) == 0


def test_recording_the_same_completion_twice_changes_nothing(org_a, vllm):
    job = fine_tuned(org_a)
    price_set(
        base_model="partage/tiny-llama",
        prompt_per_million=Decimal("10000"),
        completion_per_million=Decimal("10000"),
    )
    first = usage_record(
        organization=org_a,
        job=job,
        model="m",
        completion_id="chatcmpl-1",
        prompt_tokens=3,
        completion_tokens=5,
    )
    again = usage_record(
        organization=org_a,
        job=job,
        model="m",
        completion_id="chatcmpl-1",
        prompt_tokens=3,
        completion_tokens=5,
    )
    assert again.pk == first.pk and InferenceUsage.objects.count() == 1
    assert JournalEntry.objects.filter(key="inference:chatcmpl-1").count() == 1


@pytest.mark.django_db
# a fresh org per example (the factory), so one example's stream never leaks into another's
@hypothesis_settings(
    max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.lists(st.tuples(st.integers(0, 500), st.integers(0, 500)), min_size=1, max_size=12))
def test_the_ledger_always_holds_the_rounded_running_total(org_a_factory, tokens):
    org, job = org_a_factory()
    for index, (prompt, answer) in enumerate(tokens):
        usage_record(
            organization=org,
            job=job,
            model="m",
            completion_id=f"c-{org.pk}-{index}",
            prompt_tokens=prompt,
            completion_tokens=answer,
        )
    exact = sum((Decimal(p) * 7 + Decimal(a) * 11) / 10**6 for p, a in tokens)
    net = cents(exact)
    assert _charged(org) == net + cents(net * org_vat_rate(org))


@pytest.fixture
def org_a_factory(db):
    from marketplace.accounts.services import organization_create

    price_set(
        base_model="partage/tiny-llama",
        prompt_per_million=Decimal("7"),
        completion_per_million=Decimal("11"),
    )
    counter = iter(range(10**6))

    def make():
        org = organization_create(name="Org", slug=f"org-h-{next(counter)}", country="FR")
        return org, fine_tuned(org)

    return make


def test_an_unpriced_base_model_is_metered_at_no_charge(client_a, org_a, vllm):
    job = fine_tuned(org_a)
    assert ask(client_a, job.fine_tuned_model).status_code == 200
    [usage] = InferenceUsage.objects.all()
    assert usage.price is None and usage.amount == 0 and usage.entry is None
    assert usage.prompt_tokens == 2 and usage.completion_tokens == 4


def test_an_org_without_funds_is_refused_before_anything_runs(client_a, org_a, vllm):
    price_set(
        base_model="partage/tiny-llama",
        prompt_per_million=Decimal("1"),
        completion_per_million=Decimal("1"),
    )
    job = fine_tuned(org_a)
    response = ask(client_a, job.fine_tuned_model)
    assert response.status_code == 402
    assert response.json()["error"]["code"] == "insufficient_funds"
    assert vllm.requests == []


def test_a_price_names_a_catalog_model(db):
    with pytest.raises(InvalidInput):
        price_set(
            base_model="nope/model",
            prompt_per_million=Decimal("1"),
            completion_per_million=Decimal("1"),
        )
