"""The outbox: one row per domain event (append-only), and each consumer's progress through it.

A consumer's `ConsumerCursor` says how far it has scanned; a `ConsumerDelivery` row per event it
took up says whether it handled the event, is waiting to retry it, or gave up. The row is written
in the same transaction as the consumer's own writes, which is what makes handling exactly-once.
"""

from __future__ import annotations

from django.db import models
from django.utils import timezone


class DomainEvent(models.Model):
    """Something that happened, recorded in the transaction that made it happen."""

    public_id = models.CharField(max_length=40, unique=True, editable=False)
    event_type = models.CharField(max_length=80)
    # No foreign key: the outbox outlives nothing and must not block deleting an organization.
    organization_id = models.BigIntegerField(null=True, blank=True, db_index=True)
    subject_id = models.CharField(max_length=100)
    data = models.JSONField(default=dict, blank=True)
    occurred_at = models.DateTimeField(default=timezone.now)
    recorded_at = models.DateTimeField(default=timezone.now)
    # Set by facts found more than once (a booking's start seen by every sweep): one event per key.
    dedup_key = models.CharField(max_length=200, null=True, blank=True, unique=True)

    class Meta:
        ordering = ["id"]
        indexes = [
            models.Index(fields=["event_type", "id"], name="event_type_id"),
            # A reader's "what happened to this subject since my cursor" (job page, SSE).
            models.Index(fields=["subject_id", "id"], name="event_subject_id"),
        ]

    def __str__(self) -> str:
        return f"{self.public_id} {self.event_type} {self.subject_id}"


class ConsumerCursor(models.Model):
    """The id below which a consumer has seen every committed event."""

    consumer = models.CharField(primary_key=True, max_length=80)
    position = models.BigIntegerField(default=0)
    updated_at = models.DateTimeField(default=timezone.now)

    def __str__(self) -> str:
        return f"{self.consumer}@{self.position}"


class ConsumerDelivery(models.Model):
    """One event taken up by one consumer."""

    class Status(models.TextChoices):
        PENDING = "pending"  # failed at least once, retried at next_attempt_at
        DONE = "done"
        FAILED = "failed"  # gave up after MAX_ATTEMPTS

    consumer = models.CharField(max_length=80)
    event = models.ForeignKey(DomainEvent, on_delete=models.CASCADE, related_name="deliveries")
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.PENDING)
    attempts = models.PositiveIntegerField(default=0)
    next_attempt_at = models.DateTimeField(null=True, blank=True)
    last_error = models.TextField(blank=True, default="")
    created_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(default=timezone.now)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["consumer", "event"], name="event_delivery_once")
        ]
        indexes = [
            models.Index(
                fields=["consumer", "next_attempt_at"],
                condition=models.Q(status="pending"),
                name="event_delivery_due",
            )
        ]

    def __str__(self) -> str:
        return f"{self.consumer} {self.event_id} {self.status}"
