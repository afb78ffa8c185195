"""Events found by the periodic sweep: booking started and ended, invoice finalized, quota
threshold reached. Each is made by the owning domain's real services, announced once, signed
and delivered, and only to organizations subscribed to it."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import standardwebhooks
from django.utils import timezone

from marketplace.api.models import WebhookDelivery, WebhookEndpoint, WebhookEvent
from marketplace.api.webhooks import services as webhooks
from marketplace.api.webhooks.scheduled import webhook_scheduled_events_sweep
from marketplace.billing.services import invoice_draft, invoice_finalize, topup_record
from marketplace.billing.services.invoices import month_bounds
from marketplace.capacity.services import booking_create
from marketplace.quotas import services as quotas
from tests.quotas.conftest import flavor_make, job_submit, plan_make, pool_make

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(autouse=True)
def _private_broker(tmp_path: Path, settings: Any) -> None:
    """Admission and dispatch tasks land in a private folder: no trainer runs here."""
    from workers.celery import app

    if settings.REDIS_URL:
        return
    folder = tmp_path / "broker"
    (folder / "queue").mkdir(parents=True)
    options = {
        "data_folder_in": str(folder / "queue"),
        "data_folder_out": str(folder / "queue"),
        "store_processed": False,
    }
    settings.CELERY_BROKER_TRANSPORT_OPTIONS = options
    app.conf.broker_transport_options = options


def _subscribe(org: Any, url: str, types: list[str]) -> WebhookEndpoint:
    return webhooks.webhook_endpoint_create(
        organization=org, name="ops", url=url, event_types=types
    )


def _received(receiver: Any, endpoint: WebhookEndpoint) -> list[dict[str, Any]]:
    """The bodies the receiver got, each verified with the endpoint's secret."""
    verifier = standardwebhooks.Webhook(endpoint.secret)
    return [verifier.verify(r.body, r.headers) for r in receiver.received]


def test_booking_start_and_end_are_announced_once_each(
    org_a: Any, org_b: Any, webhook_receiver: Any, eager_celery: None
) -> None:
    pool_make(flavor=flavor_make(), gpus=8)
    topup_record(organization=org_a, amount="100000", reference="t-a")
    endpoint = _subscribe(org_a, webhook_receiver.url, ["booking.started", "booking.ended"])
    # org B subscribes too but has no booking: it gets nothing.
    _subscribe(org_b, webhook_receiver.url, ["booking.started", "booking.ended"])
    start = timezone.now() + timedelta(minutes=5)
    booking = booking_create(
        organization=org_a,
        flavor="h100-80g",
        gpu_count=2,
        start=start,
        end=start + timedelta(hours=2),
    )

    assert webhook_scheduled_events_sweep(now=start - timedelta(seconds=1)) == 0
    assert webhook_scheduled_events_sweep(now=start + timedelta(seconds=1)) == 1
    assert webhook_scheduled_events_sweep(now=start + timedelta(minutes=30)) == 0  # once
    assert webhook_scheduled_events_sweep(now=booking.end + timedelta(seconds=1)) == 1
    assert webhook_scheduled_events_sweep(now=booking.end + timedelta(minutes=1)) == 0

    bodies = _received(webhook_receiver, endpoint)
    assert [(b["type"], b["data"]["id"]) for b in bodies] == [
        ("booking.started", booking.public_id),
        ("booking.ended", booking.public_id),
    ]
    assert bodies[0]["data"]["gpu_count"] == 2
    assert bodies[0]["data"]["start"] == int(booking.start.timestamp())
    assert not WebhookEvent.objects.filter(organization=org_b).exists()


def test_a_cancelled_booking_neither_starts_nor_ends(
    org_a: Any, webhook_receiver: Any, eager_celery: None
) -> None:
    from marketplace.capacity.services import booking_cancel

    pool_make(flavor=flavor_make(), gpus=8)
    topup_record(organization=org_a, amount="100000", reference="t-a")
    _subscribe(org_a, webhook_receiver.url, ["booking.started", "booking.ended"])
    start = timezone.now() + timedelta(hours=3)
    booking = booking_create(
        organization=org_a,
        flavor="h100-80g",
        gpu_count=1,
        start=start,
        end=start + timedelta(hours=1),
    )
    booking_cancel(organization=org_a, booking_id=booking.public_id)
    assert webhook_scheduled_events_sweep(now=start + timedelta(hours=2)) == 0


