"""/v1 billing: balance, usage, invoices (+ downloads), provider statements, cost estimates,
and the staff top-up endpoint. Thin: each view calls one selector or one service."""

from __future__ import annotations

from typing import Any

from django.db.models import Q, QuerySet
from django.http import HttpResponse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework import serializers
from rest_framework.authentication import SessionAuthentication
from rest_framework.permissions import BasePermission
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from marketplace.accounts.models import Organization
from marketplace.api import serializers_billing as docs
from marketplace.api.authentication import ApiKeyAuthentication
from marketplace.api.pagination import LIMIT_PARAMETER, page
from marketplace.api.representations import unix
from marketplace.api.views import LIST_PARAMETERS, AlwaysJson
from marketplace.billing import selectors, services
from marketplace.billing.exports import invoice_export
from marketplace.billing.models import Invoice, InvoiceLine, Payout, ProviderStatement, UsageRecord
from marketplace.errors import Forbidden, InvalidInput, NotFound


def org_of(request: Request) -> Organization:
    return request.user.organization  # type: ignore[union-attr]


def money(value: Any) -> str:
    return f"{value:.2f}"


# ---------------------------------------------------------------- representations


def usage_object(record: UsageRecord) -> dict[str, Any]:
    return {
        "id": f"usage-{record.pk}",
        "object": "billing.usage_record",
        "job_id": record.job_id,
        "attempt": record.attempt.number,
        "pool": record.pool.public_id if record.pool else None,
        "gpu_count": record.gpu_count,
        "gpu_seconds": str(record.gpu_seconds),
        "price_per_gpu_hour": str(record.price_per_gpu_hour),
        "currency": "EUR",
        "started_at": unix(record.started_at),
        "ended_at": unix(record.ended_at),
        "created_at": unix(record.recorded_at),
        "invoiced": bool(getattr(record, "invoiced", False)),
    }


def line_object(line: InvoiceLine) -> dict[str, Any]:
    return {
        "object": "billing.invoice_line",
        "job_id": line.job_id,
        "booking_id": line.booking.public_id if line.booking else None,
        "pool": line.pool.public_id if line.pool else None,
        "description": line.description,
        "gpu_seconds": str(line.gpu_seconds),
        "price_per_gpu_hour": str(line.price_per_gpu_hour),
        "amount": money(line.amount),
        "vat": money(line.vat),
        "correction": line.is_correction,
    }


def invoice_object(invoice: Invoice, *, with_lines: bool = False) -> dict[str, Any]:
    body: dict[str, Any] = {
        "id": invoice.public_id,
        "object": "billing.invoice",
        "kind": invoice.kind,
        "credits": invoice.credits.public_id if invoice.credits else None,
        "credits_number": invoice.credits.number if invoice.credits else None,
        "number": invoice.number,
        "status": invoice.status,
        "period_start": unix(invoice.period_start),
        "period_end": unix(invoice.period_end),
        "currency": invoice.currency,
        "subtotal": money(invoice.subtotal),
        "vat": money(invoice.vat),
        "total": money(invoice.total),
        "vat_rate": str(invoice.vat_rate),
        "reverse_charge": invoice.reverse_charge,
        "vat_note": invoice.vat_note,
        "created_at": unix(invoice.created_at),
        "finalized_at": unix(invoice.finalized_at),
        "downloads": {
            fmt: f"/v1/billing/invoices/{invoice.public_id}/download/{fmt}"
            for fmt in ("pdf", "html", "csv")
        },
    }
    if with_lines:
        body["lines"] = [line_object(line) for line in invoice.lines.all()]
    return body


def statement_object(statement: ProviderStatement) -> dict[str, Any]:
    return {
        "id": statement.public_id,
        "object": "billing.provider_statement",
        "status": statement.status,
        "period_start": unix(statement.period_start),
        "period_end": unix(statement.period_end),
        "currency": "EUR",
        "gpu_seconds": str(statement.gpu_seconds),
        "gross": money(statement.gross),
        "platform_fee_percent": str(statement.fee_percent),
        "platform_fee": money(statement.fee),
        "payable": money(statement.payable),
        "holdback": money(statement.holdback),
        "holdback_released": money(statement.released),
        "due": money(statement.due),
        "payout": getattr(getattr(statement, "payout", None), "public_id", None),
        "created_at": unix(statement.created_at),
        "finalized_at": unix(statement.finalized_at),
        "paid_at": unix(statement.paid_at),
    }


def payout_object(payout: Payout) -> dict[str, Any]:
    batch = payout.batch
    return {
        "id": payout.public_id,
        "object": "billing.payout",
        "statement": payout.statement.public_id,
        "status": batch.status,
        "amount": money(payout.amount),
        "currency": "EUR",
        "creditor_name": payout.creditor_name,
        "iban_last4": payout.iban[-4:],
        "created_at": unix(batch.created_at),
        "sent_at": unix(batch.sent_at),
        "paid_at": unix(batch.paid_at),
    }


