"""A job really runs and is invoiced: upload → job → admission on a priced pool (hold) → real
LoRA training on CPU by the local executor → settlement → invoice line = GPU-seconds x price.

The trainer runs as a separate process and reports back over HTTP, as in production; Celery
tasks run eagerly inside the live server.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from decimal import ROUND_HALF_EVEN, Decimal
from pathlib import Path
from typing import Any

import pytest
import time_machine

from marketplace.billing import services as billing
from marketplace.billing.models import Charge, JobPricing, UsageRecord
from marketplace.finetuning.models import FineTuningJob, JobAttempt, JobEvent
from tests.billing.conftest import assert_invariants, invoice_lines_for, topup
from tests.capacity import factories
from tests.conftest import chat_lines, jsonl, wait_for
from tests.finetuning.test_end_to_end import run_partner_path

pytestmark = pytest.mark.slow

# €360 per GPU-hour is €0.10 per GPU-second: a few seconds of training is worth many cents,
# so "to the cent" is a real check.
PRICE = Decimal("360.00")


@pytest.fixture
def eager_tasks(settings: Any) -> Iterator[None]:
    from workers.celery import app

    settings.CELERY_TASK_ALWAYS_EAGER = True
    app.conf.task_always_eager = True
    yield
    app.conf.task_always_eager = False


def test_a_real_job_is_invoiced_at_its_gpu_seconds_times_price(
    client_a: Any,
    upload: Any,
    live_callbacks: str,
    eager_tasks: None,
    org_a: Any,
    tmp_path: Path,
) -> None:
    pool = factories.pool(factories.provider("gpu-provider"), price=PRICE, gpus=8)
    topup(org_a, "20000.00")

    job = run_partner_path(client_a, upload, tmp_path)

    # Admitted on the priced pool: the price was snapshotted and a hold placed, then settled.
    pricing = JobPricing.objects.get(job=job)
    assert pricing.pool_id == pool.pk and pricing.price_per_gpu_hour == PRICE
    # The adapter may arrive a moment before the trainer process exits; its end meters usage.
    attempt = wait_for(
        lambda: JobAttempt.objects.filter(job=job, ended_at__isnull=False).first(),
        timeout=60,
        what="the attempt to end",
    )
    assert attempt.training_started_at is not None and attempt.ended_at is not None
    wall = Decimal((attempt.ended_at - attempt.training_started_at).total_seconds())
    record = UsageRecord.objects.get(attempt=attempt)
    assert record.gpu_seconds == wall.quantize(Decimal("0.001")) * max(job.gpu_count, 1)
    assert record.gpu_seconds > 1, "the trainer ran for more than a second"
    expected = (record.gpu_seconds * PRICE / 3600).quantize(
        Decimal("0.01"), rounding=ROUND_HALF_EVEN
    )
    charged = sum((c.net for c in Charge.objects.filter(job=job)), Decimal(0))
    assert charged == expected
    assert billing.balance_held(organization=org_a) == 0

    # The month ends; its invoice has one line for the job, to the cent.
    recorded = record.recorded_at
    start, end = billing.month_bounds(recorded.year, recorded.month)
    with time_machine.travel(end + timedelta(seconds=1), tick=False):
        [invoice] = billing.invoices_finalize(period_start=start, period_end=end)
    [line] = invoice_lines_for(job)
    assert line.invoice_id == invoice.pk
    assert line.gpu_seconds == record.gpu_seconds
    assert line.price_per_gpu_hour == PRICE
    assert line.amount == expected
    assert invoice.subtotal == expected and invoice.total == expected + invoice.vat
    assert billing.balance_available(organization=org_a) == Decimal("20000.00") - invoice.total
    assert_invariants()


def test_max_cost_stops_a_real_trainer_which_still_delivers_its_adapter(
    client_a: Any, upload: Any, live_callbacks: str, eager_tasks: None, org_a: Any
) -> None:
    """A budget of €0.05 at €0.10 per GPU-second: the first report after half a second of
    training answers finish_now; the agent signals the trainer, which finishes its step, writes
    the adapter and exits 0. Without the stop, 40 epochs would take minutes."""
    factories.pool(factories.provider("gpu-provider"), price=PRICE, gpus=8)
    topup(org_a, "20000.00")
    file_id = upload(jsonl(chat_lines(64))).json()["id"]
    response = client_a.post(
        "/v1/fine_tuning/jobs",
        {
            "model": "partage/tiny-llama",
            "training_file": file_id,
            "hyperparameters": {"n_epochs": 40, "batch_size": 1},
            "max_cost": "0.05",
        },
        format="json",
    )
    assert response.status_code == 200, response.content
    job_id = response.json()["id"]
    job = wait_for(
        lambda: (j := FineTuningJob.objects.get(pk=job_id)).status in {"succeeded", "failed"} and j,
        timeout=240,
        what="the job to stop on its budget",
    )
    assert job.status == "succeeded", [a.logs[-2000:] for a in job.attempts.all()]
    assert job.result_file_id is not None  # the adapter was delivered
    completed = JobEvent.objects.filter(job=job, message="Trainer: completed").first()
    assert completed is not None and completed.data.get("stopped_early") is True
    record = wait_for(
        lambda: UsageRecord.objects.filter(job=job).first(), timeout=60, what="usage record"
    )
    expected = (record.gpu_seconds * PRICE / 3600).quantize(
        Decimal("0.01"), rounding=ROUND_HALF_EVEN
    )
    assert expected >= Decimal("0.05")  # it ran up to its budget (and finished its step)
    assert sum((c.net for c in Charge.objects.filter(job=job)), Decimal(0)) == expected
    assert_invariants()
