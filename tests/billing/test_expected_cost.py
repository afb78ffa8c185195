"""The expected cost of a job (issue 18): its tokens (file size x epochs, at the tokens per byte
measured for its base model) at the throughput measured on the flavor from what earlier jobs
were billed: an overhead paid once plus seconds per token, fitted (Theil-Sen) when sizes differ. The worst
case (what is held) is shown separately."""

from __future__ import annotations

import io
import re
from decimal import Decimal
from typing import Any

import pytest

from marketplace.accounts.models import Organization
from marketplace.billing.selectors import expected_cost, throughput_measured
from marketplace.capacity.models import Pool
from marketplace.finetuning import services as jobs
from marketplace.finetuning.models import FineTuningJob
from tests.billing.conftest import run_job, topup

MODEL = "partage/tiny-llama"


def _file(org: Organization, size: int) -> Any:
    line = b'{"text": "' + b"x" * 40 + b'"}\n'
    body = line * (size // len(line))
    return jobs.file_create(organization=org, stream=io.BytesIO(body), filename="t.jsonl")


def _finished(
    org: Organization, pool: Pool, clock: Any, *, size: int, epochs: int, seconds: float,
    tokens: int,
) -> FineTuningJob:  # fmt: skip
    job = jobs.job_create(
        organization=org,
        model=MODEL,
        training_file=_file(org, size).id,
        hyperparameters={"n_epochs": epochs},
    )
    run_job(job, pool, clock, seconds)
    FineTuningJob.objects.filter(pk=job.pk).update(trained_tokens=tokens)
    return job


@pytest.fixture
def measured(org_a: Organization, pool: Pool, clock: Any) -> list[FineTuningJob]:
    """Three jobs billed 30 s to load and evaluate, then 1 s per 100 tokens; 0.25 token/byte."""
    topup(org_a, "500.00")
    return [
        _finished(org_a, pool, clock, size=s, epochs=e, seconds=30 + t / 100, tokens=t)
        for s, e, t in ((4_100, 2, 2_050), (8_200, 3, 6_150), (16_400, 1, 4_100))
    ]


def test_throughput_is_fitted_from_what_jobs_were_billed(measured: list[Any]) -> None:
    basis = throughput_measured(base_model=MODEL, gpu_flavor="h100-80g")
    assert basis is not None and basis.jobs == 3
    assert basis.overhead_seconds == pytest.approx(30, abs=0.01)
    assert basis.seconds_per_token == pytest.approx(0.01, rel=1e-4)
    assert basis.tokens_per_byte == pytest.approx(0.25, rel=0.02)
    assert throughput_measured(base_model="partage/tiny-gpt2", gpu_flavor="h100-80g") is None
    assert throughput_measured(base_model=MODEL, gpu_flavor="a100-40g") is None


def test_an_unseen_size_is_expected_from_the_fit(org_a: Organization, measured: list[Any]) -> None:
    # 41,000 bytes x 2 epochs x 0.25 = 20,500 tokens: 30 + 205 = 235 s at EUR 2.50/h = 0.1632
    expected = expected_cost(
        org_a, base_model=MODEL, gpu_flavor="", gpu_count=1, training_bytes=41_000, epochs=2
    )
    assert expected is not None
    assert expected.tokens == pytest.approx(20_500, rel=0.02)
    assert expected.seconds == pytest.approx(235, rel=0.02)
    net = Decimal("0.16")
    assert expected.amount == net + (net * Decimal("0.20")).quantize(Decimal("0.01"))


def test_one_measured_job_scales_in_proportion(org_a: Organization, pool: Pool, clock: Any) -> None:
    topup(org_a, "50.00")
    _finished(org_a, pool, clock, size=8_200, epochs=2, seconds=82, tokens=4_100)
    basis = throughput_measured(base_model=MODEL, gpu_flavor="h100-80g")
    assert basis is not None and basis.overhead_seconds == 0
    assert basis.seconds(8_200) == pytest.approx(164)


def test_the_review_shows_the_expected_cost_beside_the_most(
    org_a: Organization, alice: Any, measured: list[Any], client: Any
) -> None:
    training = _file(org_a, 41_000)
    client.force_login(alice)
    form = {
        "model": MODEL,
        "training_file": training.id,
        "n_epochs": 2,
        "batch_size": 8,
        "learning_rate_multiplier": 1.0,
        "lora_r": 8,
        "lora_alpha": 16,
        "lora_dropout": 0.05,
        "max_seq_length": 1024,
        "target_modules": "all-linear",
        "gpu_count": 1,
        "action": "review",
    }
    response = client.post("/jobs/new/", form)
    body = response.content.decode()
    assert response.status_code == 200, body
    found = re.search(r'id="estimate-expected" data-seconds="([0-9.]+)">€0.19<', body)
    assert found and float(found[1]) == pytest.approx(235, rel=0.02), body  # 0.16 + VAT
    assert "3 finished partage/tiny-llama job(s)" in body and "tokens/s" in body
    assert 'id="estimate-cost">€' in body  # the most, held until the job ends


def test_one_slow_job_moves_the_fit_little(org_a: Organization, pool: Pool, clock: Any) -> None:
    """A job billed three times its due (a busy machine, a cold model cache) among five on the
    line 30 s + 1 s per 100 tokens: the fit stays on the line (least squares would not)."""
    topup(org_a, "500.00")
    for size, tokens in ((4_100, 1_000), (8_200, 2_000), (12_300, 3_000), (16_400, 4_000)):
        _finished(org_a, pool, clock, size=size, epochs=1, seconds=30 + tokens / 100, tokens=tokens)
    _finished(org_a, pool, clock, size=10_250, epochs=1, seconds=3 * (30 + 25), tokens=2_500)
    basis = throughput_measured(base_model=MODEL, gpu_flavor="h100-80g")
    assert basis is not None
    assert basis.seconds(6_000) == pytest.approx(90, rel=0.05)
