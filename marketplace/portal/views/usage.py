"""Usage: GPU-hours and spend per day, quota gauges, invoices."""

from __future__ import annotations

from collections import defaultdict
from datetime import timedelta
from decimal import Decimal

from django.http import HttpRequest, HttpResponse
from django.utils import timezone

from marketplace.portal import charts, staff_data
from marketplace.portal.context import org_required, page

DAYS = 30


def _daily(org_id: int) -> tuple[list[tuple[str, Decimal]], list[tuple[str, Decimal]]]:
    """GPU-hours metered and money captured (net + VAT) per day, last 30 days, from billing."""
    from marketplace.billing.models import Charge, UsageRecord

    today = timezone.now().date()
    first = today - timedelta(days=DAYS - 1)
    hours: dict[object, Decimal] = defaultdict(Decimal)
    spend: dict[object, Decimal] = defaultdict(Decimal)
    records = UsageRecord.objects.filter(organization_id=org_id, ended_at__date__gte=first)
    for ended, seconds in records.values_list("ended_at", "gpu_seconds"):
        hours[ended.date()] += seconds / Decimal(3600)
    charges = Charge.objects.filter(organization_id=org_id, created_at__date__gte=first)
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

    org = request.org  # type: ignore[attr-defined]
    hours, spend = _daily(org.pk)
    invoices = Invoice.objects.filter(organization=org).exclude(status=Invoice.Status.VOID)
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
            "days": DAYS,
        },
    )


@org_required
def invoice_download(request: HttpRequest, invoice_id: str) -> HttpResponse:
    """A finalized invoice as CSV: its lines, then subtotal, VAT and total, exactly as stored."""
    import csv

    from django.http import Http404

    from marketplace.billing.models import Invoice

    invoice = (
        Invoice.objects.filter(
            organization=request.org,  # type: ignore[attr-defined]
            public_id=invoice_id,
            status=Invoice.Status.FINALIZED,
        )
        .prefetch_related("lines")
        .first()
    )
    if invoice is None:
        raise Http404("No such invoice in your organization.")
    name = invoice.number or invoice.public_id
    response = HttpResponse(content_type="text/csv; charset=utf-8")
    response["Content-Disposition"] = f'attachment; filename="invoice-{name}.csv"'
    writer = csv.writer(response)
    writer.writerow(["invoice", name, "customer", invoice.customer_name, invoice.customer_vat_id])
    writer.writerow(["period", invoice.period_start.date(), invoice.period_end.date()])
    writer.writerow(["description", "gpu_seconds", "eur_per_gpu_hour", "amount", "vat"])
    for line in invoice.lines.all():
        writer.writerow(
            [
                line.description,
                line.billable_gpu_seconds,
                line.price_per_gpu_hour,
                line.amount,
                line.vat,
            ]
        )
    writer.writerow(["subtotal", "", "", invoice.subtotal, ""])
    writer.writerow(["vat", invoice.vat_rate, invoice.vat_note, "", invoice.vat])
    writer.writerow(["total", "", "", invoice.total, invoice.currency])
    return response
