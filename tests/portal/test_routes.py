"""Every portal route, walked: anonymously, as bob (another tenant) against alice's objects, and
without a CSRF token. A new route fails `test_the_walk_names_every_route` until it is added to
ROUTES below, so no page escapes these checks.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from django.test import Client
from django.urls import URLPattern, reverse
from django.utils import timezone

from marketplace.accounts.models import ApiKey
from marketplace.accounts.services import api_key_create
from marketplace.billing.services import invoice_draft, invoice_finalize, month_bounds
from marketplace.capacity.models import Booking, Pool
from marketplace.capacity.services import booking_create
from marketplace.finetuning.models import FineTuningJob, JobAttempt
from marketplace.portal import urls as portal_urls
from marketplace.portal.invites import invite_token
from tests.capacity import factories
from tests.portal.conftest import make_file, make_job

pytestmark = pytest.mark.django_db

PUBLIC = "public"  # anyone: account pages
ORG = "org"  # signed in, works on the current organization only
OWNED = "owned"  # one of alice's objects, named in the URL
STAFF = "staff"  # Partage staff only


@dataclass(frozen=True)
class Route:
    kind: str
    kwargs: tuple[str, ...] = ()  # URL arguments, "name" or "name=world_key", from the world


ROUTES: dict[str, Route] = {
    "home": Route(PUBLIC),
    "signup": Route(PUBLIC),
    "login": Route(PUBLIC),
    "logout": Route(PUBLIC),
    "password-reset": Route(PUBLIC),
    "password-reset-done": Route(PUBLIC),
    "password-reset-confirm": Route(PUBLIC, ("uidb64", "token")),
    "password-reset-complete": Route(PUBLIC),
    "join": Route(PUBLIC, ("token=invite",)),
    "dashboard": Route(ORG),
    "onboarding": Route(ORG),
    "switch-org": Route(ORG),
    "members": Route(ORG),
    "api-keys": Route(ORG),
    "files": Route(ORG),
    "jobs": Route(ORG),
    "job-new": Route(ORG),
    "offers": Route(ORG),
    "offer-book": Route(ORG),
    "usage": Route(ORG),
    "api-key-revoke": Route(OWNED, ("key_id",)),
    "file": Route(OWNED, ("file_id",)),
    "file-download": Route(OWNED, ("file_id",)),
    "job": Route(OWNED, ("job_id",)),
    "job-live": Route(OWNED, ("job_id",)),
    "job-cancel": Route(OWNED, ("job_id",)),
    "job-adapter": Route(OWNED, ("job_id",)),
    "job-attempt-log": Route(OWNED, ("job_id", "number=attempt")),
    "job-manifest": Route(OWNED, ("job_id",)),
    "offer-booking-cancel": Route(OWNED, ("booking_id",)),
    "invoice": Route(OWNED, ("invoice_id",)),
    "cockpit": Route(STAFF),
    "cockpit-quota": Route(STAFF),
    "cockpit-price": Route(STAFF, ("pool_id",)),
    "cockpit-pool-review": Route(STAFF, ("pool_id",)),
    "cockpit-provider-review": Route(STAFF, ("org_id",)),
}


@pytest.fixture
def world(org_a: Any, alice: Any, django_capture_on_commit_callbacks: Any) -> dict[str, Any]:
    """Alice's org with one of everything: a job with an adapter, a booking, a key, an invoice."""
    job = make_job(org_a, django_capture_on_commit_callbacks)
    adapter = make_file(org_a, name="adapter.tar.gz")
    FineTuningJob.objects.filter(pk=job.pk).update(result_file=adapter, manifest={"x": 1})
    JobAttempt.objects.create(job=job, number=1, executor="local", name="a1", logs="step 1")
    pool = factories.pool(gpus=8, name="Paris H100")
    factories.fund(org_a)  # a booking is paid when it is confirmed
    start = (timezone.now() + timedelta(days=3)).replace(minute=0, second=0, microsecond=0)
    booking = booking_create(
        organization=org_a,
        flavor="h100-80g",
        gpu_count=2,
        start=start,
        end=start + timedelta(hours=4),
        pool_id=pool.public_id,
    )
    key = api_key_create(organization=org_a, name="ci").api_key
    period = month_bounds(2026, 1)
    invoice = invoice_finalize(
        invoice=invoice_draft(organization=org_a, period_start=period[0], period_end=period[1])
    )
    provider = factories.provider("gpu-cloud-lyon", approved=False)
    return {
        "job": job,
        "booking": booking,
        "key": key,
        "invoice": invoice,
        "pool": pool,
        "job_id": job.id,
        "file_id": job.training_file_id,
        "booking_id": booking.public_id,
        "key_id": key.pk,
        "invoice_id": invoice.public_id,
        "attempt": 1,
        "pool_id": pool.public_id,
        "org_id": provider.public_id,
        "invite": invite_token(organization=org_a, role="member"),
        "uidb64": "MQ",
        "token": "set-password",
    }


