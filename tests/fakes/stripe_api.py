"""A fake of Stripe's HTTP API, for the Checkout Sessions the official `stripe` SDK creates.

It speaks Stripe's wire format: form-encoded requests with nested keys (`line_items[0][price_data]
[unit_amount]=1000`), Bearer secret-key auth, Idempotency-Key replays, JSON objects shaped as in
Stripe's OpenAPI spec (`checkout.session`, `event`) and errors as `{"error": {"type", "message",
"param"}}`. It serves:

- POST /v1/checkout/sessions, GET /v1/checkout/sessions/{id};
- GET /pay/{id}: the hosted checkout page, whose Pay button (POST /pay/{id}) completes the
  session, delivers a signed `checkout.session.completed` event to the webhook URL
  (`deliveries` times, to test duplicates) and redirects the browser to the session's
  success_url; POST /pay/{id}/cancel goes back to its cancel_url.

Deliveries are signed as Stripe signs them: `Stripe-Signature: t=<unix>,v1=<hex HMAC-SHA256 of
"<t>.<body>" with the endpoint secret>`.
"""

from __future__ import annotations

import hashlib
import hmac
import html
import itertools
import json
import re
import secrets
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, urlsplit

API_VERSION = "2025-01-27.acacia"


def form_decode(body: str) -> dict[str, Any]:
    """Stripe's form encoding back into nested dicts and lists: a[b][0][c]=v."""
    root: dict[str, Any] = {}
    for key, value in parse_qsl(body, keep_blank_values=True):
        parts = re.findall(r"[^\[\]]+", key)
        node: Any = root
        for part, following in itertools.pairwise(parts):
            child_is_list = following.isdigit()
            if isinstance(node, list):
                index = int(part)
                while len(node) <= index:
                    node.append([] if child_is_list else {})
                node = node[index]
            else:
                node = node.setdefault(part, [] if child_is_list else {})
        last = parts[-1]
        if isinstance(node, list):
            index = int(last)
            while len(node) <= index:
                node.append(None)
            node[index] = value
        else:
            node[last] = value
    return root


def signature_header(payload: str, secret: str, timestamp: int | None = None) -> str:
    timestamp = int(time.time()) if timestamp is None else timestamp
    mac = hmac.new(secret.encode(), f"{timestamp}.{payload}".encode(), hashlib.sha256)
    return f"t={timestamp},v1={mac.hexdigest()}"


