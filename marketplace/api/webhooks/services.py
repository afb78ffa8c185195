"""Writes for webhooks: endpoints, events, deliveries, and the delivery of one attempt.

`webhook_event_emit` records a webhook event and one delivery per subscribed endpoint, and
enqueues the deliveries when the transaction commits; the outbox consumer (`consumer.py`) calls
it for each domain event. A delivery is
retried with exponential backoff for 24 hours; each attempt is logged with its response code.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from datetime import timedelta
from typing import Any

import urllib3
from django.db import IntegrityError, transaction
from django.db.models import F, Q
from django.utils import timezone

from marketplace.accounts.models import Organization
from marketplace.api.models import (
    WebhookDelivery,
    WebhookDeliveryAttempt,
    WebhookEndpoint,
    WebhookEvent,
)
from marketplace.api.webhooks import signing
from marketplace.api.webhooks.events import EVENT_TYPES, event_type_check
from marketplace.api.webhooks.targets import webhook_post, webhook_target, webhook_url_check
from marketplace.errors import InvalidInput, NotFound

logger = logging.getLogger("partage.webhooks")

RETRY_WINDOW = timedelta(hours=24)
# Seconds to wait after the n-th failed attempt; the last value repeats until the window closes.
BACKOFF_SECONDS = (5, 30, 120, 600, 1800, 3600, 7200, 14400)
# A claimed attempt that never reports back (worker died) becomes due again after this long.
CLAIM_LEASE = timedelta(seconds=90)
REQUEST_TIMEOUT = (5.0, 15.0)
DELIVER_TASK = "partage.webhook_deliver"


def _new_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:24]}"


# ---------------------------------------------------------------- endpoints


def _name_check(name: str) -> str:
    name = (name or "").strip()
    if not name or len(name) > 200:
        raise InvalidInput(
            "name must be 1 to 200 characters, e.g. 'production jobs'.", param="name"
        )
    return name


def _event_types_check(event_types: Any) -> list[str]:
    if not isinstance(event_types, list) or not event_types:
        raise InvalidInput(
            "event_types must be a non-empty list, e.g. ['fine_tuning.job.succeeded'].",
            param="event_types",
        )
    for index, event_type in enumerate(event_types):
        event_type_check(event_type, param=f"event_types.{index}")
    return sorted(set(event_types))


def webhook_endpoint_create(
    *, organization: Organization, name: str, url: str, event_types: list[str]
) -> WebhookEndpoint:
    name = _name_check(name)
    types = _event_types_check(event_types)
    webhook_url_check(url)
    now = timezone.now()
    return WebhookEndpoint.objects.create(
        id=_new_id("we"),
        organization=organization,
        name=name,
        url=url,
        event_types=types,
        secret=signing.secret_new(),
        created_at=now,
        updated_at=now,
    )


def _endpoint(
    organization: Organization, endpoint_id: str, *, lock: bool = False
) -> WebhookEndpoint:
    queryset = WebhookEndpoint.objects.filter(
        organization=organization, pk=endpoint_id, deleted_at__isnull=True
    )
    if lock:
        queryset = queryset.select_for_update()
    endpoint = queryset.first()
    if endpoint is None:
        raise NotFound(f"No webhook endpoint {endpoint_id!r}.", param="webhook_endpoint_id")
    return endpoint


def webhook_endpoint_update(
    *,
    organization: Organization,
    endpoint_id: str,
    name: str | None = None,
    url: str | None = None,
    event_types: list[str] | None = None,
) -> WebhookEndpoint:
    changes: dict[str, Any] = {}
    if name is not None:
        changes["name"] = _name_check(name)
    if event_types is not None:
        changes["event_types"] = _event_types_check(event_types)
    if url is not None:
        webhook_url_check(url)
        changes["url"] = url
    with transaction.atomic():
        endpoint = _endpoint(organization, endpoint_id, lock=True)
        changed = {k: v for k, v in changes.items() if getattr(endpoint, k) != v}
        if changed:
            for field, value in changed.items():
                setattr(endpoint, field, value)
            endpoint.updated_at = timezone.now()
            endpoint.save(update_fields=[*changed, "updated_at"])
    return endpoint


def webhook_endpoint_delete(*, organization: Organization, endpoint_id: str) -> WebhookEndpoint:
    """Soft delete: the delivery log stays; pending deliveries stop."""
    with transaction.atomic():
        endpoint = _endpoint(organization, endpoint_id, lock=True)
        endpoint.deleted_at = timezone.now()
        endpoint.save(update_fields=["deleted_at"])
        WebhookDelivery.objects.filter(
            endpoint=endpoint, status=WebhookDelivery.Status.PENDING
        ).update(status=WebhookDelivery.Status.FAILED, next_attempt_at=None)
    return endpoint


def webhook_endpoint_rotate_secret(
    *, organization: Organization, endpoint_id: str, keep_old_secret_for_24_hours: bool = False
) -> WebhookEndpoint:
    now = timezone.now()
    with transaction.atomic():
        endpoint = _endpoint(organization, endpoint_id, lock=True)
        if keep_old_secret_for_24_hours:
            endpoint.previous_secret = endpoint.secret
            endpoint.previous_secret_expires_at = now + timedelta(hours=24)
        else:
            endpoint.previous_secret = ""
            endpoint.previous_secret_expires_at = None
        endpoint.secret = signing.secret_new()
        endpoint.updated_at = now
        endpoint.save()
    return endpoint


def signing_secrets(endpoint: WebhookEndpoint) -> list[str]:
    valid = [endpoint.secret]
    expires = endpoint.previous_secret_expires_at
    if endpoint.previous_secret and expires and expires > timezone.now():
        valid.append(endpoint.previous_secret)
    return valid


# ---------------------------------------------------------------- events


def webhook_event_emit(
    *, organization: Organization | int, event_type: str, data: dict[str, Any]
) -> WebhookEvent:
    """Record an event and enqueue one delivery per subscribed endpoint, on commit.

    `data` must hold the `id` of the object concerned, e.g. {"id": "ftjob-…"}; keep it small,
    receivers fetch the object through the API.
    """
    event = _event_emit(organization=organization, event_type=event_type, data=data)
    assert event is not None
    return event


def webhook_event_emit_once(
    *, organization: Organization | int, event_type: str, data: dict[str, Any], dedup_key: str
) -> WebhookEvent | None:
    """Like `webhook_event_emit`, at most once per organization and `dedup_key` (for sweeps
    that see the same fact again and again); a repeat returns None and sends nothing."""
    return _event_emit(
        organization=organization, event_type=event_type, data=data, dedup_key=dedup_key
    )


def _event_emit(
    *,
    organization: Organization | int,
    event_type: str,
    data: dict[str, Any],
    dedup_key: str | None = None,
) -> WebhookEvent | None:
    event_type_check(event_type, param="event_type")
    if not isinstance(data, dict) or not isinstance(data.get("id"), str):
        raise InvalidInput(
            "data must be a dict with the 'id' of the object concerned.", param="data"
        )
    org_id = organization if isinstance(organization, int) else organization.pk
    now = timezone.now()
    with transaction.atomic():
        try:
            with transaction.atomic():
                event = WebhookEvent.objects.create(
                    id=_new_id("evt"),
                    organization_id=org_id,
                    type=event_type,
                    data=data,
                    created_at=now,
                    dedup_key=dedup_key or "",
                )
        except IntegrityError:
            if not dedup_key:
                raise
            return None  # already announced
        endpoints = WebhookEndpoint.objects.filter(
            organization_id=org_id, deleted_at__isnull=True
        ).only("id", "event_types")
        deliveries = [
            WebhookDelivery(
                id=_new_id("whdel"),
                organization_id=org_id,
                endpoint_id=endpoint.id,
                event=event,
                next_attempt_at=now,
                retry_until=now + RETRY_WINDOW,
                created_at=now,
                updated_at=now,
            )
            for endpoint in endpoints
            if event_type in endpoint.event_types
        ]
        WebhookDelivery.objects.bulk_create(deliveries)
        for delivery in deliveries:
            _enqueue_on_commit(delivery.id)
    return event


def _enqueue_on_commit(delivery_id: str, countdown: float = 0) -> None:
    def enqueue() -> None:
        from workers.celery import app

        # By its name: the task module (api/tasks.py, registered at start-up) calls these
        # services, so importing it from here would make a cycle.
        deliver = app.tasks[DELIVER_TASK]
        if countdown and app.conf.task_always_eager:
            return  # eager mode runs at once; the sweep picks up retries instead
        if countdown:
            deliver.apply_async((delivery_id,), countdown=countdown)
        else:
            deliver.delay(delivery_id)

    transaction.on_commit(enqueue, robust=True)


def event_body(event: WebhookEvent) -> bytes:
    """The exact bytes that are signed and sent; identical on every retry."""
    payload = {
        "id": event.id,
        "object": "event",
        "created_at": int(event.created_at.timestamp()),
        "type": event.type,
        "data": event.data,
    }
    return json.dumps(payload, separators=(",", ":"), sort_keys=True).encode()


# ---------------------------------------------------------------- deliveries


def _claim(delivery_id: str, *, force: bool = False) -> WebhookDelivery | None:
    """Take the next attempt of a due delivery; None if it is not due or another worker has it."""
    now = timezone.now()
    due = Q(status=WebhookDelivery.Status.PENDING)
    if not force:
        due &= Q(next_attempt_at__lte=now)
    claimed = WebhookDelivery.objects.filter(due, pk=delivery_id).update(
        attempt_count=F("attempt_count") + 1, next_attempt_at=now + CLAIM_LEASE, updated_at=now
    )
    if not claimed:
        return None
    return WebhookDelivery.objects.select_related("endpoint", "event").get(pk=delivery_id)


def _send(delivery: WebhookDelivery) -> tuple[int | None, str, str, int]:
    """One HTTP POST. Returns (status code or None, error, response excerpt, duration in ms)."""
    endpoint = delivery.endpoint
    body = event_body(delivery.event)
    timestamp = int(time.time())
    headers = {
        "content-type": "application/json",
        "user-agent": "Partage-Webhooks/1",
        "webhook-id": delivery.event_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": signing.signature_header(
            signing_secrets(endpoint), msg_id=delivery.event_id, timestamp=timestamp, body=body
        ),
    }
    started = time.monotonic()
    try:
        target = webhook_target(endpoint.url)
        status, start = webhook_post(
            target, body, headers, connect=REQUEST_TIMEOUT[0], read=REQUEST_TIMEOUT[1]
        )
        excerpt = start.decode("utf-8", "replace")[:500]
        return status, "", excerpt, int((time.monotonic() - started) * 1000)
    except InvalidInput as e:
        return None, f"target refused: {e.message}", "", 0
    except (urllib3.exceptions.HTTPError, OSError) as e:
        return (
            None,
            f"{e.__class__.__name__}: {e}"[:1000],
            "",
            int((time.monotonic() - started) * 1000),
        )


def _next_delay(attempt_number: int) -> int:
    return BACKOFF_SECONDS[min(attempt_number - 1, len(BACKOFF_SECONDS) - 1)]


def webhook_delivery_attempt(
    *, delivery_id: str, force: bool = False
) -> WebhookDeliveryAttempt | None:
    """Make one attempt of a due delivery, log it, and schedule the next one if it failed.

    Safe to run twice: the claim is a conditional UPDATE, so a duplicate task does nothing.
    """
    delivery = _claim(delivery_id, force=force)
    if delivery is None:
        return None
    status_code, error, excerpt, duration_ms = _send(delivery)
    ok = status_code is not None and 200 <= status_code < 300
    now = timezone.now()
    with transaction.atomic():
        attempt = WebhookDeliveryAttempt.objects.create(
            delivery=delivery,
            number=delivery.attempt_count,
            status_code=status_code,
            error=error,
            duration_ms=duration_ms,
            response_excerpt=excerpt,
        )
        fields: dict[str, Any] = {"last_status_code": status_code, "updated_at": now}
        if ok:
            fields |= {"status": WebhookDelivery.Status.SUCCEEDED, "next_attempt_at": None}
        elif now >= delivery.retry_until:
            fields |= {"status": WebhookDelivery.Status.FAILED, "next_attempt_at": None}
        else:
            delay = _next_delay(delivery.attempt_count)
            next_at = min(now + timedelta(seconds=delay), delivery.retry_until)
            fields["next_attempt_at"] = next_at
            _enqueue_on_commit(delivery.id, countdown=max((next_at - now).total_seconds(), 1))
        WebhookDelivery.objects.filter(
            pk=delivery.pk, status=WebhookDelivery.Status.PENDING
        ).update(**fields)
    logger.info(
        "webhook delivery %s attempt %s -> %s",
        delivery.id,
        attempt.number,
        status_code or error,
        extra={"org_id": delivery.organization_id, "delivery_id": delivery.id},
    )
    return attempt


def webhook_delivery_redeliver(*, organization: Organization, delivery_id: str) -> WebhookDelivery:
    """Send a delivery again now (same webhook-id), with a fresh 24-hour retry window."""
    now = timezone.now()
    with transaction.atomic():
        delivery = (
            WebhookDelivery.objects.select_for_update()
            .filter(organization=organization, pk=delivery_id)
            .first()
        )
        if delivery is None:
            raise NotFound(f"No webhook delivery {delivery_id!r}.", param="delivery_id")
        if not WebhookEndpoint.objects.filter(
            pk=delivery.endpoint_id, deleted_at__isnull=True
        ).exists():
            raise InvalidInput(
                "The endpoint of this delivery was deleted; register it again to receive events.",
                param="delivery_id",
            )
        WebhookDelivery.objects.filter(pk=delivery.pk).update(
            status=WebhookDelivery.Status.PENDING,
            next_attempt_at=now,
            retry_until=now + RETRY_WINDOW,
            updated_at=now,
        )
        _enqueue_on_commit(delivery.id)
    delivery.refresh_from_db()
    return delivery


def webhook_endpoint_test(
    *, organization: Organization, endpoint_id: str, event_type: str
) -> WebhookDeliveryAttempt:
    """Send a sample event now and report the endpoint's answer; it is not retried."""
    event_type_check(event_type, param="event_type")
    endpoint = _endpoint(organization, endpoint_id)
    now = timezone.now()
    with transaction.atomic():
        event = WebhookEvent.objects.create(
            id=_new_id("evt"),
            organization=organization,
            type=event_type,
            data={"id": EVENT_TYPES[event_type].sample_id, "test": True},
        )
        delivery = WebhookDelivery.objects.create(
            id=_new_id("whdel"),
            organization=organization,
            endpoint=endpoint,
            event=event,
            next_attempt_at=now,
            retry_until=now,  # a test is sent once
        )
    attempt = webhook_delivery_attempt(delivery_id=delivery.id, force=True)
    assert attempt is not None
    return attempt


def webhook_deliveries_sweep(*, limit: int = 500) -> int:
    """Attempt deliveries that are due (retries in eager mode, lost tasks, expired claims)."""
    due = list(
        WebhookDelivery.objects.filter(
            status=WebhookDelivery.Status.PENDING, next_attempt_at__lte=timezone.now()
        )
        .order_by("next_attempt_at")
        .values_list("pk", flat=True)[:limit]
    )
    done = 0
    for delivery_id in due:
        if webhook_delivery_attempt(delivery_id=delivery_id) is not None:
            done += 1
    return done
