"""The staff cockpit: capacity and jobs per pool, usage against quotas, approvals, prices."""

from __future__ import annotations

from django.http import HttpRequest, HttpResponse

from marketplace.portal.context import page, staff_required


@staff_required
def cockpit(request: HttpRequest) -> HttpResponse:
    return page(request, "portal/staff/cockpit.html", {})