def _after_public_id(queryset: QuerySet[Any], after: str) -> QuerySet[Any] | None:
    anchor = queryset.filter(public_id=after).values("created_at", "pk").first()
    if anchor is None:
        return None
    return queryset.filter(
        Q(created_at__lt=anchor["created_at"])
        | Q(created_at=anchor["created_at"], pk__lt=anchor["pk"])
    )


def _after_payout(queryset: QuerySet[Any], after: str) -> QuerySet[Any] | None:
    anchor = queryset.filter(public_id=after).values("pk").first()
    return None if anchor is None else queryset.filter(pk__lt=anchor["pk"])


def _after_usage(queryset: QuerySet[Any], after: str) -> QuerySet[Any] | None:
    pk = after.removeprefix("usage-")
    # isascii: str.isdigit() also accepts digits such as "²" that int() refuses.
    is_number = pk.isascii() and pk.isdigit()
    anchor = queryset.filter(pk=pk).values("recorded_at", "pk").first() if is_number else None
    if anchor is None:
        return None
    return queryset.filter(
        Q(recorded_at__lt=anchor["recorded_at"])
        | Q(recorded_at=anchor["recorded_at"], pk__lt=anchor["pk"])
    )


# ---------------------------------------------------------------- views

EXPORT_FORMATS = ("pdf", "html", "csv")
DOWNLOAD_DESCRIPTION = (
    "The invoice as an attachment, in the format export_format names: a PDF, an HTML page or "
    "CSV lines and totals (both UTF-8). The same figures in each."
)

USAGE_PARAMETERS = [
    OpenApiParameter(
        "period",
        str,
        pattern=r"^\d{4}-\d{2}$",
        description="Only usage recorded in this calendar month (UTC), as YYYY-MM: 2026-11.",
    ),
    OpenApiParameter("job", str, description="Only this fine-tuning job's usage (ftjob-…)."),
    OpenApiParameter("pool", str, description="Only usage on this GPU pool (its id)."),
    OpenApiParameter(
        "after", str, description="The id (usage-<n>) of the last record of the previous page."
    ),
    LIMIT_PARAMETER,
]


class BalanceView(APIView):
    @extend_schema(operation_id="billing_balance_retrieve", responses=docs.BillingBalanceObject)
    def get(self, request: Request) -> Response:
        org = org_of(request)
        balance = selectors.balance_for_org(org)
        return Response(
            {
                "object": "billing.balance",
                "organization_id": org.public_id,
                "currency": "EUR",
                **{name: money(value) for name, value in balance.items()},
            }
        )


class UsageListView(APIView):
    @extend_schema(
        operation_id="billing_usage_list",
        parameters=USAGE_PARAMETERS,
        responses=docs.UsageRecordList,
    )
    def get(self, request: Request) -> Response:
        params = request.query_params
        period = services.period_parse(params["period"]) if params.get("period") else None
        records = selectors.usage_for_org(
            org_of(request),
            period=period,
            job_id=params.get("job"),
            pool_public_id=params.get("pool"),
        )
        return Response(
            page(
                request, records, usage_object, id_of=lambda r: f"usage-{r.pk}", cursor=_after_usage
            )
        )


class InvoiceListView(APIView):
    @extend_schema(
        operation_id="billing_invoices_list",
        parameters=[
            OpenApiParameter(
                "status",
                str,
                enum=Invoice.Status.values,
                description="Only invoices in this status.",
            ),
            *LIST_PARAMETERS,
        ],
        responses=docs.InvoiceList,
    )
    def get(self, request: Request) -> Response:
        invoices = selectors.invoices_for_org(org_of(request))
        status = request.query_params.get("status")
        if status:
            if status not in Invoice.Status.values:
                raise InvalidInput(
                    f"status must be one of {', '.join(Invoice.Status.values)}.", param="status"
                )
            invoices = invoices.filter(status=status)
        return Response(
            page(
                request,
                invoices,
                invoice_object,
                id_of=lambda i: i.public_id,
                cursor=_after_public_id,
            )
        )


class InvoiceDetailView(APIView):
    @extend_schema(operation_id="billing_invoices_retrieve", responses=docs.InvoiceDetailObject)
    def get(self, request: Request, invoice_id: str) -> Response:
        invoice = selectors.invoice_for_org(org_of(request), invoice_id)
        return Response(invoice_object(invoice, with_lines=True))


