"""Who is asking and for which organization: decorators and the page-rendering helper.

A user may belong to several organizations; the one being worked on is kept in the session and
every page reads it through `request.org`, then reads data through org-scoped selectors only.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from django.contrib import messages
from django.contrib.auth.views import redirect_to_login
from django.http import Http404, HttpRequest, HttpResponse
from django.http.response import HttpResponseBase
from django.shortcuts import redirect, render

from marketplace.accounts.models import Membership, Organization
from marketplace.accounts.selectors import membership_for, organizations_for_user
from marketplace.errors import PartageError

SESSION_ORG = "portal_org"
View = Callable[..., HttpResponseBase]


class PortalRequest(HttpRequest):
    org: Organization
    membership: Membership | None


def org_switch(request: HttpRequest, org: Organization) -> None:
    request.session[SESSION_ORG] = org.public_id


def _pick_org(request: HttpRequest) -> Organization | None:
    orgs = list(organizations_for_user(request.user))  # type: ignore[arg-type]
    chosen = request.session.get(SESSION_ORG)
    for org in orgs:
        if org.public_id == chosen:
            return org
    return orgs[0] if orgs else None


def org_required(view: View) -> View:
    """Signed in and in an organization; sets request.org and request.membership."""

    @functools.wraps(view)
    def wrapper(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponseBase:
        if not request.user.is_authenticated:
            return redirect_to_login(request.get_full_path())
        org = _pick_org(request)
        if org is None:
            # Platform staff need no organization: their home is the cockpit.
            return redirect("portal:cockpit" if request.user.is_staff else "portal:onboarding")
        request.org = org  # type: ignore[attr-defined]
        request.membership = membership_for(request.user, org)  # type: ignore[attr-defined]
        return view(request, *args, **kwargs)

    return wrapper


def org_admin_required(view: View) -> View:
    """Owners and admins of the current organization only."""

    @functools.wraps(view)
    def inner(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponseBase:
        membership = request.membership  # type: ignore[attr-defined]
        if membership is None or membership.role not in {"owner", "admin"}:
            messages.error(request, "Only owners and admins of the organization can do this.")
            return redirect("portal:dashboard")
        return view(request, *args, **kwargs)

    return org_required(inner)


def staff_required(view: View) -> View:
    @functools.wraps(view)
    def wrapper(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponseBase:
        if not request.user.is_authenticated:
            return redirect_to_login(request.get_full_path())
        if not request.user.is_staff:
            raise Http404("No such page.")
        request.org = _pick_org(request)  # type: ignore[attr-defined]
        request.membership = None  # type: ignore[attr-defined]
        return view(request, *args, **kwargs)

    return wrapper


def page(
    request: HttpRequest, template: str, context: dict[str, Any] | None = None, *, status: int = 200
) -> HttpResponse:
    """Render a portal page with the navigation context (current org, the user's orgs)."""
    base: dict[str, Any] = {"org": getattr(request, "org", None)}
    if request.user.is_authenticated:
        base["orgs"] = organizations_for_user(request.user)
        base["membership"] = getattr(request, "membership", None)
    return render(request, template, {**base, **(context or {})}, status=status)


def error_message(request: HttpRequest, error: PartageError) -> None:
    """Show a domain error the way people read it."""
    messages.error(request, error.message)
