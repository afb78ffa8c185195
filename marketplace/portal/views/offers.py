"""GPU offers with their availability timeline, and bookings: quote, confirm, cancel."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from django.contrib import messages
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect
from django.utils import timezone
from django.views.decorators.http import require_POST

from marketplace.billing import services as billing
from marketplace.capacity import selectors as capacity
from marketplace.capacity import services as capacity_services
from marketplace.capacity.policies import POLICY_TEXT
from marketplace.capacity.timeline import peak
from marketplace.errors import PartageError
from marketplace.portal.context import error_message, org_required, page
from marketplace.portal.estimates import flavor_choices
from marketplace.portal.forms import BookingForm, OfferFilterForm

TIMELINE_DAYS = 14


def _timeline(pools: list[Any], start: datetime) -> dict[int, list[dict[str, Any]]]:
    """Per pool and day: GPUs free of bookings and maintenance (the least free in that day)."""
    end = start + timedelta(days=TIMELINE_DAYS)
    loads = capacity.reserved_loads([p.pk for p in pools], start, end)
    result: dict[int, list[dict[str, Any]]] = {}
    for pool in pools:
        days = []
        for day in range(TIMELINE_DAYS):
            begin = start + timedelta(days=day)
            free = pool.gpu_count - peak(loads.get(pool.pk, []), begin, begin + timedelta(days=1))
            level = "all" if free >= pool.gpu_count else ("none" if free <= 0 else "some")
            days.append({"day": begin, "free": max(free, 0), "level": level})
        result[pool.pk] = days
    return result


def _filters(form: OfferFilterForm) -> capacity.OfferFilters:
    if not form.is_valid():
        return capacity.OfferFilters()
    data = form.cleaned_data
    return capacity.OfferFilters(
        flavor=data["flavor"] or None,
        region=data["region"] or None,
        max_price=data["max_price"],
        gpus=data["gpus"],
    )


def _booking_rows(org: Any) -> list[dict[str, Any]]:
    """The org's latest bookings with billing's figures: VAT and total charged, refund + VAT."""
    bookings = capacity.bookings_for_org(org).prefetch_related("billing_charges")[:50]
    return [
        {
            "booking": b,
            "charged": billing.booking_charged(booking=b),
            "refunded": billing.booking_refunded(booking=b),
        }
        for b in bookings
    ]


def _offers_context(request: HttpRequest) -> dict[str, Any]:
    regions = sorted(set(capacity.placeable_pools().values_list("region", flat=True)))
    form = OfferFilterForm(request.GET or None, flavors=flavor_choices(), regions=regions)
    pools_qs, free = capacity.offers(_filters(form))
    pools = list(pools_qs.select_related("flavor", "provider").order_by("price_per_gpu_hour"))
    today = timezone.now().replace(hour=0, minute=0, second=0, microsecond=0)
    timeline = _timeline(pools, today)
    rows = [{"pool": p, "free": free.get(p.pk, 0), "days": timeline[p.pk]} for p in pools]
    return {
        "filter_form": form,
        "filtered": form.is_bound and any(v for k, v in request.GET.items() if k != "book"),
        "rows": rows,
        "days": [today + timedelta(days=d) for d in range(TIMELINE_DAYS)],
        "bookings": _booking_rows(request.org),  # type: ignore[attr-defined]
        "policy": POLICY_TEXT,
    }


def _default_start() -> datetime:
    soon = timezone.now() + timedelta(days=3)
    return soon.replace(minute=0, second=0, microsecond=0)


@org_required
def offer_list(request: HttpRequest) -> HttpResponse:
    context = _offers_context(request)
    pool_id = request.GET.get("book", "")
    if pool_id:
        context["booking_form"] = BookingForm(initial={"pool": pool_id, "start": _default_start()})
        context["booking_pool"] = next(
            (r["pool"] for r in context["rows"] if r["pool"].public_id == pool_id), None
        )
    return page(request, "portal/offers/list.html", context)


def _as_utc(moment: datetime) -> datetime:
    # The form's datetime-local has no zone; the page says UTC, so it is UTC.
    return moment.replace(tzinfo=UTC) if timezone.is_naive(moment) else moment.astimezone(UTC)


@require_POST
@org_required
def booking_new(request: HttpRequest) -> HttpResponse:
    org = request.org  # type: ignore[attr-defined]
    form = BookingForm(request.POST)
    context = _offers_context(request)
    pool = None
    if form.is_valid():
        pool = capacity.placeable_pools().filter(public_id=form.cleaned_data["pool"]).first()
    context.update({"booking_form": form, "booking_pool": pool})
    if pool is None:
        if form.is_valid():
            form.add_error(None, "This offer is no longer available; pick another one.")
        return page(request, "portal/offers/list.html", context, status=400)
    data = form.cleaned_data
    start = _as_utc(data["start"])
    request_args = {
        "organization": org,
        "flavor": pool.flavor.slug,
        "gpu_count": data["gpu_count"],
        "start": start,
        "end": start + timedelta(hours=data["hours"]),
        "pool_id": pool.public_id,
    }
    try:
        if request.POST.get("action") == "confirm":
            booking = capacity_services.booking_create(
                **request_args,
                created_by=request.user,  # type: ignore[arg-type]
            )
            messages.success(
                request,
                f"Booked {booking.gpu_count} GPUs on {pool.name}: booking {booking.public_id}.",
            )
            return redirect("portal:offers")
        quote = capacity_services.booking_quote(**request_args)
        context["quote"] = quote
        if quote.amount is not None:
            # What confirming charges: billing's VAT on the amount, and the total.
            context["quote_price"] = billing.booking_price(organization=org, amount=quote.amount)
    except PartageError as e:
        form.add_error(None, e.message)
        return page(request, "portal/offers/list.html", context, status=400)
    return page(request, "portal/offers/list.html", context)


@require_POST
@org_required
def booking_cancel(request: HttpRequest, booking_id: str) -> HttpResponse:
    try:
        booking = capacity_services.booking_cancel(
            organization=request.org,  # type: ignore[attr-defined]
            booking_id=booking_id,
            by=request.user,  # type: ignore[arg-type]
        )
    except PartageError as e:
        error_message(request, e)
    else:
        refunded = billing.booking_refunded(booking=booking)
        refund = (
            f"€{refunded.customer_total} (€{refunded.net} + €{refunded.vat} VAT)"
            if refunded is not None
            else f"€{booking.refund_amount}"
        )
        messages.success(
            request,
            f"Booking {booking.public_id} cancelled; refund {refund} to your prepaid balance.",
        )
    return redirect("portal:offers")