class InvoiceDownloadView(APIView):
    # The body is a file whatever the Accept header asks (a PDF download may well send
    # `Accept: application/pdf`); errors are JSON.
    content_negotiation_class = AlwaysJson

    @extend_schema(
        operation_id="billing_invoices_download",
        parameters=[
            OpenApiParameter(
                "export_format",
                str,
                OpenApiParameter.PATH,
                enum=list(EXPORT_FORMATS),
                description="pdf, html or csv: the same figures in each.",
            )
        ],
        responses={
            (200, "application/pdf"): OpenApiResponse(
                OpenApiTypes.BINARY, description=DOWNLOAD_DESCRIPTION
            ),
            (200, "text/html"): OpenApiResponse(OpenApiTypes.STR, description=DOWNLOAD_DESCRIPTION),
            (200, "text/csv"): OpenApiResponse(OpenApiTypes.STR, description=DOWNLOAD_DESCRIPTION),
        },
    )
    def get(self, request: Request, invoice_id: str, export_format: str) -> HttpResponse:
        if export_format not in EXPORT_FORMATS:
            raise InvalidInput(
                f"Unknown export {export_format!r}: download as pdf, html or csv.", param="format"
            )
        invoice = selectors.invoice_for_org(org_of(request), invoice_id)
        content, content_type = invoice_export(invoice, export_format)
        response = HttpResponse(content, content_type=content_type)
        filename = f"{invoice.number or invoice.public_id}.{export_format}"
        response["Content-Disposition"] = f'attachment; filename="{filename}"'
        return response


class StatementListView(APIView):
    @extend_schema(
        operation_id="billing_statements_list",
        parameters=LIST_PARAMETERS,
        responses=docs.ProviderStatementList,
    )
    def get(self, request: Request) -> Response:
        statements = selectors.statements_for_provider(org_of(request))
        return Response(
            page(
                request,
                statements,
                statement_object,
                id_of=lambda s: s.public_id,
                cursor=_after_public_id,
            )
        )


class PayoutListView(APIView):
    @extend_schema(
        operation_id="billing_payouts_list", parameters=LIST_PARAMETERS, responses=docs.PayoutList
    )
    def get(self, request: Request) -> Response:
        payouts = selectors.payouts_for_provider(org_of(request))
        return Response(
            page(request, payouts, payout_object, id_of=lambda p: p.public_id, cursor=_after_payout)
        )


class StatementDetailView(APIView):
    @extend_schema(
        operation_id="billing_statements_retrieve", responses=docs.ProviderStatementObject
    )
    def get(self, request: Request, statement_id: str) -> Response:
        return Response(
            statement_object(selectors.statement_for_provider(org_of(request), statement_id))
        )


class CostEstimateSerializer(serializers.Serializer):
    gpu_flavor = serializers.CharField(
        required=False,
        allow_blank=True,
        default="",
        help_text="A GPU flavor id (GET /v1/gpu_flavors); empty: any flavor.",
    )
    gpu_count = serializers.IntegerField(min_value=1, max_value=64, default=1)
    estimated_duration_seconds = serializers.IntegerField(min_value=1, max_value=90 * 24 * 3600)


class CostEstimateView(APIView):
    @extend_schema(
        operation_id="billing_cost_estimate",
        request=CostEstimateSerializer,
        responses=docs.CostEstimateObject,
    )
    def post(self, request: Request) -> Response:
        body = CostEstimateSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        estimate = selectors.cost_estimate(
            org_of(request),
            gpu_flavor=body.validated_data["gpu_flavor"],
            gpu_count=body.validated_data["gpu_count"],
            duration_seconds=body.validated_data["estimated_duration_seconds"],
        )
        return Response(estimate.as_dict())


class IsStaffUser(BasePermission):
    def has_permission(self, request: Request, view: Any) -> bool:
        if not getattr(request.user, "is_staff", False):
            raise Forbidden("Only Partage staff can record top-ups; sign in to the staff console.")
        return True


class TopupSerializer(serializers.Serializer):
    organization = serializers.CharField(help_text="The organization's id (org-…) or slug.")
    amount = serializers.CharField(
        help_text='EUR received, positive, at most two decimals: "100.00".'
    )
    reference = serializers.CharField(
        max_length=100, help_text="The bank transfer's reference; the same one is recorded once."
    )


class TopupView(APIView):
    """Staff only: record a prepaid top-up (a bank transfer seen arriving)."""

    authentication_classes = [SessionAuthentication, ApiKeyAuthentication]
    permission_classes = [IsStaffUser]

    @extend_schema(
        operation_id="billing_topups_create",
        request=TopupSerializer,
        responses={201: docs.TopupObject},
    )
    def post(self, request: Request) -> Response:
        body = TopupSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        ref = body.validated_data["organization"]
        org = Organization.objects.filter(Q(public_id=ref) | Q(slug=ref)).first()
        if org is None:
            raise NotFound(f"No organization {ref!r}.", param="organization")
        entry = services.topup_record(
            organization=org,
            amount=services.money_parse(body.validated_data["amount"], param="amount"),
            reference=body.validated_data["reference"],
            created_by=request.user.get_username(),
        )
        balance = selectors.balance_for_org(org)
        return Response(
            {
                "object": "billing.topup",
                "id": entry.key,
                "organization_id": org.public_id,
                "balance": {name: money(value) for name, value in balance.items()},
            },
            status=201,
        )
