"""What an API key may do: one table maps every /v1 route to the right it needs to read it and
to write to it (marketplace.accounts.scopes); a key whose scopes do not grant it gets a 403.

A route missing from the table is refused to every key (fail closed); a test checks that each
/v1 route is listed. Read-like POSTs (quotes, estimates) need only `read`. Keys may also be
limited to resources: the first segment of the /v1 path, with the webhook routes grouped.
"""

from __future__ import annotations

from typing import Any

from rest_framework.permissions import SAFE_METHODS, BasePermission
from rest_framework.request import Request

from marketplace.accounts.scopes import ADMIN, BILLING, DESCRIPTIONS, JOBS, READ, allows
from marketplace.api.authentication import ApiKeyPrincipal

# url name → (right needed to read, right needed to write)
ROUTE_RIGHTS: dict[str, tuple[str, str]] = {
    # files and fine-tuning
    "files": (READ, JOBS),
    "file": (READ, JOBS),
    "file-content": (READ, JOBS),
    "jobs": (READ, JOBS),
    "job": (READ, JOBS),
    "job-cancel": (READ, JOBS),
    "job-pause": (READ, JOBS),
    "job-resume": (READ, JOBS),
    "job-events": (READ, JOBS),
    "job-events-stream": (READ, JOBS),
    "job-checkpoints": (READ, JOBS),
    "models": (READ, JOBS),
    "model": (READ, JOBS),
    "bench-bare": (READ, READ),
    "not-found": (READ, READ),
    # organization and keys
    "organization": (READ, ADMIN),
    "organization-members": (READ, ADMIN),
    "api-keys": (ADMIN, ADMIN),
    "api-key": (ADMIN, ADMIN),
    "api-key-revoke": (ADMIN, ADMIN),
    # capacity: offers, pools (providers), bookings, residency
    "gpu-flavors": (READ, READ),
    "offers": (READ, READ),
    "pools": (READ, ADMIN),
    "pool": (READ, ADMIN),
    "pool-maintenance": (READ, ADMIN),
    "bookings": (READ, BILLING),
    "booking-quote": (READ, READ),
    "booking": (READ, BILLING),
    "booking-cancellation-quote": (READ, READ),
    "booking-cancel": (READ, BILLING),
    "placement-estimate": (READ, READ),
    "residency-policy": (READ, ADMIN),
    # quotas (the admin-* routes are staff-only besides)
    "quotas": (READ, READ),
    "usage": (READ, READ),
    "admin-quotas": (ADMIN, ADMIN),
    "admin-queue": (ADMIN, ADMIN),
    "admin-quota-audit": (ADMIN, ADMIN),
    "admin-org-quota": (ADMIN, ADMIN),
    "admin-org-plan": (ADMIN, ADMIN),
    # billing
    "billing-balance": (READ, BILLING),
    "billing-usage": (READ, BILLING),
    "billing-invoices": (READ, BILLING),
    "billing-invoice": (READ, BILLING),
    "billing-invoice-download": (READ, BILLING),
    "billing-statements": (READ, BILLING),
    "billing-statement": (READ, BILLING),
    "billing-cost-estimate": (READ, READ),
    "billing-topups": (READ, BILLING),
    "billing-topup": (READ, BILLING),
    "billing-topup-proforma": (READ, BILLING),
    "billing-settings": (READ, BILLING),
    "billing-payouts": (READ, BILLING),
    # inference on fine-tuned models: it runs (and bills) the organization's models
    "chat-completions": (JOBS, JOBS),
    # data protection: an export holds everything the organization has, so it is admin's
    "organization-exports": (READ, ADMIN),
    "organization-export": (READ, ADMIN),
    "organization-export-content": (ADMIN, ADMIN),
    "organization-retention": (READ, ADMIN),
    "organization-staff-access": (READ, READ),
    # webhooks
    "webhook-endpoints": (READ, ADMIN),
    "webhook-endpoint": (READ, ADMIN),
    "webhook-endpoint-rotate": (ADMIN, ADMIN),
    "webhook-endpoint-test": (READ, ADMIN),
    "webhook-event-types": (READ, READ),
    "webhook-deliveries": (READ, ADMIN),
    "webhook-delivery": (READ, ADMIN),
    "webhook-delivery-redeliver": (READ, ADMIN),
}

ALIASES = {
    "webhook_endpoints": "webhooks",
    "webhook_deliveries": "webhooks",
    "webhook_event_types": "webhooks",
}


def right_needed(url_name: str | None, method: str) -> str | None:
    """The right a request needs, or None when the route is not in the table."""
    rights = ROUTE_RIGHTS.get(url_name or "")
    if rights is None:
        return None
    return rights[0] if method in SAFE_METHODS else rights[1]


def resource_of(request: Request, view: Any) -> str:
    named = getattr(view, "api_resource", None)
    if named:
        return str(named)
    segments = [s for s in request.path.split("/") if s]
    first = segments[1] if len(segments) > 1 and segments[0] == "v1" else ""
    return ALIASES.get(first, first)


class ApiKeyScope(BasePermission):
    def has_permission(self, request: Request, view: Any) -> bool:
        principal = request.user
        if not isinstance(principal, ApiKeyPrincipal):
            return True  # other authentications (job tokens) have their own permissions
        key = principal.key
        match = request.resolver_match
        needed = right_needed(match.url_name if match else None, request.method or "GET")
        if needed is None or not allows(key.scopes, needed):
            held = ", ".join(key.scopes) or "none"
            self.message = (
                f"This API key's scopes ({held}) do not allow {request.method} {request.path}"
                + (
                    f"; it needs a key with the '{needed}' scope ({DESCRIPTIONS[needed]})."
                    if needed
                    else "."
                )
            )
            return False
        resource = resource_of(request, view)
        if key.resources and resource not in key.resources:
            self.message = (
                f"This API key is limited to {', '.join(key.resources)}; it cannot reach "
                f"'{resource}'. Use a key that includes it."
            )
            return False
        return True
