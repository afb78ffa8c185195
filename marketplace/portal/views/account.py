"""Sign-up, sign-in, organizations, invitations, members and API keys."""

from __future__ import annotations

from django.contrib import messages
from django.contrib.auth import login
from django.contrib.auth.views import LoginView
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect
from django.urls import reverse
from django.views.decorators.http import require_POST

from marketplace.accounts.models import Membership, Organization
from marketplace.accounts.selectors import (
    api_keys_for_org,
    invitations_pending,
    organizations_for_user,
    role_changes_for_org,
)
from marketplace.accounts.services import (
    api_key_create,
    api_key_revoke,
    invitation_accept,
    invitation_by_token,
    invitation_create,
    invitation_revoke,
    organization_create,
    role_scopes,
)
from marketplace.errors import PartageError
from marketplace.finetuning import selectors as ft
from marketplace.portal.context import (
    error_message,
    org_admin_required,
    org_required,
    org_switch,
    page,
)
from marketplace.portal.forms import (
    ApiKeyForm,
    InviteForm,
    JoinForm,
    OrganizationForm,
    SignupForm,
    ThrottledLoginForm,
)


class PortalLoginView(LoginView):
    template_name = "portal/account/login.html"
    authentication_form = ThrottledLoginForm
    redirect_authenticated_user = True


def home(request: HttpRequest) -> HttpResponse:
    if request.user.is_authenticated:
        return redirect("portal:dashboard")
    return page(request, "portal/home.html")


@org_required
def dashboard(request: HttpRequest) -> HttpResponse:
    org = request.org  # type: ignore[attr-defined]
    jobs = ft.jobs_for_org(org)[:8]
    files = ft.files_for_org(org).filter(purpose="fine-tune")[:5]
    return page(request, "portal/dashboard.html", {"jobs": jobs, "files": files})


def signup(request: HttpRequest) -> HttpResponse:
    token = request.GET.get("invite", "") or request.POST.get("invite", "")
    form = SignupForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        user = form.save()
        login(request, user, backend="django.contrib.auth.backends.ModelBackend")
        if token:
            return redirect("portal:join", token=token)
        messages.success(request, "Welcome to Partage! Create your organization to start.")
        return redirect("portal:onboarding")
    return page(request, "portal/account/signup.html", {"form": form, "invite": token})


def onboarding(request: HttpRequest) -> HttpResponse:
    if not request.user.is_authenticated:
        return redirect("portal:login")
    create_form = OrganizationForm(request.POST if "create" in request.POST else None)
    join_form = JoinForm(request.POST if "join" in request.POST else None)
    if request.method == "POST" and "create" in request.POST and create_form.is_valid():
        try:
            org = organization_create(
                name=create_form.cleaned_data["name"],
                country=create_form.cleaned_data["country"],
                owner=request.user,
            )
        except PartageError as e:
            create_form.add_error("name", e.message)
        else:
            org_switch(request, org)
            messages.success(request, f"{org.name} is ready. Upload a training file to begin.")
            return redirect("portal:dashboard")
    if request.method == "POST" and "join" in request.POST and join_form.is_valid():
        return redirect("portal:join", token=join_form.cleaned_data["invitation"])
    return page(
        request,
        "portal/account/onboarding.html",
        {"create_form": create_form, "join_form": join_form},
    )


def join(request: HttpRequest, token: str) -> HttpResponse:
    """Show an invitation; accepting it (POST) adds the signed-in user to the organization.
    The link works once; someone already in the organization keeps their role."""
    try:
        invitation = invitation_by_token(token)
    except PartageError as e:
        return page(request, "portal/account/join.html", {"problem": e.message}, status=400)
    context = {"invitation": invitation, "token": token}
    if request.method != "POST" or not request.user.is_authenticated:
        return page(request, "portal/account/join.html", context)
    try:
        invitation_accept(token=token, user=request.user)
    except PartageError as e:
        return page(request, "portal/account/join.html", {"problem": e.message}, status=400)
    org_switch(request, invitation.organization)
    messages.success(request, f"You joined {invitation.organization.name}.")
    return redirect("portal:dashboard")


@require_POST
def switch_org(request: HttpRequest) -> HttpResponse:
    if not request.user.is_authenticated:
        return redirect("portal:login")
    org = organizations_for_user(request.user).filter(public_id=request.POST.get("org", "")).first()
    if org is not None:
        org_switch(request, org)
    return redirect("portal:dashboard")


@org_required
def members(request: HttpRequest) -> HttpResponse:
    org: Organization = request.org  # type: ignore[attr-defined]
    form = InviteForm(request.POST or None)
    invite_link = None
    role = request.membership.role if request.membership else ""  # type: ignore[attr-defined]
    can_invite = role in {"owner", "admin"}
    if request.method == "POST" and can_invite and form.is_valid():
        try:
            issued = invitation_create(
                organization=org,
                role=form.cleaned_data["role"],
                created_by=request.user,  # type: ignore[arg-type]
            )
        except PartageError as e:
            form.add_error("role", e.message)
        else:
            invite_link = request.build_absolute_uri(reverse("portal:join", args=[issued.token]))
    people = (
        Membership.objects.filter(organization=org)
        .select_related("user")
        .order_by("user__username")
    )
    return page(
        request,
        "portal/account/members.html",
        {
            "form": form,
            "people": people,
            "invite_link": invite_link,
            "can_invite": can_invite,
            "invitations": invitations_pending(org) if can_invite else [],
            # The audit of role changes is the owner's to read.
            "role_changes": role_changes_for_org(org)[:50] if role == "owner" else None,
        },
    )


@require_POST
@org_admin_required
def invitation_revoke_view(request: HttpRequest, invitation_id: int) -> HttpResponse:
    try:
        invitation_revoke(
            organization=request.org,  # type: ignore[attr-defined]
            invitation_id=invitation_id,
            by=request.user,  # type: ignore[arg-type]
        )
    except PartageError as e:
        error_message(request, e)
    else:
        messages.success(request, "The invitation is revoked: its link no longer works.")
    return redirect("portal:members")


@org_required
def api_keys(request: HttpRequest) -> HttpResponse:
    org: Organization = request.org  # type: ignore[attr-defined]
    allowed = role_scopes(organization=org, user=request.user)  # type: ignore[arg-type]
    form = ApiKeyForm(request.POST or None, allowed_scopes=allowed)
    issued = None
    if request.method == "POST" and form.is_valid():
        try:
            issued = api_key_create(
                organization=org,
                name=form.cleaned_data["name"],
                created_by=request.user,  # type: ignore[arg-type]
                scopes=form.cleaned_data["scopes"],
                allowed_scopes=allowed,
            )
        except PartageError as e:
            form.add_error("scopes" if e.param == "scopes" else "name", e.message)
        else:
            form = ApiKeyForm(allowed_scopes=allowed)
    return page(
        request,
        "portal/account/api_keys.html",
        {"form": form, "keys": api_keys_for_org(org), "issued": issued},
    )


@require_POST
@org_admin_required
def api_key_revoke_view(request: HttpRequest, key_id: int) -> HttpResponse:
    try:
        key = api_key_revoke(organization=request.org, key_id=key_id)  # type: ignore[attr-defined]
    except PartageError as e:
        error_message(request, e)
    else:
        messages.success(request, f"Key {key.prefix}… ({key.name}) is revoked.")
    return redirect("portal:api-keys")
