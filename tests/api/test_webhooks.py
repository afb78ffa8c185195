"""Webhook events and deliveries: Standard Webhooks signatures, retries with backoff, the log,
redelivery, secret rotation, and the refusal of internal targets."""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

import pytest
import standardwebhooks
import time_machine
from django.utils import timezone
from openai import OpenAI

from marketplace.api.models import WebhookDelivery, WebhookEndpoint, WebhookEvent
from marketplace.api.webhooks import services as webhooks
from marketplace.api.webhooks.targets import webhook_url_check
from marketplace.errors import InvalidInput
from marketplace.finetuning import services as ft
from marketplace.finetuning.models import File, FineTuningJob, JobStatus
from tests.fakes.keys import provenance_key_pem

pytestmark = pytest.mark.django_db(transaction=True)


def _endpoint(org: Any, url: str, types: list[str] | None = None) -> WebhookEndpoint:
    return webhooks.webhook_endpoint_create(
        organization=org,
        name="test hook",
        url=url,
        event_types=types or ["fine_tuning.job.succeeded"],
    )


def test_emit_delivers_a_signed_standard_webhook(
    org_a: Any, webhook_receiver: Any, eager_celery: None
) -> None:
    endpoint = _endpoint(org_a, webhook_receiver.url)
    event = webhooks.webhook_event_emit(
        organization=org_a, event_type="fine_tuning.job.succeeded", data={"id": "ftjob-abc"}
    )
    [received] = webhook_receiver.wait(1)
    assert received.headers["webhook-id"] == event.id
    assert received.headers["webhook-signature"].startswith("v1,")
    # The reference implementation of the spec accepts it...
    payload = standardwebhooks.Webhook(endpoint.secret).verify(received.body, received.headers)
    assert payload == {
        "id": event.id,
        "object": "event",
        "created_at": int(event.created_at.timestamp()),
        "type": "fine_tuning.job.succeeded",
        "data": {"id": "ftjob-abc"},
    }
    # ...and so does the OpenAI SDK.
    unwrapped = OpenAI(api_key="unused", base_url="http://127.0.0.1:9/v1").webhooks.unwrap(
        received.body, received.headers, secret=endpoint.secret
    )
    assert unwrapped.type == "fine_tuning.job.succeeded" and unwrapped.data.id == "ftjob-abc"
    delivery = WebhookDelivery.objects.get(event=event)
    assert delivery.status == WebhookDelivery.Status.SUCCEEDED
    assert [a.status_code for a in delivery.attempts.all()] == [200]


def test_a_tampered_body_fails_verification(
    org_a: Any, webhook_receiver: Any, eager_celery: None
) -> None:
    endpoint = _endpoint(org_a, webhook_receiver.url)
    webhooks.webhook_event_emit(
        organization=org_a, event_type="fine_tuning.job.succeeded", data={"id": "ftjob-x"}
    )
    [received] = webhook_receiver.wait(1)
    tampered = received.body.replace(b"ftjob-x", b"ftjob-y")
    with pytest.raises(standardwebhooks.WebhookVerificationError):
        standardwebhooks.Webhook(endpoint.secret).verify(tampered, received.headers)


def test_only_subscribed_endpoints_of_the_same_org_receive(
    org_a: Any, org_b: Any, webhook_receiver: Any, eager_celery: None
) -> None:
    _endpoint(org_a, webhook_receiver.url + "/a-failed", ["fine_tuning.job.failed"])
    _endpoint(org_b, webhook_receiver.url + "/b", ["fine_tuning.job.succeeded"])
    wanted = _endpoint(org_a, webhook_receiver.url + "/a", ["fine_tuning.job.succeeded"])
    webhooks.webhook_event_emit(
        organization=org_a, event_type="fine_tuning.job.succeeded", data={"id": "ftjob-1"}
    )
    received = webhook_receiver.wait(1)
    assert [r.path for r in received] == ["/hooks/a"]
    assert WebhookDelivery.objects.get().endpoint_id == wanted.id


