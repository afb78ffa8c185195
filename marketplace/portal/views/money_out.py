"""Money out in the portal: a provider's statements, payouts and payout details; the staff
cockpit's billing page (periods, early close, payout batches and their SEPA files)."""

from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import messages
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect
from django.views.decorators.http import require_POST

from marketplace.accounts.models import Membership, Organization, User
from marketplace.billing import selectors as billing_selectors
from marketplace.billing import services as billing
from marketplace.billing.models import BillingPeriod, PayoutBatch
from marketplace.capacity import services as capacity
from marketplace.errors import PartageError
from marketplace.portal.context import error_message, org_required, page, staff_required


class PayoutDetailsForm(forms.Form):
    payout_name = forms.CharField(label="Account holder", max_length=70)
    payout_iban = forms.CharField(label="IBAN", max_length=42)
    payout_bic = forms.CharField(label="BIC (optional)", max_length=11, required=False)


def _provider_context(org: Organization, form: PayoutDetailsForm | None = None) -> dict[str, Any]:
    profile = getattr(org, "provider_profile", None)
    initial = (
        {
            "payout_name": profile.payout_name,
            "payout_iban": profile.payout_iban,
            "payout_bic": profile.payout_bic,
        }
        if profile
        else {}
    )
    return {
        "statements": billing_selectors.statements_for_provider(org)[:24],
        "payouts": billing_selectors.payouts_for_provider(org)[:24],
        "profile": profile,
        "details_form": form or PayoutDetailsForm(initial=initial),
        "can_edit": False,
    }


@org_required
def provider_earnings(request: HttpRequest) -> HttpResponse:
    org = request.org  # type: ignore[attr-defined]
    if org.kind != Organization.Kind.PROVIDER:
        raise Http404("Only provider organizations have earnings.")
    context = _provider_context(org)
    context["can_edit"] = _is_owner(request)
    return page(request, "portal/usage/earnings.html", context)


def _is_owner(request: HttpRequest) -> bool:
    membership = getattr(request, "membership", None)
    return membership is not None and membership.role == Membership.Role.OWNER


@require_POST
@org_required
def payout_details(request: HttpRequest) -> HttpResponse:
    org = request.org  # type: ignore[attr-defined]
    if org.kind != Organization.Kind.PROVIDER or not _is_owner(request):
        raise Http404("Only a provider's owners set where payouts go.")
    form = PayoutDetailsForm(request.POST)
    if form.is_valid():
        try:
            capacity.provider_payout_details_set(
                organization=org,
                name=form.cleaned_data["payout_name"],
                iban=form.cleaned_data["payout_iban"],
                bic=form.cleaned_data["payout_bic"],
            )
        except PartageError as e:
            form.add_error(e.param if e.param in form.fields else None, e.message)
        else:
            messages.success(request, "Payout details saved: the next payout goes there.")
            return redirect("portal:earnings")
    context = _provider_context(org, form)
    context["can_edit"] = True
    return page(request, "portal/usage/earnings.html", context, status=400)


# ---------------------------------------------------------------- staff


def _actor(request: HttpRequest) -> User:
    assert isinstance(request.user, User)  # staff_required let only staff users through
    return request.user


@staff_required
def cockpit_billing(request: HttpRequest) -> HttpResponse:
    return page(
        request,
        "portal/staff/billing.html",
        {
            "periods": BillingPeriod.objects.all()[:12],
            "batches": billing_selectors.payout_batches()[:24],
        },
    )


def _batch(public_id: str) -> PayoutBatch:
    batch = billing_selectors.payout_batches().filter(public_id=public_id).first()
    if batch is None:
        raise Http404("No such payout batch.")
    return batch


@staff_required
def payout_batch_file(request: HttpRequest, batch_id: str) -> HttpResponse:
    batch = _batch(batch_id)
    response = HttpResponse(batch.sepa_xml, content_type="application/xml")
    response["Content-Disposition"] = f'attachment; filename="{batch.public_id}.pain.001.xml"'
    return response


@require_POST
@staff_required
def payout_batch_mark(request: HttpRequest, batch_id: str) -> HttpResponse:
    batch = _batch(batch_id)
    step = request.POST.get("step")
    try:
        if step == "sent":
            billing.payout_batch_mark_sent(batch=batch, actor=_actor(request))
        elif step == "paid":
            billing.payout_batch_mark_paid(batch=batch, actor=_actor(request))
        else:
            raise Http404("Mark a batch sent or paid.")
    except PartageError as e:
        error_message(request, e)
    else:
        messages.success(request, f"Payout batch {batch.public_id} marked {step}.")
    return redirect("portal:cockpit-billing")


@require_POST
@staff_required
def period_close_early(request: HttpRequest) -> HttpResponse:
    try:
        period = billing.period_close_early(
            actor=_actor(request), reason=request.POST.get("reason", "")
        )
    except PartageError as e:
        error_message(request, e)
    else:
        messages.success(
            request,
            f"Closed {period} early: {period.invoices} invoice(s), "
            f"{period.statements} statement(s).",
        )
    return redirect("portal:cockpit-billing")