class StripeApiError(Exception):
    def __init__(self, status: int, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.param = status, message, param


@dataclass
class Delivery:
    event_id: str
    event_type: str
    status: int


@dataclass
class FakeStripe:
    """The fake's state; `serve()` runs it on a free local port."""

    secret_key: str
    webhook_secret: str
    webhook_url: str = ""
    deliveries_per_event: int = 1
    sessions: dict[str, dict[str, Any]] = field(default_factory=dict)
    events: list[dict[str, Any]] = field(default_factory=list)
    deliveries: list[Delivery] = field(default_factory=list)
    requests: list[tuple[str, str]] = field(default_factory=list)
    idempotent: dict[str, dict[str, Any]] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)
    base_url: str = ""
    _server: ThreadingHTTPServer | None = None

    # ------------------------------------------------------------ API

    def session_create(self, params: dict[str, Any]) -> dict[str, Any]:
        if params.get("mode") != "payment":
            raise StripeApiError(400, "This fake supports mode=payment only.", "mode")
        if not params.get("success_url"):
            raise StripeApiError(400, "Missing required param: success_url.", "success_url")
        items = params.get("line_items") or []
        if not items:
            raise StripeApiError(400, "Missing required param: line_items.", "line_items")
        amount, currency = 0, None
        for index, item in enumerate(items):
            price = item.get("price_data") or {}
            try:
                unit = int(price["unit_amount"])
                quantity = int(item.get("quantity", "1"))
            except (KeyError, ValueError):
                raise StripeApiError(
                    400, "Invalid integer.", f"line_items[{index}][price_data][unit_amount]"
                ) from None
            if unit < 0 or not price.get("currency"):
                raise StripeApiError(400, "Invalid price_data.", f"line_items[{index}][price_data]")
            amount += unit * quantity
            currency = price["currency"]
        now = int(time.time())
        expires_at = int(params.get("expires_at") or now + 24 * 3600)
        if not now + 30 * 60 - 60 <= expires_at <= now + 24 * 3600:
            # As Stripe: 30 minutes to 24 hours from creation (a minute of clock skew allowed).
            raise StripeApiError(
                400,
                "The `expires_at` timestamp must be 30 minutes to 24 hours from now.",
                "expires_at",
            )
        session_id = "cs_test_" + secrets.token_hex(24)
        session = {
            "id": session_id,
            "object": "checkout.session",
            "amount_subtotal": amount,
            "amount_total": amount,
            "cancel_url": params.get("cancel_url"),
            "client_reference_id": params.get("client_reference_id"),
            "created": now,
            "currency": currency,
            "customer": None,
            "customer_email": params.get("customer_email"),
            "expires_at": expires_at,
            "livemode": False,
            "metadata": params.get("metadata") or {},
            "mode": "payment",
            "payment_intent": None,
            "payment_method_types": ["card"],
            "payment_status": "unpaid",
            "status": "open",
            "success_url": params["success_url"],
            "url": f"{self.base_url}/pay/{session_id}",
        }
        self.sessions[session_id] = session
        return session

    def session_get(self, session_id: str) -> dict[str, Any]:
        session = self.sessions.get(session_id)
        if session is None:
            raise StripeApiError(404, f"No such checkout.session: '{session_id}'", "session")
        return session

    # ------------------------------------------------------------ the customer's side

    def pay(self, session_id: str) -> dict[str, Any]:
        """What the Pay button does: complete the session, then deliver the event."""
        with self.lock:
            session = self.session_get(session_id)
            if session["status"] != "open":
                raise StripeApiError(400, f"This Checkout Session is {session['status']}.")
            session.update(
                status="complete",
                payment_status="paid",
                payment_intent="pi_" + secrets.token_hex(12),
            )
        self.event_send("checkout.session.completed", session)
        return session

    def expire(self, session_id: str) -> dict[str, Any]:
        with self.lock:
            session = self.session_get(session_id)
            session["status"] = "expired"
        self.event_send("checkout.session.expired", session)
        return session

    def event_send(self, event_type: str, session: dict[str, Any]) -> dict[str, Any]:
        event = {
            "id": "evt_" + secrets.token_hex(12),
            "object": "event",
            "api_version": API_VERSION,
            "created": int(time.time()),
            "data": {"object": dict(session)},
            "livemode": False,
            "pending_webhooks": 1,
            "request": {"id": None, "idempotency_key": None},
            "type": event_type,
        }
        self.events.append(event)
        for _ in range(self.deliveries_per_event):
            self.deliver(event)
        return event

    def deliver(self, event: dict[str, Any], *, secret: str | None = None) -> int:
        """POST the event to the webhook URL, signed; returns the HTTP status."""
        payload = json.dumps(event)
        header = signature_header(payload, secret or self.webhook_secret)
        request = urllib.request.Request(
            self.webhook_url,
            data=payload.encode(),
            method="POST",
            headers={
                "Content-Type": "application/json; charset=utf-8",
                "Stripe-Signature": header,
                "User-Agent": "Stripe/1.0 (+https://stripe.com/docs/webhooks)",
            },
        )
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                status = response.status
        except urllib.error.HTTPError as e:
            status = e.code
        self.deliveries.append(Delivery(event["id"], event["type"], status))
        return status

    # ------------------------------------------------------------ server

    def serve(self) -> FakeStripe:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:  # quiet
                pass

            def do_GET(self) -> None:
                self._dispatch("GET")

            def do_POST(self) -> None:
                self._dispatch("POST")

            def _dispatch(self, method: str) -> None:
                path = urlsplit(self.path).path
                fake.requests.append((method, path))
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length).decode() if length else ""
                try:
                    if path.startswith("/v1/"):
                        self._api(method, path, body)
                    else:
                        self._page(method, path)
                except StripeApiError as e:
                    error = {"type": "invalid_request_error", "message": e.message}
                    if e.param:
                        error["param"] = e.param
                    self._json(e.status, {"error": error})

            def _api(self, method: str, path: str, body: str) -> None:
                auth = self.headers.get("Authorization", "")
                if auth != f"Bearer {fake.secret_key}":
                    self._json(
                        401,
                        {
                            "error": {
                                "type": "invalid_request_error",
                                "message": "Invalid API Key provided.",
                            }
                        },
                    )
                    return
                match = re.fullmatch(r"/v1/checkout/sessions(?:/([\w-]+))?", path)
                if match is None:
                    raise StripeApiError(404, f"Unrecognized request URL ({method}: {path}).")
                if method == "GET" and match.group(1):
                    self._json(200, fake.session_get(match.group(1)))
                    return
                if method != "POST" or match.group(1):
                    raise StripeApiError(404, f"Unrecognized request URL ({method}: {path}).")
                key = self.headers.get("Idempotency-Key")
                with fake.lock:
                    if key and key in fake.idempotent:
                        self._json(200, fake.idempotent[key])
                        return
                    session = fake.session_create(form_decode(body))
                    if key:
                        fake.idempotent[key] = session
                self._json(200, session)

            def _page(self, method: str, path: str) -> None:
                match = re.fullmatch(r"/pay/([\w-]+)(/cancel)?", path)
                if match is None:
                    self._html(404, "<h1>Not found</h1>")
                    return
                session_id, cancel = match.group(1), bool(match.group(2))
                if method == "GET":
                    self._html(200, checkout_page(fake.session_get(session_id)))
                    return
                if cancel:
                    self._redirect(fake.session_get(session_id)["cancel_url"])
                    return
                session = fake.pay(session_id)
                self._redirect(session["success_url"])

            def _json(self, status: int, body: Any) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Request-Id", "req_" + secrets.token_hex(7))
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _html(self, status: int, text: str) -> None:
                data = text.encode()
                self.send_response(status)
                self.send_header("Content-Type", "text/html; charset=utf-8")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _redirect(self, location: str) -> None:
                self.send_response(HTTPStatus.SEE_OTHER)
                self.send_header("Location", location)
                self.send_header("Content-Length", "0")
                self.end_headers()

        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        server.daemon_threads = True
        self._server = server
        self.base_url = f"http://127.0.0.1:{server.server_address[1]}"
        threading.Thread(target=server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()


def checkout_page(session: dict[str, Any]) -> str:
    amount = f"{session['amount_total'] / 100:.2f} {str(session['currency']).upper()}"
    sid = html.escape(session["id"])
    state = html.escape(session["status"])
    button = (
        f'<form method="post" action="/pay/{sid}"><button type="submit">Pay {amount}</button>'
        f'</form><form method="post" action="/pay/{sid}/cancel">'
        '<button type="submit">Cancel</button></form>'
        if session["status"] == "open"
        else f"<p>This session is {state}.</p>"
    )
    return (
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>"
        "<title>Fake Stripe Checkout</title></head><body><main>"
        f"<h1>Fake Stripe Checkout</h1><p>Amount due: <strong>{amount}</strong></p>"
        f"{button}</main></body></html>"
    )
