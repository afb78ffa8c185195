"""The e-mail consumer: a topic's renderer turns an event into messages, sent once after commit."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from django.core import mail
from django.core.mail import EmailMessage
from django.db import transaction
from django.utils import timezone

from marketplace.events import dispatch
from marketplace.events.consumers import consumer_get
from marketplace.events.models import ConsumerDelivery, DomainEvent
from marketplace.events.services import event_record
from marketplace.notifications.emails import (
    CONSUMER,
    email_renderer_register,
    email_renderer_unregister,
)

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def eager_celery(settings: Any) -> Iterator[None]:
    from workers.celery import app

    previous = app.conf.task_always_eager
    settings.CELERY_TASK_ALWAYS_EAGER = True
    app.conf.task_always_eager = True
    yield
    app.conf.task_always_eager = previous


@pytest.fixture
def job_done_mail() -> Iterator[list[DomainEvent]]:
    rendered: list[DomainEvent] = []

    def render(event: DomainEvent) -> list[EmailMessage]:
        rendered.append(event)
        return [
            EmailMessage(
                subject=f"Job {event.subject_id} succeeded",
                body="Your adapter is ready.",
                to=["alice@a.example"],
            )
        ]

    email_renderer_register("fine_tuning.job.succeeded", render)
    yield rendered
    email_renderer_unregister("fine_tuning.job.succeeded")


def test_a_rendered_event_is_mailed_once_after_commit(
    org_a: Any, job_done_mail: list[DomainEvent], eager_celery: None
) -> None:
    with transaction.atomic():
        event_record(
            event_type="fine_tuning.job.succeeded", organization_id=org_a.pk, subject_id="ftjob-m"
        )
        assert mail.outbox == []
    assert [m.subject for m in mail.outbox] == ["Job ftjob-m succeeded"]
    assert mail.outbox[0].to == ["alice@a.example"]
    dispatch.events_sweep(now=timezone.now() + timedelta(minutes=10))
    assert len(mail.outbox) == 1


def test_types_without_a_renderer_are_not_taken_up(
    org_a: Any, job_done_mail: list[DomainEvent], eager_celery: None
) -> None:
    assert consumer_get(CONSUMER).wants("fine_tuning.job.succeeded")
    assert not consumer_get(CONSUMER).wants("booking.started")
    event_record(event_type="booking.started", organization_id=org_a.pk, subject_id="bk_1")
    assert mail.outbox == []
    assert not ConsumerDelivery.objects.filter(consumer=CONSUMER).exists()


def test_a_failing_mail_server_is_retried(
    org_a: Any, job_done_mail: list[DomainEvent], eager_celery: None, settings: Any
) -> None:
    settings.EMAIL_BACKEND = "tests.notifications.test_emails.RefusingBackend"
    event_record(
        event_type="fine_tuning.job.succeeded", organization_id=org_a.pk, subject_id="ftjob-m"
    )
    row = ConsumerDelivery.objects.get(consumer=CONSUMER)
    assert row.status == "pending" and "SMTP refused" in row.last_error
    settings.EMAIL_BACKEND = "django.core.mail.backends.locmem.EmailBackend"
    dispatch.consumer_drain(CONSUMER, now=timezone.now() + timedelta(minutes=1))
    assert [m.subject for m in mail.outbox] == ["Job ftjob-m succeeded"]
    row.refresh_from_db()
    assert row.status == "done" and row.attempts == 2


class RefusingBackend:
    """An e-mail backend whose server refuses every message (the outside boundary)."""

    def __init__(self, **kwargs: Any) -> None:
        pass

    def send_messages(self, messages: list[EmailMessage]) -> int:
        raise ConnectionRefusedError("SMTP refused")
