"""Usage: GPU-hours and spend per day, quota gauges, invoices."""

from __future__ import annotations

from collections import defaultdict
from datetime import timedelta
from decimal import Decimal

from django.http import HttpRequest, HttpResponse
from django.utils import timezone

from marketplace.accounts.models import Organization
from marketplace.portal import charts, staff_data
from marketplace.portal.context import org_required, page

DAYS = 30


def _daily(org: Organization) -> tuple[list[tuple[str, Decimal]], list[tuple[str, Decimal]]]:
    """GPU-hours metered and money captured (net + VAT) per day, last 30 days, from billing."""
    from marketplace.billing.models import Charge
    from marketplace.billing.selectors import usage_for_org

    now = timezone.now()
    today = now.date()
    first = today - timedelta(days=DAYS - 1)
    since = now.replace(hour=0, minute=0, second=0, microsecond=0) - timedelta(days=DAYS - 1)
    hours: dict[object, Decimal] = defaultdict(Decimal)
    spend: dict[object, Decimal] = defaultdict(Decimal)
    records = usage_for_org(org, period=(since, now + timedelta(seconds=1)))
    for recorded, seconds in records.values_list("recorded_at", "gpu_seconds"):
        hours[recorded.date()] += seconds / Decimal(3600)
    # Billing has no selector for captured charges yet: a read of its append-only rows.
    charges = Charge.objects.filter(organization=org, created_at__gte=since)
    for created, net, vat in charges.values_list("created_at", "net", "vat"):
        spend[created.date()] += net + vat
    days = [first + timedelta(days=d) for d in range(DAYS)]
    label = "%b %d"
    return (
        [(d.strftime(label), hours[d].quantize(Decimal("0.01"))) for d in days],
        [(d.strftime(label), spend[d].quantize(Decimal("0.01"))) for d in days],
    )


@org_required
def usage(request: HttpRequest) -> HttpResponse:
    from marketplace.billing.models import Invoice
    from marketplace.billing.selectors import balance_for_org, invoices_for_org

    org = request.org  # type: ignore[attr-defined]
    hours, spend = _daily(org)
    invoices = invoices_for_org(org).exclude(status=Invoice.Status.VOID)
    return page(
        request,
        "portal/usage/usage.html",
        {
            "hours_chart": charts.bar_chart(hours),
            "spend_chart": charts.bar_chart(spend),
            "hours_total": sum((v for _, v in hours), Decimal(0)),
            "spend_total": sum((v for _, v in spend), Decimal(0)),
            "quota_lines": staff_data.quota_lines_for_org(org),
            "invoices": invoices[:24],
            "balance": balance_for_org(org),
            "days": DAYS,
        },
    )


EXPORT_FORMATS = {"pdf", "csv"}


@org_required
def invoice_download(request: HttpRequest, invoice_id: str) -> HttpResponse:
    """A finalized invoice as billing renders it: PDF (default) or CSV."""
    from django.http import Http404

    from marketplace.billing.exports import invoice_export
    from marketplace.billing.models import Invoice
    from marketplace.billing.selectors import invoice_for_org
    from marketplace.errors import NotFound

    try:
        invoice = invoice_for_org(request.org, invoice_id)  # type: ignore[attr-defined]
    except NotFound:
        raise Http404("No such invoice in your organization.") from None
    if invoice.status != Invoice.Status.FINALIZED:
        raise Http404("Only finalized invoices can be downloaded.")
    export_format = request.GET.get("format", "pdf")
    if export_format not in EXPORT_FORMATS:
        export_format = "pdf"
    content, content_type = invoice_export(invoice, export_format)
    response = HttpResponse(content, content_type=content_type)
    name = invoice.number or invoice.public_id
    response["Content-Disposition"] = f'attachment; filename="invoice-{name}.{export_format}"'
    return response
