"""Where webhooks may be sent: never into Partage's own network.

Every address the host resolves to must be globally routable (no private, loopback,
link-local, shared, reserved or multicast address), unless PARTAGE_WEBHOOK_ALLOW_PRIVATE is set
for development and tests. The check runs at registration and again before each delivery.
"""

from __future__ import annotations

import ipaddress
import socket
from urllib.parse import urlsplit

from django.conf import settings

from marketplace.errors import InvalidInput


def _allow_private() -> bool:
    return bool(getattr(settings, "PARTAGE_WEBHOOK_ALLOW_PRIVATE", False))


def _address_is_public(address: str) -> bool:
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_global and not ip.is_multicast


def webhook_url_check(url: str, *, param: str = "url") -> None:
    """Raise InvalidInput unless `url` is an acceptable delivery target."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as e:
        raise InvalidInput(f"url is not a valid URL: {e}.", param=param) from None
    allowed_schemes = {"https"} if settings.PRODUCTION else {"https", "http"}
    if parts.scheme not in allowed_schemes:
        raise InvalidInput(
            f"url must start with {' or '.join(sorted(s + '://' for s in allowed_schemes))}.",
            param=param,
        )
    if not parts.hostname:
        raise InvalidInput(
            "url has no host name, e.g. https://hooks.example.com/partage.", param=param
        )
    if parts.username or parts.password:
        raise InvalidInput("url must not carry credentials; use the signing secret.", param=param)
    if _allow_private():
        return
    try:
        infos = socket.getaddrinfo(
            parts.hostname,
            port or (443 if parts.scheme == "https" else 80),
            proto=socket.IPPROTO_TCP,
        )
    except (socket.gaierror, UnicodeError) as e:
        raise InvalidInput(
            f"The host {parts.hostname!r} does not resolve ({e}); check the URL.", param=param
        ) from None
    addresses = {str(info[4][0]) for info in infos}
    blocked = sorted(a for a in addresses if not _address_is_public(a))
    if blocked or not addresses:
        raise InvalidInput(
            f"The host {parts.hostname!r} resolves to a non-public address ({', '.join(blocked)}); "
            "webhooks can only be sent to hosts on the public internet.",
            code="webhook_url_not_allowed",
            param=param,
        )