def url_of(name: str, world: dict[str, Any]) -> str:
    pairs = [k.split("=") if "=" in k else (k, k) for k in ROUTES[name].kwargs]
    kwargs = {arg: world[key] for arg, key in pairs}
    return reverse(f"portal:{name}", kwargs=kwargs)


def test_the_walk_names_every_route() -> None:
    names = {p.name for p in portal_urls.urlpatterns if isinstance(p, URLPattern)}
    assert names == set(ROUTES), (
        f"routes missing from the walk: {sorted(names - set(ROUTES))}; "
        f"names in the walk that no longer exist: {sorted(set(ROUTES) - names)}"
    )


@pytest.mark.parametrize("name", [n for n, r in ROUTES.items() if r.kind != PUBLIC])
def test_anonymous_visitors_are_sent_to_log_in(name: str, world: dict[str, Any]) -> None:
    url = url_of(name, world)
    for method in ("get", "post"):
        response = getattr(Client(), method)(url)
        assert response.status_code in {302, 405}, (method, url, response.status_code)
        if response.status_code == 302:
            assert response["Location"].startswith("/login/"), (method, url)


def _alice_secrets(world: dict[str, Any]) -> list[str]:
    return [
        world["job_id"],
        world["file_id"],
        world["booking_id"],
        world["key"].prefix,
        world["invoice"].number,
        "Org A",
    ]


def test_bob_sees_none_of_alice_s_data_on_any_route(bob_web: Client, world: dict[str, Any]) -> None:
    for name, route in ROUTES.items():
        if route.kind == PUBLIC:
            continue
        url = url_of(name, world)
        for method in ("get", "post"):
            response = getattr(bob_web, method)(url)
            if route.kind in {OWNED, STAFF}:
                # Alice's object (or a staff page) does not exist for bob; a POST that a
                # service refuses comes back to bob's own page with its error.
                assert response.status_code in {404, 405, 302}, (method, url, response.status_code)
                if response.status_code == 302:
                    assert route.kind == OWNED and method == "post", (method, url)
            body = response.content.decode(errors="replace")
            for secret in _alice_secrets(world):
                assert secret not in body, (method, url, secret)
    # And nothing of alice's changed.
    world["job"].refresh_from_db()
    assert world["job"].status == "queued"
    assert Booking.objects.get(pk=world["booking"].pk).status == Booking.Status.CONFIRMED
    assert ApiKey.objects.get(pk=world["key"].pk).revoked_at is None
    assert (
        Pool.objects.get(pk=world["pool"].pk).price_per_gpu_hour == world["pool"].price_per_gpu_hour
    )


def test_alice_reaches_her_own_objects(alice_web: Client, world: dict[str, Any]) -> None:
    """The same URLs do answer for their owner, so the 404s above mean something."""
    for name, route in ROUTES.items():
        if route.kind == OWNED and name not in {"api-key-revoke", "job-cancel"}:
            if name == "offer-booking-cancel":
                continue
            assert alice_web.get(url_of(name, world)).status_code == 200, name


def _csrf_user(kind: str, alice: Any, carol: Any) -> Any:
    return carol if kind == STAFF else (None if kind == PUBLIC else alice)


def test_every_route_refuses_a_post_without_the_csrf_token(
    world: dict[str, Any], alice: Any, carol: Any
) -> None:
    for name, route in ROUTES.items():
        client = Client(enforce_csrf_checks=True)
        user = _csrf_user(route.kind, alice, carol)
        if user is not None:
            client.force_login(user)
        response = client.post(url_of(name, world), {"name": "x", "decision": "approve"})
        assert response.status_code == 403, (name, response.status_code)
    world["job"].refresh_from_db()
    assert world["job"].status == "queued"
    assert Booking.objects.get(pk=world["booking"].pk).status == Booking.Status.CONFIRMED
    assert ApiKey.objects.get(pk=world["key"].pk).revoked_at is None


TEMPLATES = Path(__file__).resolve().parents[2] / "marketplace" / "portal" / "templates"
POST_FORM = re.compile(r"<form\b[^>]*method=\"post\"[^>]*>(.*?)</form>", re.S | re.I)


def test_every_post_form_in_the_templates_carries_the_csrf_token() -> None:
    forms = 0
    for template in TEMPLATES.rglob("*.html"):
        for match in POST_FORM.finditer(template.read_text()):
            forms += 1
            assert "{% csrf_token %}" in match.group(1), (template.name, match.group(0)[:200])
    assert forms >= 15  # the walk really read the templates' forms
    get_forms = re.findall(
        r"<form\b(?![^>]*method=)[^>]*>", "".join(t.read_text() for t in TEMPLATES.rglob("*.html"))
    )
    assert not get_forms, f"forms without an explicit method: {get_forms}"
