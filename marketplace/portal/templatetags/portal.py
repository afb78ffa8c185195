"""Small template helpers: navigation links with aria-current, durations, status badges."""

from __future__ import annotations

from typing import Any

from django import template
from django.urls import reverse
from django.utils.html import format_html
from django.utils.safestring import SafeString

register = template.Library()


@register.simple_tag(takes_context=True)
def nav_link(context: Any, name: str, label: str, prefix: str) -> SafeString:
    request = context.get("request")
    match = getattr(request, "resolver_match", None)
    current = bool(match and (match.url_name or "").startswith(prefix))
    if current:
        return format_html(
            '<a href="{}" class="nav-link active" aria-current="page">{}</a>', reverse(name), label
        )
    return format_html('<a href="{}" class="nav-link">{}</a>', reverse(name), label)


@register.filter
def duration(seconds: Any) -> str:
    """12 → '12 s', 200 → '3 min 20 s', 7300 → '2 h 1 min'."""
    try:
        total = int(float(seconds))
    except (TypeError, ValueError):
        return "—"
    if total < 60:
        return f"{total} s"
    minutes, secs = divmod(total, 60)
    if minutes < 60:
        return f"{minutes} min {secs} s" if secs else f"{minutes} min"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes} min" if minutes else f"{hours} h"


STATUS_TONES = {
    "succeeded": "ok",
    "processed": "ok",
    "confirmed": "ok",
    "active": "ok",
    "approved": "ok",
    "running": "run",
    "queued": "wait",
    "validating_files": "wait",
    "paused": "wait",
    "pending": "wait",
    "pending_approval": "wait",
    "failed": "bad",
    "error": "bad",
    "rejected": "bad",
    "cancelled": "muted",
    "retiring": "wait",
    "retired": "muted",
    "suspended": "bad",
    "maintenance": "wait",
}


@register.simple_tag
def status_badge(status: str, label: str = "") -> SafeString:
    tone = STATUS_TONES.get(str(status), "muted")
    return format_html(
        '<span class="badge badge-{}">{}</span>', tone, label or str(status).replace("_", " ")
    )


@register.filter
def get(mapping: Any, key: Any) -> Any:
    try:
        return mapping.get(key)
    except AttributeError:
        return None


@register.filter
def public(status: str) -> str:
    """A job's internal state as the public (OpenAI-compatible) status."""
    from marketplace.finetuning.states import public_status

    try:
        return public_status(status)
    except ValueError:
        return status


@register.filter
def tone(status: str) -> str:
    return STATUS_TONES.get(str(status), "muted")


@register.filter
def topup_amount(shortfall: Any) -> str:
    """The amount an "Add credit" link pre-fills: the shortfall, at least the smallest top-up."""
    from decimal import Decimal

    from django.conf import settings

    amount = max(Decimal(shortfall), Decimal(settings.PARTAGE_TOPUP_MIN))
    return f"{amount:.2f}"
