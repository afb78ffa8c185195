"""Self-serve top-ups of the prepaid balance ("Money in", docs/billing.md).

An organization starts a top-up (topup_start) through one of two payment methods:

- card: a Stripe Checkout Session, created with the official `stripe` SDK (its API base is a
  setting, so tests and the demo point it at a local fake of Stripe's HTTP API). The balance is
  credited once, on the signed `checkout.session.completed` webhook (stripe_webhook_handle);
- bank_transfer: a proforma with a unique payment reference; staff credit it once when they see
  the transfer arrive (topup_bank_received).

Either way the credit (_topup_credit) is one conditional UPDATE of the top-up (pending/expired →
credited) and one ledger entry whose UNIQUE key is topup:<method>:<reference>, in one transaction
under the org's balance lock: a replayed, duplicated or concurrent confirmation credits once.
"""

from __future__ import annotations

import logging
import secrets
import uuid
from dataclasses import dataclass
from datetime import timedelta
from decimal import Decimal
from typing import Any, Protocol

import stripe
from django.conf import settings
from django.db import transaction
from django.utils import timezone

from marketplace.accounts.models import Organization
from marketplace.billing.models import Account, JournalEntry, Topup
from marketplace.billing.money import amount_parse
from marketplace.billing.services.alerts import balance_low_check
from marketplace.billing.services.ledger import Leg, account_lock, entry_post
from marketplace.errors import InvalidInput, InvalidTransition, NotFound, PartageError

logger = logging.getLogger("partage.billing")

WEBHOOK_TOLERANCE_SECONDS = 300
CREDITABLE = (Topup.Status.PENDING, Topup.Status.EXPIRED)
# Bank references: no 0/O, 1/I/L, so that a reference read aloud or retyped stays the same.
REFERENCE_ALPHABET = "23456789ABCDEFGHJKMNPQRSTUVWXYZ"


class PaymentProviderUnavailable(PartageError):
    code = "payment_provider_unavailable"
    error_type = "api_error"
    http_status = 502


class WebhookRefused(PartageError):
    code = "invalid_signature"


def topup_amount_parse(value: object, *, param: str = "amount") -> Decimal:
    """amount_parse, within the self-serve bounds (PARTAGE_TOPUP_MIN..PARTAGE_TOPUP_MAX)."""
    amount = amount_parse(value, param=param)
    low, high = settings.PARTAGE_TOPUP_MIN, settings.PARTAGE_TOPUP_MAX
    if not low <= amount <= high:
        raise InvalidInput(
            f"{param} must be from €{low:.2f} to €{high:.2f} per top-up; got €{amount}. "
            "For a larger amount, make several top-ups or contact Partage staff.",
            param=param,
        )
    return amount


# ---------------------------------------------------------------- payment methods


@dataclass(frozen=True)
class PaymentStart:
    """What the payment method gives back: its reference for the payment, and where to send
    the customer next (empty: nowhere, e.g. a bank transfer's proforma)."""

    reference: str
    redirect_url: str = ""


class PaymentMethod(Protocol):
    @property
    def method(self) -> str: ...

    def start(self, *, topup: Topup, return_url: str, email: str) -> PaymentStart: ...


def stripe_client() -> stripe.StripeClient:
    """The official SDK, pointed at PARTAGE_STRIPE_API_BASE (Stripe, or a local fake)."""
    return stripe.StripeClient(
        settings.PARTAGE_STRIPE_SECRET_KEY,
        base_addresses={"api": settings.PARTAGE_STRIPE_API_BASE},
        max_network_retries=2,
    )


class StripeCheckout:
    """Card payments: a Stripe Checkout Session in payment mode for the top-up's amount."""

    method: str = Topup.Method.CARD.value

    def start(self, *, topup: Topup, return_url: str, email: str) -> PaymentStart:
        separator = "&" if "?" in return_url else "?"
        params: dict[str, Any] = {
            "mode": "payment",
            "client_reference_id": topup.public_id,
            "metadata": {
                "topup_id": topup.public_id,
                "organization_id": topup.organization.public_id,
            },
            "line_items": [
                {
                    "quantity": 1,
                    "price_data": {
                        "currency": "eur",
                        "unit_amount": int(topup.amount * 100),
                        "product_data": {"name": "Partage prepaid credit"},
                    },
                }
            ],
            "success_url": f"{return_url}{separator}topup={topup.public_id}&result=paid",
            "cancel_url": f"{return_url}{separator}topup={topup.public_id}&result=cancelled",
        }
        if topup.expires_at is not None:
            params["expires_at"] = int(topup.expires_at.timestamp())
        if email:
            params["customer_email"] = email
        try:
            session = stripe_client().v1.checkout.sessions.create(
                params=params,  # type: ignore[arg-type]
                options={"idempotency_key": f"partage-{topup.public_id}"},
            )
        except stripe.StripeError as e:
            # The SDK's message, never the key or the request: both may carry secrets.
            raise PaymentProviderUnavailable(
                "The card payment provider could not start the payment "
                f"({type(e).__name__}); try again in a minute, or pay by bank transfer.",
                param="method",
            ) from e
        return PaymentStart(reference=session.id, redirect_url=session.url or "")


