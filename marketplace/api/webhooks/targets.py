"""Where webhooks may be sent: never into Partage's own network.

Every address the host resolves to must be globally routable (no private, loopback,
link-local, shared, reserved or multicast address), and so must every IPv4 address an IPv6
address embeds (IPv4-mapped, IPv4-compatible, NAT64, 6to4, Teredo), unless PARTAGE_WEBHOOK_ALLOW_PRIVATE is set
for development and tests. The check runs at registration and again before each delivery, and
the delivery connects to the very address that passed the check (`webhook_post`): a DNS answer
that changes between the check and the connection (DNS rebinding) cannot redirect it inside.
"""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass
from urllib.parse import urlsplit

import certifi
import urllib3
from django.conf import settings

from marketplace.errors import InvalidInput


def _allow_private() -> bool:
    return bool(getattr(settings, "PARTAGE_WEBHOOK_ALLOW_PRIVATE", False))


# IPv6 prefixes that carry an IPv4 address in their last 32 bits: NAT64 (RFC 6052) and the
# deprecated IPv4-compatible form (RFC 4291). A gateway or an old stack turns them into IPv4,
# so `64:ff9b::7f00:1` is 127.0.0.1 once it leaves the host.
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
_IPV4_COMPATIBLE = ipaddress.IPv6Network("::/96")
# Reserved for NAT64 inside one network (RFC 8215): never on the public internet.
_NAT64_LOCAL = ipaddress.IPv6Network("64:ff9b:1::/48")


def _embedded_ipv4(ip: ipaddress.IPv6Address) -> list[ipaddress.IPv4Address]:
    """The IPv4 addresses an IPv6 address hands traffic to (mapped, NAT64, 6to4, Teredo, ...)."""
    last_32 = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    embedded = [last_32] if ip in _NAT64 or ip in _IPV4_COMPATIBLE else []
    if ip.ipv4_mapped is not None:
        embedded.append(ip.ipv4_mapped)
    if ip.sixtofour is not None:
        embedded.append(ip.sixtofour)
    if ip.teredo is not None:
        embedded.extend(ip.teredo)  # the Teredo server and the client's (obfuscated) address
    return embedded


def _ip_is_public(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    return ip.is_global and not ip.is_multicast


def _address_is_public(address: str) -> bool:
    """True when `address`, and every IPv4 address it embeds, is globally routable."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv4Address):
        return _ip_is_public(ip)
    if ip in _NAT64_LOCAL:
        return False
    embedded = _embedded_ipv4(ip)
    if ip.ipv4_mapped is None and not _ip_is_public(ip):
        return False  # (a mapped address is judged by its IPv4 alone, like the stack does)
    return all(_ip_is_public(v4) for v4 in embedded)


@dataclass(frozen=True)
class Target:
    """A checked delivery target: connect to `address`, speak to `host` (Host header, TLS)."""

    scheme: str
    host: str
    port: int
    path: str
    address: str


def webhook_url_check(url: str, *, param: str = "url") -> None:
    """Raise InvalidInput unless `url` is an acceptable delivery target."""
    _parts_check(url, param=param)
    if not _allow_private():
        webhook_target(url, param=param)


def _parts_check(url: str, *, param: str) -> tuple[str, str, int, str]:
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
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return parts.scheme, parts.hostname, port or (443 if parts.scheme == "https" else 80), path


def webhook_target(url: str, *, param: str = "url") -> Target:
    """Check `url` and resolve its host once; the address returned is the one to connect to."""
    scheme, host, port, path = _parts_check(url, param=param)
    try:
        infos = socket.getaddrinfo(host, port, proto=socket.IPPROTO_TCP)
    except (socket.gaierror, UnicodeError) as e:
        raise InvalidInput(
            f"The host {host!r} does not resolve ({e}); check the URL.", param=param
        ) from None
    addresses = list(dict.fromkeys(str(info[4][0]) for info in infos))
    blocked = sorted(a for a in addresses if not _address_is_public(a))
    if not addresses or (blocked and not _allow_private()):
        raise InvalidInput(
            f"The host {host!r} resolves to a non-public address ({', '.join(blocked)}); "
            "webhooks can only be sent to hosts on the public internet.",
            code="webhook_url_not_allowed",
            param=param,
        )
    return Target(scheme, host, port, path, addresses[0])


def webhook_post(
    target: Target, body: bytes, headers: dict[str, str], *, connect: float, read: float
) -> tuple[int, bytes]:
    """POST to the checked address (no redirects, no retries); returns (status, body start).

    Raises urllib3's HTTPError (or OSError) when the endpoint cannot be reached.
    """
    host_header = f"[{target.host}]" if ":" in target.host else target.host
    if target.port != (443 if target.scheme == "https" else 80):
        host_header += f":{target.port}"
    timeout = urllib3.Timeout(connect=connect, read=read)
    pool: urllib3.HTTPConnectionPool
    if target.scheme == "https":
        pool = urllib3.HTTPSConnectionPool(
            target.address,
            port=target.port,
            timeout=timeout,
            retries=False,
            maxsize=1,
            server_hostname=target.host,
            assert_hostname=target.host,
            cert_reqs="CERT_REQUIRED",
            ca_certs=certifi.where(),
        )
    else:
        pool = urllib3.HTTPConnectionPool(
            target.address, port=target.port, timeout=timeout, retries=False, maxsize=1
        )
    try:
        response = pool.urlopen(
            "POST",
            target.path,
            body=body,
            headers={**headers, "host": host_header},
            redirect=False,
            preload_content=False,
            assert_same_host=False,
        )
        try:
            return response.status, response.read(2000)
        finally:
            response.release_conn()
    finally:
        pool.close()
