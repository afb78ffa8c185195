"""The proforma of a bank-transfer top-up (PDF, reportlab, as invoices are rendered): who to pay,
how much, and the unique payment reference to quote. It is not an invoice: prepaid credit is
invoiced, with VAT, when it is spent."""

from __future__ import annotations

import io
from typing import Any

from django.conf import settings

from marketplace.billing.exports import _escape, _seller
from marketplace.billing.models import Topup


def proforma_pdf(topup: Topup) -> bytes:
    from reportlab.lib.pagesizes import A4
    from reportlab.lib.styles import getSampleStyleSheet
    from reportlab.platypus import Paragraph, SimpleDocTemplate, Spacer, Table, TableStyle

    styles = getSampleStyleSheet()
    buffer = io.BytesIO()
    document = SimpleDocTemplate(buffer, pagesize=A4, title=f"Proforma {topup.reference}")
    seller = _seller()
    org = topup.organization
    rows: list[list[Any]] = [
        ["Amount to transfer", f"{topup.amount:.2f} {topup.currency}"],
        ["Payment reference (quote it exactly)", topup.reference],
        ["Beneficiary", settings.PARTAGE_BANK_ACCOUNT_NAME],
        ["IBAN", settings.PARTAGE_BANK_IBAN or "ask Partage staff"],
        ["BIC", settings.PARTAGE_BANK_BIC or "ask Partage staff"],
        ["Valid until", f"{topup.expires_at:%Y-%m-%d} (UTC)" if topup.expires_at else "-"],
    ]
    table = Table(rows, colWidths=[210, 290])
    table.setStyle(TableStyle([("FONTNAME", (1, 0), (1, 1), "Helvetica-Bold")]))
    story: list[Any] = [
        Paragraph(f"Proforma for prepaid credit {_escape(topup.public_id)}", styles["Title"]),
        Paragraph(
            f"{_escape(seller['name'])}, {seller['country']}"
            + (f", VAT id {_escape(seller['vat_id'])}" if seller["vat_id"] else ""),
            styles["Normal"],
        ),
        Paragraph(
            f"For: {_escape(org.name)} {org.country}"
            + (f" VAT id {_escape(org.vat_id)}" if org.vat_id else ""),
            styles["Normal"],
        ),
        Paragraph(f"Issued: {topup.created_at:%Y-%m-%d} (UTC)", styles["Normal"]),
        Spacer(1, 12),
        table,
        Spacer(1, 12),
        Paragraph(
            "Your prepaid balance is credited once Partage staff see the transfer arrive with "
            "this reference. This proforma is not an invoice: the credit is invoiced, with VAT, "
            "as it is spent.",
            styles["Italic"],
        ),
    ]
    document.build(story)
    return buffer.getvalue()
