"""GPU offers and bookings."""

from __future__ import annotations

from django.http import HttpRequest, HttpResponse

from marketplace.portal.context import org_required, page


@org_required
def offer_list(request: HttpRequest) -> HttpResponse:
    return page(request, "portal/offers/list.html", {})