class BankTransfer:
    """Bank transfers: a unique payment reference the customer quotes on the transfer."""

    method: str = Topup.Method.BANK_TRANSFER.value

    def start(self, *, topup: Topup, return_url: str, email: str) -> PaymentStart:
        return PaymentStart(reference=bank_reference_new())


def bank_reference_new() -> str:
    body = "".join(secrets.choice(REFERENCE_ALPHABET) for _ in range(8))
    return f"PTG-{body[:4]}-{body[4:]}"


def payment_method(method: str) -> PaymentMethod:
    if method == Topup.Method.CARD:
        if not settings.PARTAGE_STRIPE_ENABLED:
            raise InvalidInput(
                "Card payments are not enabled on this Partage; use method=bank_transfer.",
                param="method",
            )
        return StripeCheckout()
    if method == Topup.Method.BANK_TRANSFER:
        return BankTransfer()
    raise InvalidInput(
        f"method must be one of {', '.join(Topup.Method.values)}; got {method!r}.", param="method"
    )


def methods_available() -> list[str]:
    methods = [Topup.Method.BANK_TRANSFER.value]
    if settings.PARTAGE_STRIPE_ENABLED:
        methods.insert(0, Topup.Method.CARD.value)
    return methods


# ---------------------------------------------------------------- starting a top-up


def topup_start(
    *,
    organization: Organization,
    amount: object,
    method: str,
    return_url: str = "",
    created_by: str = "",
    email: str = "",
) -> Topup:
    """Start a top-up: validate, record it pending, then ask the payment method to start it.

    A card top-up comes back with `checkout_url` (send the customer there); a bank transfer
    with its payment `reference` (quote it on the transfer; the proforma says so). Nothing is
    credited here. If the payment provider fails, the top-up is kept as failed, and
    PaymentProviderUnavailable is raised.
    """
    parsed = topup_amount_parse(amount)
    provider = payment_method(method)
    now = timezone.now()
    lifetime = (
        timedelta(minutes=settings.PARTAGE_STRIPE_CHECKOUT_MINUTES)
        if provider.method == Topup.Method.CARD
        else timedelta(days=settings.PARTAGE_TOPUP_PROFORMA_DAYS)
    )
    public_id = f"topup-{uuid.uuid4().hex[:24]}"
    topup = Topup.objects.create(
        public_id=public_id,
        organization=organization,
        method=provider.method,
        amount=parsed,
        # Replaced by the provider's reference below; unique meanwhile.
        reference=f"starting:{public_id}",
        created_by=created_by[:150],
        created_at=now,
        expires_at=now + lifetime,
    )
    try:
        started = provider.start(
            topup=topup, return_url=return_url or settings.PARTAGE_PUBLIC_URL, email=email
        )
    except PaymentProviderUnavailable as e:
        Topup.objects.filter(pk=topup.pk).update(
            status=Topup.Status.FAILED, failure_reason=e.message[:300]
        )
        raise
    topup.reference, topup.checkout_url = started.reference, started.redirect_url
    topup.save(update_fields=["reference", "checkout_url"])
    logger.info(
        "topup started",
        extra={"org_id": organization.pk, "topup": public_id, "method": provider.method},
    )
    return topup


# ---------------------------------------------------------------- crediting


def _topup_credit(*, topup_id: int, amount: Decimal, credited_by: str, memo: str) -> bool:
    """Credit a pending (or expired) top-up once. True when this call credited it."""
    with transaction.atomic():
        org_id = Topup.objects.values_list("organization_id", flat=True).get(pk=topup_id)
        account = account_lock(organization_id=org_id)
        # The top-up row, locked after the balance (the lock order ends pool → org quota → org
        # balance → top-up): of concurrent confirmations, the first credits, the others then
        # find it credited.
        topup = Topup.objects.select_for_update().get(pk=topup_id)
        if topup.status not in CREDITABLE:
            return False
        entry = entry_post(
            key=f"topup:{topup.method}:{topup.reference}",
            kind=JournalEntry.Kind.TOPUP,
            organization_id=topup.organization_id,
            memo=memo,
            created_by=credited_by,
            legs=[
                Leg(Account.CASH, amount),
                Leg(Account.CUSTOMER_BALANCE, -amount, topup.organization_id),
            ],
        )
        topup.status, topup.entry = Topup.Status.CREDITED, entry
        topup.credited_at, topup.credited_by = timezone.now(), credited_by[:150]
        topup.save(update_fields=["status", "entry", "credited_at", "credited_by"])
        balance_low_check(accounts={account.organization_id: account}, rearm=True)
    logger.info(
        "topup credited",
        extra={"org_id": topup.organization_id, "topup": topup.public_id, "amount": str(amount)},
    )
    return True


