"""Tables of the partner API: webhook endpoints, events, deliveries and their attempts,
idempotency records (one per organization and Idempotency-Key, enforced by a UNIQUE constraint),
and the per-key rate-limit counters of the embedded default (Redis counts them when configured).
"""

from __future__ import annotations

from django.db import models
from django.utils import timezone

from marketplace.accounts.models import ApiKey, Organization


class WebhookEndpoint(models.Model):
    """A URL an organization registered to receive events, with its signing secret.

    The secret must be kept in clear: Partage signs with it. `previous_secret` stays valid until
    `previous_secret_expires_at` after a rotation that asked to keep the old one for 24 hours.
    """

    id = models.CharField(primary_key=True, max_length=40, editable=False)
    organization = models.ForeignKey(
        Organization, on_delete=models.CASCADE, related_name="webhook_endpoints"
    )
    name = models.CharField(max_length=200)
    url = models.URLField(max_length=2000)
    event_types = models.JSONField(default=list)
    secret = models.CharField(max_length=100)
    previous_secret = models.CharField(max_length=100, blank=True)
    previous_secret_expires_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(default=timezone.now, db_index=True)
    updated_at = models.DateTimeField(default=timezone.now)
    deleted_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [
            models.Index(fields=["organization", "-created_at"], name="whendpoint_org_created")
        ]

    def __str__(self) -> str:
        return self.id


class WebhookEvent(models.Model):
    """One thing that happened, as sent to every subscribed endpoint (append-only)."""

    id = models.CharField(primary_key=True, max_length=40, editable=False)
    organization = models.ForeignKey(
        Organization, on_delete=models.CASCADE, related_name="webhook_events"
    )
    type = models.CharField(max_length=80)
    data = models.JSONField()
    created_at = models.DateTimeField(default=timezone.now, db_index=True)
    # Set for events found by a sweep (a booking's start, an invoice finalized…): at most one
    # event per organization and key, however many sweeps see it.
    dedup_key = models.CharField(max_length=200, blank=True, default="")

    class Meta:
        ordering = ["-created_at", "-id"]
        constraints = [
            models.UniqueConstraint(
                fields=["organization", "dedup_key"],
                condition=~models.Q(dedup_key=""),
                name="whevent_unique_dedup_key",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.id} {self.type}"


class WebhookDelivery(models.Model):
    """One event to one endpoint. Its `event_id` is the stable `webhook-id` across retries."""

    class Status(models.TextChoices):
        PENDING = "pending"
        SUCCEEDED = "succeeded"
        FAILED = "failed"  # gave up after the retry window

    id = models.CharField(primary_key=True, max_length=40, editable=False)
    organization = models.ForeignKey(
        Organization, on_delete=models.CASCADE, related_name="webhook_deliveries"
    )
    endpoint = models.ForeignKey(
        WebhookEndpoint, on_delete=models.CASCADE, related_name="deliveries"
    )
    event = models.ForeignKey(WebhookEvent, on_delete=models.CASCADE, related_name="deliveries")
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.PENDING)
    attempt_count = models.PositiveIntegerField(default=0)
    next_attempt_at = models.DateTimeField(null=True, blank=True, db_index=True)
    last_status_code = models.IntegerField(null=True, blank=True)
    # Retries stop once this moment has passed (24 hours after the first try, or a redelivery).
    retry_until = models.DateTimeField()
    created_at = models.DateTimeField(default=timezone.now, db_index=True)
    updated_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [
            models.Index(fields=["organization", "-created_at"], name="whdelivery_org_created"),
            models.Index(fields=["status", "next_attempt_at"], name="whdelivery_due"),
        ]
        constraints = [
            models.UniqueConstraint(fields=["endpoint", "event"], name="whdelivery_unique_event"),
        ]

    def __str__(self) -> str:
        return self.id


class WebhookDeliveryAttempt(models.Model):
    """The log of one HTTP try: the response code (or the network error) and how long it took."""

    delivery = models.ForeignKey(WebhookDelivery, on_delete=models.CASCADE, related_name="attempts")
    number = models.PositiveIntegerField()
    status_code = models.IntegerField(null=True, blank=True)
    error = models.TextField(blank=True)
    duration_ms = models.PositiveIntegerField(default=0)
    response_excerpt = models.TextField(blank=True)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["delivery", "number"]
        constraints = [
            models.UniqueConstraint(fields=["delivery", "number"], name="whattempt_unique_number"),
        ]

    def __str__(self) -> str:
        return f"{self.delivery_id} #{self.number}"


class IdempotencyRecord(models.Model):
    """The stored answer to a POST sent with an Idempotency-Key.

    UNIQUE (organization, key): a concurrent duplicate blocks on the index until the first
    request's transaction ends, then sees its record and replays the response.
    """

    organization = models.ForeignKey(
        Organization, on_delete=models.CASCADE, related_name="idempotency_records"
    )
    key = models.CharField(max_length=255)
    fingerprint = models.CharField(max_length=64)
    method = models.CharField(max_length=10)
    path = models.CharField(max_length=500)
    status_code = models.PositiveSmallIntegerField(null=True, blank=True)
    response_body = models.JSONField(null=True, blank=True)
    created_at = models.DateTimeField(default=timezone.now, db_index=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["organization", "key"], name="idempotency_unique_org_key"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.organization_id}:{self.key}"


class ApiRateCounter(models.Model):
    """Requests an API key made in its current fixed window; one row per key, counted by one
    atomic UPSERT (marketplace.api.throttling), so concurrent web processes never lose a count."""

    api_key = models.OneToOneField(
        ApiKey, primary_key=True, on_delete=models.CASCADE, related_name="+"
    )
    window_number = models.BigIntegerField()  # unix time // window length
    count = models.PositiveIntegerField(default=0)

    class Meta:
        db_table = "api_rate_counter"  # named in throttling's UPSERT

    def __str__(self) -> str:
        return f"{self.api_key_id}: {self.count} in window {self.window_number}"
