"""Invoice exports: HTML (template), PDF (reportlab) and CSV. Same figures in all three."""

from __future__ import annotations

import csv
import io
from decimal import Decimal
from typing import Any

from django.conf import settings
from django.template.loader import render_to_string

from marketplace.billing.models import Invoice, InvoiceLine

ROUNDING_RULE = (
    "Each line is rounded once, half-even to the cent: amount = GPU-seconds x rate / 3600, or "
    "for inference tokens x rate / 1,000,000 on the running total of the stream (a stream split "
    "over several invoices carries the difference of its cumulative amounts)."
)
CONTENT_TYPES = {
    "html": "text/html; charset=utf-8",
    "pdf": "application/pdf",
    "csv": "text/csv; charset=utf-8",
}


def _lines(invoice: Invoice) -> list[InvoiceLine]:
    return list(invoice.lines.select_related("pool", "booking"))


def line_quantity(line: InvoiceLine) -> str:
    """What a line bills: GPU-seconds, or an inference line's prompt + completion tokens."""
    if line.is_inference:
        return f"{line.prompt_tokens} + {line.completion_tokens} tokens"
    return f"{line.gpu_seconds} GPU-s"


def line_rate(line: InvoiceLine) -> str:
    """Its rate in EUR: per GPU-hour, or per million prompt / completion tokens."""
    if line.is_inference:
        return (
            f"{line.price_per_million_prompt_tokens} / "
            f"{line.price_per_million_completion_tokens} per M tokens"
        )
    return f"{line.price_per_gpu_hour} per GPU-h"


def _rows(invoice: Invoice) -> list[dict[str, Any]]:
    return [
        {"line": line, "quantity": line_quantity(line), "rate": line_rate(line)}
        for line in _lines(invoice)
    ]


def _vat_percent(invoice: Invoice) -> str:
    return f"{(invoice.vat_rate * 100).normalize():f}"


def _seller() -> dict[str, str]:
    return {
        "name": settings.PARTAGE_PLATFORM_LEGAL_NAME,
        "country": settings.PARTAGE_PLATFORM_COUNTRY,
        "vat_id": settings.PARTAGE_PLATFORM_VAT_ID,
    }


def document_name(invoice: Invoice) -> str:
    return "Credit note" if invoice.kind == Invoice.Kind.CREDIT_NOTE else "Invoice"


def invoice_html(invoice: Invoice) -> str:
    return render_to_string(
        "billing/invoice.html",
        {
            "invoice": invoice,
            "document": document_name(invoice),
            "rows": _rows(invoice),
            "vat_percent": _vat_percent(invoice),
            "seller": _seller(),
            "rounding_rule": ROUNDING_RULE,
        },
    )


def invoice_csv(invoice: Invoice) -> str:
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(
        [
            "invoice",
            "line",
            "job",
            "booking",
            "pool",
            "description",
            "gpu_seconds",
            "price_per_gpu_hour",
            "base_model",
            "prompt_tokens",
            "completion_tokens",
            "price_per_million_prompt_tokens",
            "price_per_million_completion_tokens",
            "amount",
            "vat",
            "currency",
        ]
    )
    blank = [""] * 7  # the columns of a line's quantities, empty on the totals rows
    number = invoice.number or invoice.public_id
    for index, line in enumerate(_lines(invoice), start=1):
        writer.writerow(
            [
                number,
                index,
                line.job_id or "",
                line.booking.public_id if line.booking else "",
                line.pool.public_id if line.pool else "",
                _safe(line.description),
                line.gpu_seconds,
                line.price_per_gpu_hour,
                line.base_model,
                line.prompt_tokens,
                line.completion_tokens,
                line.price_per_million_prompt_tokens,
                line.price_per_million_completion_tokens,
                line.amount,
                line.vat,
                invoice.currency,
            ]
        )
    writer.writerow(
        [number, "subtotal", "", "", "", "", *blank, invoice.subtotal, "", invoice.currency]
    )
    writer.writerow(
        [
            number,
            "vat",
            "",
            "",
            "",
            _safe(invoice.vat_note),
            *blank,
            "",
            invoice.vat,
            invoice.currency,
        ]
    )
    writer.writerow([number, "total", "", "", "", "", *blank, invoice.total, "", invoice.currency])
    return out.getvalue()


