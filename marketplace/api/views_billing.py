"""/v1 billing: balance, usage, invoices (+ downloads), provider statements, cost estimates,
top-ups (card via Stripe Checkout, bank transfer) and settings; Stripe's webhook endpoint. Thin: each view calls one selector or one service."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.db.models import Q, QuerySet
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_POST
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from marketplace.accounts.models import Organization
from marketplace.api import serializers_billing as docs
from marketplace.api.errors import error_body
from marketplace.api.idempotency import idempotent
from marketplace.api.pagination import LIMIT_PARAMETER, page
from marketplace.api.representations import unix
from marketplace.api.views import LIST_PARAMETERS, AlwaysJson
from marketplace.billing import selectors, services
from marketplace.billing.exports import invoice_export
from marketplace.billing.models import (
    Invoice,
    InvoiceLine,
    Payout,
    ProviderStatement,
    Topup,
    UsageRecord,
)
from marketplace.billing.money import amount_parse
from marketplace.billing.proforma import proforma_pdf
from marketplace.errors import InvalidInput, NotFound


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
        "base_model": line.base_model or None,
        "prompt_tokens": line.prompt_tokens,
        "completion_tokens": line.completion_tokens,
        "price_per_million_prompt_tokens": str(line.price_per_million_prompt_tokens),
        "price_per_million_completion_tokens": str(line.price_per_million_completion_tokens),
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
        threshold = selectors.low_balance_threshold_of(org)
        return Response(
            {
                "object": "billing.balance",
                "organization_id": org.public_id,
                "currency": "EUR",
                **{name: money(value) for name, value in balance.items()},
                "low_balance_threshold": money(threshold) if threshold is not None else None,
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
        coverage = selectors.balance_coverage(
            org_of(request), amount=estimate.amount + estimate.vat
        )
        return Response({**estimate.as_dict(), "balance": coverage.as_dict()})


def topup_object(topup: Topup) -> dict[str, Any]:
    bank = None
    if topup.method == Topup.Method.BANK_TRANSFER:
        bank = {
            "reference": topup.reference,
            "beneficiary": settings.PARTAGE_BANK_ACCOUNT_NAME,
            "iban": settings.PARTAGE_BANK_IBAN,
            "bic": settings.PARTAGE_BANK_BIC,
            "proforma": f"/v1/billing/topups/{topup.public_id}/proforma",
        }
    return {
        "object": "billing.topup",
        "id": topup.public_id,
        "method": topup.method,
        "status": topup.status,
        "amount": money(topup.amount),
        "currency": topup.currency,
        "checkout_url": (topup.checkout_url or None) if topup.status == "pending" else None,
        "bank_transfer": bank,
        "failure_reason": topup.failure_reason,
        "created_at": unix(topup.created_at),
        "expires_at": unix(topup.expires_at),
        "credited_at": unix(topup.credited_at),
    }


class TopupSerializer(serializers.Serializer):
    amount = serializers.JSONField(
        help_text='EUR to add, as digits with at most two decimals: "100.00". Within the '
        "bounds GET /v1/billing/settings gives."
    )
    method = serializers.ChoiceField(
        choices=Topup.Method.values,
        default=Topup.Method.CARD,
        help_text="card (Stripe Checkout: pay at checkout_url) or bank_transfer (a proforma "
        "with a payment reference; credited when the transfer arrives).",
    )
    return_url = serializers.URLField(
        required=False,
        allow_blank=True,
        default="",
        help_text="Card: where Stripe Checkout sends the customer back (default: the portal).",
    )


class TopupListView(APIView):
    """The organization's top-ups (GET), or start one (POST): nothing is credited until the
    payment is confirmed (card: Stripe's signed webhook; bank transfer: staff)."""

    @extend_schema(
        operation_id="billing_topups_list", parameters=LIST_PARAMETERS, responses=docs.TopupList
    )
    def get(self, request: Request) -> Response:
        topups = selectors.topups_for_org(org_of(request))
        return Response(
            page(
                request, topups, topup_object, id_of=lambda t: t.public_id, cursor=_after_public_id
            )
        )

    @extend_schema(
        operation_id="billing_topups_create",
        request=TopupSerializer,
        responses={201: docs.TopupObject},
    )
    @idempotent
    def post(self, request: Request) -> Response:
        body = TopupSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        key = request.user.key  # type: ignore[union-attr]
        owner = key.created_by
        topup = services.topup_start(
            organization=org_of(request),
            amount=body.validated_data["amount"],
            method=body.validated_data["method"],
            return_url=body.validated_data["return_url"]
            or f"{settings.PARTAGE_PUBLIC_URL}/billing/credit/",
            created_by=f"api key {key.prefix}",
            email=owner.email if owner is not None else "",
        )
        return Response(topup_object(topup), status=201)


class TopupDetailView(APIView):
    @extend_schema(operation_id="billing_topups_retrieve", responses=docs.TopupObject)
    def get(self, request: Request, topup_id: str) -> Response:
        return Response(topup_object(selectors.topup_for_org(org_of(request), topup_id)))


class TopupProformaView(APIView):
    content_negotiation_class = AlwaysJson

    @extend_schema(
        operation_id="billing_topups_proforma",
        responses={
            (200, "application/pdf"): OpenApiResponse(
                OpenApiTypes.BINARY,
                description="The bank-transfer proforma: amount, payment reference, bank details.",
            )
        },
    )
    def get(self, request: Request, topup_id: str) -> HttpResponse:
        topup = selectors.topup_for_org(org_of(request), topup_id)
        if topup.method != Topup.Method.BANK_TRANSFER:
            raise NotFound(
                f"Top-up {topup_id} is paid by card; only bank transfers have a proforma.",
                param="topup_id",
            )
        response = HttpResponse(proforma_pdf(topup), content_type="application/pdf")
        response["Content-Disposition"] = f'attachment; filename="proforma-{topup.reference}.pdf"'
        return response


class BillingSettingsSerializer(serializers.Serializer):
    low_balance_threshold = serializers.JSONField(
        allow_null=True,
        help_text='Alert (billing.balance_low) when the available balance falls below this: "50.00"; '
        "null turns the alert off.",
    )


def settings_object(org: Organization) -> dict[str, Any]:
    threshold = selectors.low_balance_threshold_of(org)
    return {
        "object": "billing.settings",
        "low_balance_threshold": money(threshold) if threshold is not None else None,
        "topup_methods": services.methods_available(),
        "topup_min": money(settings.PARTAGE_TOPUP_MIN),
        "topup_max": money(settings.PARTAGE_TOPUP_MAX),
    }


class BillingSettingsView(APIView):
    @extend_schema(operation_id="billing_settings_retrieve", responses=docs.BillingSettingsObject)
    def get(self, request: Request) -> Response:
        return Response(settings_object(org_of(request)))

    @extend_schema(
        operation_id="billing_settings_update",
        request=BillingSettingsSerializer,
        responses=docs.BillingSettingsObject,
    )
    def patch(self, request: Request) -> Response:
        body = BillingSettingsSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        raw = body.validated_data["low_balance_threshold"]
        org = org_of(request)
        services.low_balance_threshold_set(
            organization=org,
            threshold=None if raw is None else amount_parse(raw, param="low_balance_threshold"),
        )
        return Response(settings_object(org))


@csrf_exempt
@require_POST
def stripe_webhook(request: HttpRequest) -> JsonResponse:
    """Stripe's webhook endpoint (not under /v1: Stripe signs, no API key). 400 when the
    signature does not verify, and nothing changes; 200 otherwise, also for a duplicate."""
    try:
        outcome = services.stripe_webhook_handle(
            payload=request.body, signature=request.headers.get("Stripe-Signature", "")
        )
    except services.WebhookRefused as e:
        return JsonResponse(
            error_body(e.message, type_=e.error_type, code=e.code, param=e.param), status=400
        )
    return JsonResponse({"received": True, "outcome": outcome})
