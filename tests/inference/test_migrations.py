"""Completions metered before the invoice lines existed get the cents they charged."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest
from django.db import connection

from marketplace.inference.models import InferenceUsage
from tests.inference.conftest import fine_tuned


@pytest.mark.django_db(transaction=True)
def test_the_migration_gives_earlier_completions_the_cents_they_charged(org_a: Any) -> None:
    from django.db.migrations.executor import MigrationExecutor

    job = fine_tuned(org_a)
    before = [("inference", "0001_inference_prices_and_usage")]
    executor = MigrationExecutor(connection)
    executor.migrate(before)
    old = executor.loader.project_state(before).apps
    Price, Usage = (
        old.get_model("inference", "InferencePrice"),
        old.get_model("inference", "InferenceUsage"),
    )
    cheap = Price.objects.create(
        base_model="partage/tiny-llama",
        price_per_million_prompt_tokens=1,
        price_per_million_completion_tokens=1,
    )
    dear = Price.objects.create(
        base_model="partage/tiny-llama",
        price_per_million_prompt_tokens=2,
        price_per_million_completion_tokens=2,
    )
    # Two interleaved streams: (running net, running VAT) after each completion.
    for key, price, net, vat in [
        ("a1", cheap, "0.00", "0.00"),
        ("b1", dear, "0.03", "0.01"),
        ("a2", cheap, "0.01", "0.00"),
        ("a3", cheap, "0.03", "0.01"),
        ("b2", dear, "0.04", "0.01"),
    ]:
        Usage.objects.create(
            key=key,
            organization_id=org_a.pk,
            job_id=job.pk,
            model="m",
            price=price,
            prompt_tokens=1,
            completion_tokens=1,
            stream_net_charged=Decimal(net),
            stream_vat_charged=Decimal(vat),
        )
    executor = MigrationExecutor(connection)
    executor.loader.build_graph()
    executor.migrate(executor.loader.graph.leaf_nodes())
    charged = {
        u.key: (str(u.net_charged), str(u.vat_charged)) for u in InferenceUsage.objects.all()
    }
    assert charged == {
        "a1": ("0.00", "0.00"),
        "a2": ("0.01", "0.00"),
        "a3": ("0.02", "0.01"),
        "b1": ("0.03", "0.01"),
        "b2": ("0.01", "0.00"),
    }