def test_only_subscribed_types_and_recent_facts_are_announced(
    org_a: Any, webhook_receiver: Any, eager_celery: None
) -> None:
    pool_make(flavor=flavor_make(), gpus=8)
    topup_record(organization=org_a, amount="100000", reference="t-a")
    _subscribe(org_a, webhook_receiver.url, ["booking.ended"])
    start = timezone.now() + timedelta(minutes=5)
    booking = booking_create(
        organization=org_a,
        flavor="h100-80g",
        gpu_count=1,
        start=start,
        end=start + timedelta(hours=1),
    )
    # Started, but only booking.ended is subscribed.
    assert webhook_scheduled_events_sweep(now=start + timedelta(seconds=1)) == 0
    # Ended more than a day before the sweep: history is not replayed.
    assert webhook_scheduled_events_sweep(now=booking.end + timedelta(days=2)) == 0
    assert webhook_receiver.received == []


def test_a_finalized_invoice_is_announced(
    org_a: Any, webhook_receiver: Any, eager_celery: None
) -> None:
    endpoint = _subscribe(org_a, webhook_receiver.url, ["invoice.finalized"])
    now = timezone.now()
    last_month = (now.replace(day=1) - timedelta(days=1)).date()
    period_start, period_end = month_bounds(last_month.year, last_month.month)
    draft = invoice_draft(organization=org_a, period_start=period_start, period_end=period_end)
    assert webhook_scheduled_events_sweep() == 0  # a draft is not announced
    invoice = invoice_finalize(invoice=draft)
    assert webhook_scheduled_events_sweep() == 1
    assert webhook_scheduled_events_sweep() == 0
    [body] = _received(webhook_receiver, endpoint)
    assert body["type"] == "invoice.finalized"
    assert body["data"]["id"] == invoice.public_id and body["data"]["number"] == invoice.number
    assert body["data"]["total"] == str(invoice.total)


def test_quota_thresholds_are_announced_once_per_month(org_a: Any, webhook_receiver: Any) -> None:
    h100 = flavor_make()
    pool_make(flavor=h100, gpus=8)
    # A running job reserves GPUs x max job hours of the month's budget: 10 of 20 per job.
    plan_make(h100, max_gpus=8, budget="20", max_job_hours="10")
    topup_record(organization=org_a, amount="100000", reference="t-a")
    endpoint = _subscribe(org_a, webhook_receiver.url, ["quota.threshold_reached"])
    job_submit(org_a, gpus=1)
    assert len(quotas.admission_pass()) == 1
    assert webhook_scheduled_events_sweep() == 0  # 50%: below every threshold

    job_submit(org_a, gpus=1)
    assert len(quotas.admission_pass()) == 1
    assert webhook_scheduled_events_sweep() == 2  # 100%: the 80% and the 100% thresholds
    assert webhook_scheduled_events_sweep() == 0  # once per month
    assert webhooks.webhook_deliveries_sweep() == 2  # what beat does without eager tasks
    bodies = sorted(
        _received(webhook_receiver, endpoint), key=lambda b: b["data"]["threshold_percent"]
    )
    assert [b["type"] for b in bodies] == ["quota.threshold_reached"] * 2
    assert bodies[0]["data"] == {
        "id": "quota-h100-80g",
        "flavor": "h100-80g",
        "metric": "monthly_gpu_hours",
        "threshold_percent": 80,
        "used": "20.00",
        "limit": "20.00",
        "period": timezone.now().strftime("%Y-%m"),
    }
    assert bodies[1]["data"]["threshold_percent"] == 100
    assert (
        WebhookDelivery.objects.filter(
            endpoint=endpoint, status=WebhookDelivery.Status.SUCCEEDED
        ).count()
        == 2
    )


def test_the_sweep_does_nothing_without_subscribers(org_a: Any) -> None:
    assert webhook_scheduled_events_sweep() == 0
    assert not WebhookEvent.objects.exists()


def test_a_low_balance_is_announced_to_subscribed_endpoints_once(
    org_a: Any, org_b: Any, webhook_receiver: Any, eager_celery: None
) -> None:
    from decimal import Decimal

    from marketplace.billing.services import low_balance_threshold_set

    endpoint = _subscribe(org_a, webhook_receiver.url, ["billing.balance_low"])
    _subscribe(org_b, webhook_receiver.url, ["billing.balance_low"])
    topup_record(organization=org_a, amount="12.00", reference="t-a")
    low_balance_threshold_set(organization=org_a, threshold=Decimal("20.00"))  # already below
    topup_record(organization=org_a, amount="1.00", reference="t-a2")  # still below: no repeat

    webhook_receiver.wait(1)
    [body] = _received(webhook_receiver, endpoint)
    assert body["type"] == "billing.balance_low"
    assert body["data"] == {
        "id": org_a.public_id,
        "available": "12.00",
        "threshold": "20.00",
        "currency": "EUR",
        "reason": "below_threshold",
    }
    assert WebhookEvent.objects.filter(type="billing.balance_low").count() == 1
