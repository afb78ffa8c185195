"""Security headers for every HTML page: a strict Content-Security-Policy.

The portal has no inline script, no inline event handler and no inline style, so the policy
allows only same-origin files. The Django admin keeps inline styles, so it gets a looser style-src.
"""

from __future__ import annotations

from collections.abc import Callable

from django.http import HttpRequest, HttpResponse

_BASE = (
    "default-src 'self'; script-src 'self'; img-src 'self' data:; font-src 'self'; "
    "connect-src 'self'; object-src 'none'; base-uri 'self'; form-action 'self'; "
    "frame-ancestors 'none'"
)
PORTAL_POLICY = f"{_BASE}; style-src 'self'"


def portal_policy_posting_to(origin: str) -> str:
    """The portal policy for a page whose form is answered by a redirect to `origin` (the
    payment provider's checkout page): browsers check form-action on every redirect."""
    return PORTAL_POLICY.replace("form-action 'self'", f"form-action 'self' {origin}")


ADMIN_POLICY = f"{_BASE}; style-src 'self' 'unsafe-inline'"


class ContentSecurityPolicyMiddleware:
    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        response = self.get_response(request)
        if "Content-Security-Policy" not in response:
            admin = request.path.startswith("/admin/")
            response["Content-Security-Policy"] = ADMIN_POLICY if admin else PORTAL_POLICY
        return response
