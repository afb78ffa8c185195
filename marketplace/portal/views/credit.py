"""Add credit: top up the prepaid balance by card (Stripe Checkout) or bank transfer, see the
top-ups and their status, set the low-balance alert. Billing's services do the work."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.contrib import messages
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect
from django.urls import reverse
from django.views.decorators.http import require_POST

from marketplace.billing import selectors, services
from marketplace.billing.models import Topup
from marketplace.billing.money import amount_parse
from marketplace.billing.proforma import proforma_pdf
from marketplace.errors import NotFound, PartageError
from marketplace.portal.context import org_admin_required, org_required, page
from marketplace.portal.forms import CreditForm, ThresholdForm
from marketplace.portal.middleware import portal_policy_posting_to

METHOD_LABELS = dict(Topup.Method.choices)


def _credit_form(data: Any = None) -> CreditForm:
    methods = [(m, METHOD_LABELS[m]) for m in services.methods_available()]
    return CreditForm(data, methods=methods)


def _context(request: HttpRequest, **extra: Any) -> dict[str, Any]:
    org = request.org  # type: ignore[attr-defined]
    threshold = selectors.low_balance_threshold_of(org)
    context = {
        "balance": selectors.balance_for_org(org),
        "topups": selectors.topups_for_org(org)[:50],
        "form": _credit_form(initial_amount(request)),
        "threshold_form": ThresholdForm(initial={"low_balance_threshold": threshold or ""}),
        "threshold": threshold,
        "returned": _returned(request),
    }
    context.update(extra)
    return context


def initial_amount(request: HttpRequest) -> Any:
    """A link from a quote ("Add credit", ?amount=12.34) pre-fills the shortfall."""
    amount = request.GET.get("amount")
    return {"amount": amount, "method": services.methods_available()[0]} if amount else None


def _returned(request: HttpRequest) -> Topup | None:
    """The top-up Stripe Checkout just sent the customer back from (?topup=…&result=…)."""
    topup_id = request.GET.get("topup")
    if not topup_id:
        return None
    try:
        return selectors.topup_for_org(request.org, topup_id)  # type: ignore[attr-defined]
    except NotFound:
        return None


def _credit_page(request: HttpRequest, context: dict[str, Any], status: int = 200) -> HttpResponse:
    response = page(request, "portal/usage/credit.html", context, status=status)
    if Topup.Method.CARD in services.methods_available():
        response["Content-Security-Policy"] = portal_policy_posting_to(
            settings.PARTAGE_STRIPE_CHECKOUT_ORIGIN
        )
    return response


@org_required
def credit(request: HttpRequest) -> HttpResponse:
    if request.method != "POST":
        return _credit_page(request, _context(request))
    form = _credit_form(request.POST)
    if form.is_valid():
        try:
            topup = services.topup_start(
                organization=request.org,  # type: ignore[attr-defined]
                amount=form.cleaned_data["amount"],
                method=form.cleaned_data["method"],
                return_url=request.build_absolute_uri(reverse("portal:credit")),
                created_by=request.user.get_username(),
                email=getattr(request.user, "email", "") or "",
            )
        except PartageError as e:
            form.add_error(e.param if e.param in form.fields else None, e.message)
        else:
            if topup.checkout_url:
                return redirect(topup.checkout_url)
            messages.success(
                request,
                f"Transfer €{topup.amount} with the reference {topup.reference}; the proforma "
                "has the bank details. Your balance is credited when the transfer arrives.",
            )
            return redirect(f"{reverse('portal:credit')}?topup={topup.public_id}")
    return _credit_page(request, _context(request, form=form), status=400)


@require_POST
@org_admin_required
def threshold(request: HttpRequest) -> HttpResponse:
    org = request.org  # type: ignore[attr-defined]
    form = ThresholdForm(request.POST)
    raw = request.POST.get("low_balance_threshold", "").strip()
    try:
        value = amount_parse(raw, param="low_balance_threshold") if raw else None
        services.low_balance_threshold_set(organization=org, threshold=value)
    except PartageError as e:
        form.add_error("low_balance_threshold", e.message)
        return _credit_page(request, _context(request, threshold_form=form), status=400)
    messages.success(
        request, f"Low-balance alert below €{value}." if value else "Low-balance alert turned off."
    )
    return redirect("portal:credit")


@org_required
def proforma(request: HttpRequest, topup_id: str) -> HttpResponse:
    try:
        topup = selectors.topup_for_org(request.org, topup_id)  # type: ignore[attr-defined]
    except NotFound:
        raise Http404("No such top-up in your organization.") from None
    if topup.method != Topup.Method.BANK_TRANSFER:
        raise Http404("Only bank-transfer top-ups have a proforma.")
    response = HttpResponse(proforma_pdf(topup), content_type="application/pdf")
    response["Content-Disposition"] = f'attachment; filename="proforma-{topup.reference}.pdf"'
    return response
