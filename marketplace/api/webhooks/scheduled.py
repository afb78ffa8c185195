"""Events that happen by the clock or in other domains' batch work, found by a periodic sweep:
a booking's window starting and ending, an invoice finalized, a monthly GPU-hour budget crossing
a threshold.

Each is announced once per organization (a dedup key per fact), only to organizations with an
endpoint subscribed to it, and only for facts newer than the oldest such endpoint and at most
`LOOKBACK` old, so a sweep that was down catches up without replaying history. Celery beat runs
the sweep every minute (marketplace/api/tasks.py): an event arrives at most that late.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from django.utils import timezone

from marketplace.accounts.models import Organization
from marketplace.api.models import WebhookEndpoint, WebhookEvent
from marketplace.api.webhooks.services import webhook_event_emit_once

logger = logging.getLogger("partage.webhooks")

LOOKBACK = timedelta(days=1)
# Percent of the monthly GPU-hour budget at which quota.threshold_reached is sent, once each
# per organization, flavor and month.
QUOTA_THRESHOLDS = (80, 100)
CENTS = Decimal("0.01")


@dataclass(frozen=True)
class Fact:
    event_type: str
    dedup_key: str
    data: dict[str, Any]


def _unix(moment: datetime) -> int:
    return int(moment.timestamp())


def _subscribers(event_types: Iterable[str]) -> dict[str, dict[int, datetime]]:
    """Per event type: organization id → when its oldest subscribed endpoint was created."""
    wanted = set(event_types)
    since: dict[str, dict[int, datetime]] = {t: {} for t in wanted}
    endpoints = WebhookEndpoint.objects.filter(deleted_at__isnull=True).values_list(
        "organization_id", "event_types", "created_at"
    )
    for org_id, types, created_at in endpoints:
        for event_type in wanted.intersection(types or ()):
            seen = since[event_type].get(org_id)
            if seen is None or created_at < seen:
                since[event_type][org_id] = created_at
    return since


def booking_facts(org: Organization, *, since: datetime, now: datetime) -> list[Fact]:
    from marketplace.capacity.models import Booking
    from marketplace.capacity.selectors import bookings_for_org

    facts = []
    confirmed = bookings_for_org(org).filter(status=Booking.Status.CONFIRMED)
    for event_type, moment in (("booking.started", "start"), ("booking.ended", "end")):
        window = {f"{moment}__gt": since, f"{moment}__lte": now}
        for booking in confirmed.filter(**window):
            facts.append(
                Fact(
                    event_type,
                    f"{event_type}:{booking.public_id}",
                    {
                        "id": booking.public_id,
                        "pool": booking.pool.public_id,
                        "flavor": booking.flavor.slug,
                        "gpu_count": booking.gpu_count,
                        "start": _unix(booking.start),
                        "end": _unix(booking.end),
                    },
                )
            )
    return facts


def invoice_facts(org: Organization, *, since: datetime, now: datetime) -> list[Fact]:
    from marketplace.billing.models import Invoice
    from marketplace.billing.selectors import invoices_for_org

    finalized = invoices_for_org(org).filter(
        status=Invoice.Status.FINALIZED, finalized_at__gt=since, finalized_at__lte=now
    )
    return [
        Fact(
            "invoice.finalized",
            f"invoice.finalized:{invoice.public_id}",
            {
                "id": invoice.public_id,
                "number": invoice.number,
                "total": str(invoice.total),
                "currency": invoice.currency,
                "period_start": _unix(invoice.period_start),
                "period_end": _unix(invoice.period_end),
            },
        )
        for invoice in finalized
    ]


def quota_facts(org: Organization, *, now: datetime) -> list[Fact]:
    from marketplace.quotas.selectors import quota_usage_for_org

    facts = []
    month = now.strftime("%Y-%m")
    for row in quota_usage_for_org(org, now=now):
        budget = row["monthly_gpu_hours"]
        if budget is None or Decimal(budget) <= 0:
            continue
        used = Decimal(row["gpu_hours_used"])
        percent = used * 100 / Decimal(budget)
        for threshold in QUOTA_THRESHOLDS:
            if percent < threshold:
                continue
            facts.append(
                Fact(
                    "quota.threshold_reached",
                    f"quota.threshold_reached:{row['flavor']}:{month}:{threshold}",
                    {
                        "id": f"quota-{row['flavor']}",
                        "flavor": row["flavor"],
                        "metric": "monthly_gpu_hours",
                        "threshold_percent": threshold,
                        "used": str(used.quantize(CENTS)),
                        "limit": str(Decimal(budget).quantize(CENTS)),
                        "period": month,
                    },
                )
            )
    return facts


def webhook_scheduled_events_sweep(*, now: datetime | None = None) -> int:
    """Announce what happened since the last sweep; returns how many events were recorded."""
    now = now or timezone.now()
    subscribers = _subscribers(
        ["booking.started", "booking.ended", "invoice.finalized", "quota.threshold_reached"]
    )
    org_ids = set().union(*(orgs.keys() for orgs in subscribers.values()))
    if not org_ids:
        return 0
    emitted = 0
    for org in Organization.objects.filter(pk__in=org_ids).order_by("pk"):
        facts: list[Fact] = []

        def since(*event_types: str, org_id: int = org.pk) -> datetime | None:
            starts = [subscribers[t][org_id] for t in event_types if org_id in subscribers[t]]
            return max(min(starts), now - LOOKBACK) if starts else None

        if (start := since("booking.started", "booking.ended")) is not None:
            facts += booking_facts(org, since=start, now=now)
        if (start := since("invoice.finalized")) is not None:
            facts += invoice_facts(org, since=start, now=now)
        if since("quota.threshold_reached") is not None:
            facts += quota_facts(org, now=now)
        facts = [f for f in facts if org.pk in subscribers[f.event_type]]
        known = set(
            WebhookEvent.objects.filter(
                organization=org, dedup_key__in=[f.dedup_key for f in facts]
            ).values_list("dedup_key", flat=True)
        )
        for fact in facts:
            if fact.dedup_key in known:
                continue
            event = webhook_event_emit_once(
                organization=org.pk,
                event_type=fact.event_type,
                data=fact.data,
                dedup_key=fact.dedup_key,
            )
            emitted += event is not None
    if emitted:
        logger.info("webhook sweep announced %s scheduled events", emitted)
    return emitted