def _safe(text: str) -> str:
    """No spreadsheet formula injection through descriptions."""
    return "'" + text if text[:1] in {"=", "+", "-", "@"} else text


def invoice_pdf(invoice: Invoice) -> bytes:
    from reportlab.lib import colors
    from reportlab.lib.pagesizes import A4
    from reportlab.lib.styles import getSampleStyleSheet
    from reportlab.platypus import Paragraph, SimpleDocTemplate, Spacer, Table, TableStyle

    styles = getSampleStyleSheet()
    buffer = io.BytesIO()
    document = SimpleDocTemplate(
        buffer, pagesize=A4, title=f"{document_name(invoice)} {invoice.number or invoice.public_id}"
    )
    seller = _seller()
    story: list[Any] = [
        Paragraph(
            f"{document_name(invoice)} {invoice.number or '(draft)'} ({invoice.status})",
            styles["Title"],
        ),
        *(
            [Paragraph(f"Credits invoice {invoice.credits.number}.", styles["Normal"])]
            if invoice.credits is not None
            else []
        ),
        Paragraph(
            f"{_escape(seller['name'])}, {seller['country']}"
            + (f", VAT id {_escape(seller['vat_id'])}" if seller["vat_id"] else ""),
            styles["Normal"],
        ),
        Paragraph(
            f"Billed to: {_escape(invoice.customer_name or invoice.organization.name)} "
            f"{invoice.customer_country} {('VAT id ' + _escape(invoice.customer_vat_id)) if invoice.customer_vat_id else ''}",
            styles["Normal"],
        ),
        Paragraph(
            f"Period: {invoice.period_start:%Y-%m-%d} to {invoice.period_end:%Y-%m-%d} (end excluded, UTC)",
            styles["Normal"],
        ),
        Spacer(1, 12),
    ]
    rows: list[list[Any]] = [["Description", "Quantity", "Rate (EUR)", "Amount (EUR)"]]
    for line in _lines(invoice):
        rows.append(
            [
                Paragraph(_escape(line.description), styles["BodyText"]),
                Paragraph(_escape(line_quantity(line)), styles["BodyText"]),
                Paragraph(_escape(line_rate(line)), styles["BodyText"]),
                str(line.amount),
            ]
        )
    rows += [
        ["Subtotal", "", "", str(invoice.subtotal)],
        [f"VAT ({_vat_percent(invoice)} %)", "", "", str(invoice.vat)],
        ["Total", "", "", f"{invoice.total} {invoice.currency}"],
    ]
    table = Table(rows, colWidths=[230, 90, 100, 80], repeatRows=1)
    table.setStyle(
        TableStyle(
            [
                ("ALIGN", (1, 0), (-1, -1), "RIGHT"),
                ("LINEBELOW", (0, 0), (-1, 0), 0.5, colors.black),
                ("LINEABOVE", (0, -3), (-1, -3), 0.5, colors.black),
                ("FONTNAME", (0, -1), (-1, -1), "Helvetica-Bold"),
            ]
        )
    )
    story.append(table)
    if invoice.vat_note:
        story += [Spacer(1, 12), Paragraph(_escape(invoice.vat_note), styles["Italic"])]
    story += [Spacer(1, 6), Paragraph(ROUNDING_RULE, styles["Italic"])]
    document.build(story)
    return buffer.getvalue()


def _escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def invoice_export(invoice: Invoice, export_format: str) -> tuple[bytes, str]:
    """(content, content type) of the invoice in `export_format`: html, pdf or csv."""
    if export_format == "pdf":
        return invoice_pdf(invoice), CONTENT_TYPES["pdf"]
    if export_format == "csv":
        return invoice_csv(invoice).encode(), CONTENT_TYPES["csv"]
    return invoice_html(invoice).encode(), CONTENT_TYPES["html"]


def decimal_str(value: Decimal) -> str:
    return f"{value:.2f}"