def test_failed_delivery_is_retried_with_backoff_and_the_same_id(
    org_a: Any, webhook_receiver: Any, eager_celery: None
) -> None:
    webhook_receiver.script = [500, 503]
    _endpoint(org_a, webhook_receiver.url)
    with time_machine.travel(timezone.now(), tick=False) as clock:
        event = webhooks.webhook_event_emit(
            organization=org_a, event_type="fine_tuning.job.succeeded", data={"id": "ftjob-r"}
        )
        delivery = WebhookDelivery.objects.get(event=event)
        delivery.refresh_from_db()
        assert delivery.status == WebhookDelivery.Status.PENDING
        assert delivery.next_attempt_at == timezone.now() + timedelta(seconds=5)
        assert webhooks.webhook_deliveries_sweep() == 0  # not due yet
        clock.shift(timedelta(seconds=6))
        assert webhooks.webhook_deliveries_sweep() == 1
        delivery.refresh_from_db()
        assert delivery.next_attempt_at == timezone.now() + timedelta(seconds=30)  # backoff grows
        clock.shift(timedelta(seconds=31))
        assert webhooks.webhook_deliveries_sweep() == 1
    delivery.refresh_from_db()
    assert delivery.status == WebhookDelivery.Status.SUCCEEDED
    assert [a.status_code for a in delivery.attempts.order_by("number")] == [500, 503, 200]
    ids = {r.headers["webhook-id"] for r in webhook_receiver.received}
    assert ids == {event.id}


def test_delivery_gives_up_after_24_hours_and_can_be_redelivered(
    org_a: Any, webhook_receiver: Any, eager_celery: None
) -> None:
    webhook_receiver.script = [500] * 200
    _endpoint(org_a, webhook_receiver.url)
    start = timezone.now()
    with time_machine.travel(start, tick=False) as clock:
        event = webhooks.webhook_event_emit(
            organization=org_a, event_type="fine_tuning.job.succeeded", data={"id": "ftjob-g"}
        )
        delivery = WebhookDelivery.objects.get(event=event)
        for _ in range(60):
            delivery.refresh_from_db()
            if delivery.status != WebhookDelivery.Status.PENDING:
                break
            clock.move_to(delivery.next_attempt_at)
            webhooks.webhook_deliveries_sweep()
        delivery.refresh_from_db()
        assert delivery.status == WebhookDelivery.Status.FAILED
        assert timezone.now() - start == timedelta(hours=24)  # the last try is at the window's end
        tries = delivery.attempt_count
        assert 8 <= tries <= 20
        webhook_receiver.script = []
        webhooks.webhook_delivery_redeliver(organization=org_a, delivery_id=delivery.id)
    delivery.refresh_from_db()
    assert delivery.status == WebhookDelivery.Status.SUCCEEDED
    assert delivery.attempt_count == tries + 1
    assert webhook_receiver.received[-1].headers["webhook-id"] == event.id


def test_rotation_keeping_the_old_secret_signs_with_both(
    org_a: Any, webhook_receiver: Any, eager_celery: None
) -> None:
    endpoint = _endpoint(org_a, webhook_receiver.url)
    old = endpoint.secret
    rotated = webhooks.webhook_endpoint_rotate_secret(
        organization=org_a, endpoint_id=endpoint.id, keep_old_secret_for_24_hours=True
    )
    assert rotated.secret != old
    webhooks.webhook_event_emit(
        organization=org_a, event_type="fine_tuning.job.succeeded", data={"id": "ftjob-s"}
    )
    [received] = webhook_receiver.wait(1)
    standardwebhooks.Webhook(old).verify(received.body, received.headers)
    standardwebhooks.Webhook(rotated.secret).verify(received.body, received.headers)
    # Without keeping it, the old secret stops working at once.
    again = webhooks.webhook_endpoint_rotate_secret(organization=org_a, endpoint_id=endpoint.id)
    webhooks.webhook_event_emit(
        organization=org_a, event_type="fine_tuning.job.succeeded", data={"id": "ftjob-t"}
    )
    received = webhook_receiver.wait(2)[-1]
    standardwebhooks.Webhook(again.secret).verify(received.body, received.headers)
    with pytest.raises(standardwebhooks.WebhookVerificationError):
        standardwebhooks.Webhook(rotated.secret).verify(received.body, received.headers)