def topup_bank_received(*, topup_id: str, actor: str) -> tuple[Topup, bool]:
    """Staff saw the bank transfer arrive: credit it once (a second call changes nothing).

    Returns the top-up and whether this call credited it.
    """
    topup = Topup.objects.filter(public_id=topup_id, method=Topup.Method.BANK_TRANSFER).first()
    if topup is None:
        raise NotFound(f"No bank-transfer top-up {topup_id!r}.", param="topup_id")
    if topup.status == Topup.Status.FAILED:
        raise InvalidTransition(f"Top-up {topup_id} failed; it cannot be credited.")
    credited = _topup_credit(
        topup_id=topup.pk,
        amount=topup.amount,
        credited_by=actor,
        memo=f"Top-up by bank transfer {topup.reference}, marked received by {actor}",
    )
    topup.refresh_from_db()
    return topup, credited


# ---------------------------------------------------------------- Stripe webhook


def stripe_webhook_handle(*, payload: bytes, signature: str) -> str:
    """Verify and apply one Stripe webhook delivery; returns what it did, for the log.

    WebhookRefused (nothing changes) on a bad or stale signature. A duplicate or out-of-order
    delivery is harmless: a completed session credits its top-up once.
    """
    try:
        event = stripe.Webhook.construct_event(
            payload,
            signature,
            settings.PARTAGE_STRIPE_WEBHOOK_SECRET,
            tolerance=WEBHOOK_TOLERANCE_SECONDS,
        )
    except (stripe.SignatureVerificationError, ValueError) as e:
        raise WebhookRefused(
            "The Stripe-Signature header does not match this payload and the webhook secret "
            "(or is older than 5 minutes); nothing was changed.",
            param="Stripe-Signature",
        ) from e
    session = event["data"]["object"].to_dict()
    handlers = {
        "checkout.session.completed": _session_completed,
        "checkout.session.async_payment_succeeded": _session_completed,
        "checkout.session.expired": _session_closed,
        "checkout.session.async_payment_failed": _session_closed,
    }
    handler = handlers.get(event["type"])
    if handler is None or session.get("object") != "checkout.session":
        return f"ignored {event['type']}"
    topup = _topup_of_session(session)
    if topup is None:
        logger.warning("stripe webhook for an unknown session", extra={"event": event["id"]})
        return "unknown session"
    return handler(topup, session, event["type"])


def _topup_of_session(session: Any) -> Topup | None:
    return Topup.objects.filter(
        method=Topup.Method.CARD,
        reference=session["id"],
        public_id=session.get("client_reference_id") or "",
    ).first()


def _session_completed(topup: Topup, session: Any, event_type: str) -> str:
    if session.get("payment_status") != "paid":
        return "completed, payment pending"  # async methods: async_payment_succeeded follows
    paid = Decimal(int(session.get("amount_total") or 0)) / 100
    if paid != topup.amount or str(session.get("currency", "")).lower() != "eur":
        Topup.objects.filter(pk=topup.pk, status__in=CREDITABLE).update(
            status=Topup.Status.FAILED,
            failure_reason=f"Stripe reported {paid} {session.get('currency')} paid, "
            f"not {topup.amount} EUR: check it in the Stripe dashboard.",
        )
        logger.error("stripe amount mismatch", extra={"topup": topup.public_id})
        return "amount mismatch"
    credited = _topup_credit(
        topup_id=topup.pk,
        amount=topup.amount,
        credited_by="stripe",
        memo=f"Top-up by card, Stripe Checkout Session {topup.reference}",
    )
    return "credited" if credited else "already credited"


def _session_closed(topup: Topup, session: Any, event_type: str) -> str:
    status = Topup.Status.EXPIRED if event_type.endswith("expired") else Topup.Status.FAILED
    moved = Topup.objects.filter(pk=topup.pk, status=Topup.Status.PENDING).update(
        status=status, failure_reason=event_type
    )
    return status if moved else "unchanged"
