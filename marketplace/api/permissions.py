"""What an API key may do: read-only keys only read; keys limited to resources only reach those.

A resource is the first segment of the /v1 path (`files`, `fine_tuning`, `models`, `bookings`…),
with the webhook routes grouped as `webhooks`. A view may name its own with `api_resource`.
"""

from __future__ import annotations

from typing import Any

from rest_framework.permissions import SAFE_METHODS, BasePermission
from rest_framework.request import Request

from marketplace.api.authentication import ApiKeyPrincipal

ALIASES = {
    "webhook_endpoints": "webhooks",
    "webhook_deliveries": "webhooks",
    "webhook_event_types": "webhooks",
}


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
        if key.read_only and request.method not in SAFE_METHODS:
            self.message = (
                f"This API key is read-only; {request.method} {request.path} needs a key "
                "that can write."
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