def test_a_job_transition_emits_its_event_after_commit(
    org_a: Any, webhook_receiver: Any, eager_celery: None
) -> None:
    _endpoint(org_a, webhook_receiver.url, ["fine_tuning.job.queued", "fine_tuning.job.cancelled"])
    training = File.objects.create(
        id="file-t1",
        organization=org_a,
        filename="t.jsonl",
        purpose="fine-tune",
        bytes=1,
        sha256="0" * 64,
        content="files/none.jsonl",
    )
    job = FineTuningJob.objects.create(
        id="ftjob-hooked",
        organization=org_a,
        model="partage/tiny-llama",
        training_file=training,
        seed=1,
    )
    ft.job_transition(job_id=job.id, to=JobStatus.QUEUED, message="queued")
    ft.job_cancel(organization=org_a, job_id=job.id)
    received = webhook_receiver.wait(2)
    types = [json.loads(r.body)["type"] for r in received]
    assert types == ["fine_tuning.job.queued", "fine_tuning.job.cancelled"]
    assert all(json.loads(r.body)["data"] == {"id": job.id} for r in received)


def test_a_rolled_back_transition_emits_nothing(
    org_a: Any, webhook_receiver: Any, eager_celery: None
) -> None:
    from django.db import transaction

    _endpoint(org_a, webhook_receiver.url, ["fine_tuning.job.queued"])
    training = File.objects.create(
        id="file-t2",
        organization=org_a,
        filename="t.jsonl",
        purpose="fine-tune",
        bytes=1,
        sha256="0" * 64,
        content="files/none.jsonl",
    )
    job = FineTuningJob.objects.create(
        id="ftjob-rolled",
        organization=org_a,
        model="partage/tiny-llama",
        training_file=training,
        seed=1,
    )
    with pytest.raises(RuntimeError), transaction.atomic():
        ft.job_transition(job_id=job.id, to=JobStatus.QUEUED, message="queued")
        raise RuntimeError("boom")
    assert not WebhookEvent.objects.exists()
    assert webhook_receiver.received == []


def test_unknown_event_type_is_refused(org_a: Any) -> None:
    with pytest.raises(InvalidInput, match="Unknown event type"):
        webhooks.webhook_event_emit(organization=org_a, event_type="job.done", data={"id": "x"})


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1/hook",
        "http://localhost:8000/hook",
        "http://10.1.2.3/hook",
        "http://192.168.0.10/hook",
        "http://169.254.169.254/latest/meta-data",
        "http://100.64.0.1/hook",
        "http://[::1]/hook",
        "http://[fe80::1]/hook",
        "http://[::ffff:127.0.0.1]/hook",
        "http://0.0.0.0/hook",
    ],
)
def test_internal_targets_are_refused(url: str, settings: Any) -> None:
    settings.PARTAGE_WEBHOOK_ALLOW_PRIVATE = False
    with pytest.raises(InvalidInput, match="non-public address") as caught:
        webhook_url_check(url)
    assert caught.value.param == "url"


def test_public_targets_pass_and_bad_urls_are_explained(settings: Any) -> None:
    settings.PARTAGE_WEBHOOK_ALLOW_PRIVATE = False
    webhook_url_check("https://93.184.216.34/hook")
    with pytest.raises(InvalidInput, match="must start with"):
        webhook_url_check("ftp://93.184.216.34/hook")
    with pytest.raises(InvalidInput, match="credentials"):
        webhook_url_check("https://user:pw@93.184.216.34/hook")
    settings.PRODUCTION = True
    with pytest.raises(InvalidInput, match="https://"):
        webhook_url_check("http://93.184.216.34/hook")


