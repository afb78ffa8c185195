"""SSRF: webhook targets never reach Partage's own network, whatever form the address takes.

IPv6 forms that embed an IPv4 address (NAT64, 6to4, IPv4-compatible, IPv4-mapped, Teredo) are
refused when the embedded address is not global, on create, on update and at delivery; and a
delivery connects to the address that was checked, so DNS rebinding cannot move it inside.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from typing import Any

import pytest

from marketplace.api.models import WebhookDelivery, WebhookEndpoint
from marketplace.api.webhooks import services as webhooks
from marketplace.api.webhooks.targets import webhook_url_check
from marketplace.errors import InvalidInput

pytestmark = pytest.mark.django_db(transaction=True)

# The addresses (loopback and the cloud metadata address 169.254.169.254 in IPv6 dress),
# and the other forms that embed a non-global IPv4 address.
EMBEDDED_INTERNAL = [
    "http://[64:ff9b::7f00:1]/",  # NAT64 of 127.0.0.1
    "http://[64:ff9b::a9fe:a9fe]/",  # NAT64 of 169.254.169.254
    "http://[2002:7f00:1::]/",  # 6to4 of 127.0.0.1
    "http://[2002:a9fe:a9fe::]/",  # 6to4 of 169.254.169.254
    "http://[::127.0.0.1]/",  # IPv4-compatible 127.0.0.1
    "http://[::a9fe:a9fe]/",  # IPv4-compatible 169.254.169.254
    "http://[::ffff:a9fe:a9fe]/",  # IPv4-mapped 169.254.169.254
    "http://[::ffff:10.0.0.1]/",  # IPv4-mapped private
    "http://[64:ff9b::a00:1]/hook",  # NAT64 of 10.0.0.1
    "http://[64:ff9b:1::7f00:1]/",  # local-use NAT64 (RFC 8215), never global
    "http://[2002:c0a8:1::]/",  # 6to4 of 192.168.0.1
    "http://[2002:6440:1::]:8080/",  # 6to4 of 100.64.0.1 (shared address space)
    "http://[2001:0:a9fe:a9fe::1]/",  # Teredo, server 169.254.169.254
    "http://[2001:0:4136:e378:8000:63bf:80ff:fffe]/",  # Teredo, client 127.0.0.1
    "http://[::]/",
    "http://[::1]/",
]


def _refused(url: str) -> InvalidInput:
    with pytest.raises(InvalidInput) as caught:
        webhook_url_check(url)
    return caught.value


@pytest.fixture
def no_private(settings: Any) -> None:
    settings.PARTAGE_WEBHOOK_ALLOW_PRIVATE = False


@pytest.fixture
def eager_celery(settings: Any) -> Iterator[None]:
    from workers.celery import app

    previous = app.conf.task_always_eager
    settings.CELERY_TASK_ALWAYS_EAGER = True
    app.conf.task_always_eager = True
    yield
    app.conf.task_always_eager = previous


@pytest.fixture
def connections(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """Every address a socket connects to; nothing leaves the host (the connect is refused)."""
    seen: list[Any] = []

    def refuse(sock: socket.socket, address: Any) -> None:
        seen.append(address[0])
        raise ConnectionRefusedError(f"test network: no route to {address[0]}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    return seen


@pytest.mark.parametrize("url", EMBEDDED_INTERNAL)
def test_addresses_embedding_an_internal_ipv4_are_refused(url: str, no_private: None) -> None:
    refusal = _refused(url)
    assert refusal.code == "webhook_url_not_allowed" and refusal.param == "url"
    assert "non-public address" in refusal.message


@pytest.mark.parametrize(
    "url",
    [
        "https://[64:ff9b::5db8:d822]/hook",  # NAT64 of 93.184.216.34
        "https://[2002:5db8:d822::1]/hook",  # 6to4 of 93.184.216.34
        "https://[2606:4700:4700::1111]/hook",  # an ordinary global IPv6 address
        "https://93.184.216.34/hook",
    ],
)
def test_embedded_public_addresses_stay_allowed(url: str, no_private: None) -> None:
    webhook_url_check(url)


def test_a_host_name_resolving_to_an_embedded_internal_address_is_refused(
    no_private: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    def resolver(host: str, port: Any, *args: Any, **kwargs: Any) -> Any:
        assert host == "hooks.nat64.test"
        return [(socket.AF_INET6, socket.SOCK_STREAM, 6, "", ("64:ff9b::a9fe:a9fe", port, 0, 0))]

    monkeypatch.setattr(socket, "getaddrinfo", resolver)
    refusal = _refused("https://hooks.nat64.test/hook")
    assert "64:ff9b::a9fe:a9fe" in refusal.message


@pytest.mark.parametrize("url", ["http://[64:ff9b::7f00:1]/", "http://[2002:a9fe:a9fe::]/"])
def test_the_api_refuses_them_on_create(client_a: Any, no_private: None, url: str) -> None:
    response = client_a.post(
        "/v1/webhook_endpoints",
        {"name": "hook", "url": url, "event_types": ["fine_tuning.job.succeeded"]},
        format="json",
    )
    assert response.status_code == 400, response.content
    error = response.json()["error"]
    assert (error["code"], error["param"]) == ("webhook_url_not_allowed", "url")
    assert not WebhookEndpoint.objects.exists()


@pytest.mark.parametrize("url", ["http://[::127.0.0.1]/", "http://[::a9fe:a9fe]/latest"])
def test_the_api_refuses_them_on_update(
    client_a: Any, org_a: Any, no_private: None, url: str
) -> None:
    endpoint = webhooks.webhook_endpoint_create(
        organization=org_a,
        name="hook",
        url="https://93.184.216.34/hook",
        event_types=["fine_tuning.job.succeeded"],
    )
    response = client_a.post(f"/v1/webhook_endpoints/{endpoint.id}", {"url": url}, format="json")
    assert response.status_code == 400, response.content
    assert response.json()["error"]["code"] == "webhook_url_not_allowed"
    endpoint.refresh_from_db()
    assert endpoint.url == "https://93.184.216.34/hook"


@pytest.mark.parametrize("url", ["http://[64:ff9b::a9fe:a9fe]/", "http://[2002:7f00:1::]/"])
def test_a_stored_endpoint_is_refused_again_at_delivery(
    org_a: Any, settings: Any, eager_celery: None, connections: list[Any], url: str
) -> None:
    settings.PARTAGE_WEBHOOK_ALLOW_PRIVATE = True  # registered while allowed (development)...
    webhooks.webhook_endpoint_create(
        organization=org_a, name="hook", url=url, event_types=["fine_tuning.job.succeeded"]
    )
    settings.PARTAGE_WEBHOOK_ALLOW_PRIVATE = False  # ...but delivery checks again
    event = webhooks.webhook_event_emit(
        organization=org_a, event_type="fine_tuning.job.succeeded", data={"id": "ftjob-s"}
    )
    attempt = WebhookDelivery.objects.get(event=event).attempts.get()
    assert attempt.status_code is None
    assert attempt.error.startswith("target refused:") and "non-public" in attempt.error
    assert connections == []  # not even a connection attempt


def test_dns_rebinding_cannot_swap_the_checked_address(
    org_a: Any, no_private: None, eager_celery: None, connections: list[Any], monkeypatch: Any
) -> None:
    """The resolver answers a public address for the check, then loopback for whoever asks
    next. The delivery connects to the public address it checked; a later attempt that
    resolves to loopback is refused before any connection."""
    answers = iter(["93.184.216.34", "93.184.216.34", "127.0.0.1", "127.0.0.1"])
    lookups: list[str] = []
    real_getaddrinfo = socket.getaddrinfo

    def rebinding(host: str, port: Any, *args: Any, **kwargs: Any) -> Any:
        if host != "hooks.rebind.test":
            return real_getaddrinfo(host, port, *args, **kwargs)
        lookups.append(host)
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (next(answers), port))]

    monkeypatch.setattr(socket, "getaddrinfo", rebinding)
    endpoint = webhooks.webhook_endpoint_create(
        organization=org_a,
        name="hook",
        url="http://hooks.rebind.test/hook",
        event_types=["fine_tuning.job.succeeded"],
    )
    assert lookups == ["hooks.rebind.test"]  # the check at registration
    event = webhooks.webhook_event_emit(
        organization=org_a, event_type="fine_tuning.job.succeeded", data={"id": "ftjob-r"}
    )
    delivery = WebhookDelivery.objects.get(event=event)
    first = delivery.attempts.get()
    # One lookup for the delivery; the socket went to the address that lookup returned, even
    # though the resolver would now answer 127.0.0.1.
    assert lookups == ["hooks.rebind.test"] * 2
    assert connections == ["93.184.216.34"]
    assert first.status_code is None and "no route to 93.184.216.34" in first.error
    # The next attempt resolves again, gets loopback, and is refused without connecting.
    webhooks.webhook_delivery_attempt(delivery_id=delivery.id, force=True)
    second = delivery.attempts.order_by("number").last()
    assert second is not None and second.error.startswith("target refused:")
    assert "127.0.0.1" in second.error
    assert connections == ["93.184.216.34"]
    assert endpoint.url == "http://hooks.rebind.test/hook"
