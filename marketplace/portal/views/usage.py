"""Usage: GPU-hours and spend over time, quota gauges, invoices."""

from __future__ import annotations

from django.http import HttpRequest, HttpResponse

from marketplace.portal.context import org_required, page


@org_required
def usage(request: HttpRequest) -> HttpResponse:
    return page(request, "portal/usage/usage.html", {})