def test_delivery_rechecks_the_target(
    org_a: Any, webhook_receiver: Any, eager_celery: None, settings: Any
) -> None:
    _endpoint(org_a, webhook_receiver.url)  # allowed at registration (test setting)...
    settings.PARTAGE_WEBHOOK_ALLOW_PRIVATE = False  # ...but no longer at delivery time
    event = webhooks.webhook_event_emit(
        organization=org_a, event_type="fine_tuning.job.succeeded", data={"id": "ftjob-p"}
    )
    attempt = WebhookDelivery.objects.get(event=event).attempts.get()
    assert attempt.status_code is None and "non-public" in attempt.error
    assert webhook_receiver.received == []


def test_delivery_connects_to_the_address_it_checked(
    org_a: Any, webhook_receiver: Any, eager_celery: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A resolver whose answer changes after the check (DNS rebinding) cannot move the
    delivery: the host is resolved once, and the request goes to that address."""
    import socket
    from urllib.parse import urlsplit

    port = urlsplit(webhook_receiver.url).port
    answers = iter(["127.0.0.1", "10.255.255.1"])
    lookups: list[str] = []
    real_getaddrinfo = socket.getaddrinfo

    def rebinding(host: str, *args: Any, **kwargs: Any) -> Any:
        if host != "hooks.rebind.test":
            return real_getaddrinfo(host, *args, **kwargs)
        lookups.append(host)
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (next(answers), port))]

    monkeypatch.setattr(socket, "getaddrinfo", rebinding)
    endpoint = _endpoint(org_a, f"http://hooks.rebind.test:{port}/hooks?src=partage")
    event = webhooks.webhook_event_emit(
        organization=org_a, event_type="fine_tuning.job.succeeded", data={"id": "ftjob-r"}
    )
    attempt = WebhookDelivery.objects.get(event=event).attempts.get()
    assert (attempt.status_code, attempt.error) == (200, "")
    assert lookups == ["hooks.rebind.test"]
    [received] = webhook_receiver.received
    assert received.path == "/hooks?src=partage"
    assert received.headers["host"] == f"hooks.rebind.test:{port}"
    standardwebhooks.Webhook(endpoint.secret).verify(received.body, received.headers)


def _production_settings(extra: dict[str, str], tmp_path: Any) -> Any:
    import os
    import subprocess
    import sys
    from pathlib import Path

    clean = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("DATABASE_URL", "REDIS_URL", "PARTAGE_", "DJANGO_"))
    }
    env = {
        **clean,
        "PARTAGE_ENV": "production",
        "PARTAGE_DATA_DIR": str(tmp_path),
        "DJANGO_SECRET_KEY": "s" * 50,
        "DJANGO_ALLOWED_HOSTS": "partage.example",
        "DATABASE_URL": "postgres://partage@db.invalid:5432/partage",
        "PARTAGE_PROVENANCE_KEY": provenance_key_pem(),
        "DJANGO_SETTINGS_MODULE": "marketplace.settings",
        **extra,
    }
    code = (
        "import django; django.setup(); from django.conf import settings; "
        "print(settings.PARTAGE_WEBHOOK_ALLOW_PRIVATE)"
    )
    return subprocess.run(
        [sys.executable, "-c", code],
        cwd=Path(__file__).resolve().parents[2],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_production_refuses_private_targets_and_the_setting_that_allows_them(
    tmp_path: Any,
) -> None:
    default = _production_settings({}, tmp_path)
    assert default.returncode == 0 and default.stdout.strip() == "False", default.stderr[-2000:]
    allowed = _production_settings({"PARTAGE_WEBHOOK_ALLOW_PRIVATE": "true"}, tmp_path)
    assert allowed.returncode != 0
    assert "PARTAGE_WEBHOOK_ALLOW_PRIVATE=true is refused in production" in allowed.stderr
