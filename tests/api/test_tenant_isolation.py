"""Tenancy on every /v1 route: alice (org A) asks for org B's objects and gets 404, every time.

The routes are enumerated from the URL resolver, so a new route is covered the day it lands. A
route with a path parameter this test cannot fill fails loudly: add a factory to ID_FACTORIES.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import Any

import pytest
from django.urls import URLPattern, URLResolver, get_resolver
from django.utils import timezone
from rest_framework.test import APIClient

from marketplace.accounts.models import Organization
from marketplace.accounts.services import api_key_create
from marketplace.api.webhooks import services as webhooks
from tests.api.factories import file_for, job_for

pytestmark = pytest.mark.django_db

# Routes that hold no tenant data or are not API resources.
SKIPPED = {"not-found", "bench-bare", "openapi", "docs", "redoc"}


def v1_routes() -> Iterator[tuple[str, Any, str]]:
    """(route template, view callback, url name) for every /v1 route."""

    def walk(patterns: list[Any], prefix: str) -> Iterator[tuple[str, Any, str]]:
        for entry in patterns:
            if isinstance(entry, URLResolver):
                yield from walk(entry.url_patterns, prefix + str(entry.pattern))
            elif isinstance(entry, URLPattern):
                yield prefix + str(entry.pattern), entry.callback, entry.name or ""

    for route, callback, name in walk(get_resolver().url_patterns, ""):
        if route.startswith("v1/") and name not in SKIPPED:
            yield route, callback, name


def _org_b_job(org_b: Organization) -> Any:
    return job_for(org_b, status="succeeded")


def _org_b_endpoint(org_b: Organization, settings: Any) -> str:
    settings.PARTAGE_WEBHOOK_ALLOW_PRIVATE = True
    return webhooks.webhook_endpoint_create(
        organization=org_b,
        name="b",
        url="http://127.0.0.1:9/b",
        event_types=["fine_tuning.job.failed"],
    ).id


def _org_b_delivery(org_b: Organization, settings: Any) -> str:
    _org_b_endpoint(org_b, settings)
    event = webhooks.webhook_event_emit(
        organization=org_b, event_type="fine_tuning.job.failed", data={"id": "ftjob-b"}
    )
    return str(event.deliveries.order_by("id").first().id)  # type: ignore[union-attr]


# Objects that belong to another org than B (a provider's pool) register their owner's key here,
# so the test can check that the id is real before checking that alice cannot see it.
OWNER_KEYS: dict[str, str] = {}


def _org_b_pool(org_b: Organization, settings: Any) -> str:
    from tests.capacity import factories

    provider = factories.provider(f"provider-{len(OWNER_KEYS)}-of-b")
    pool_id = factories.pool(provider).public_id
    OWNER_KEYS[pool_id] = api_key_create(organization=provider, name="p").secret
    return str(pool_id)


def _org_b_booking(org_b: Organization, settings: Any) -> str:
    from marketplace.capacity import services
    from tests.capacity import factories

    factories.pool(factories.provider())
    factories.fund(org_b)  # a booking is paid when it is confirmed
    start = timezone.now().replace(minute=0, second=0, microsecond=0) + timedelta(days=10)
    return services.booking_create(
        organization=org_b,
        flavor="h100-80g",
        gpu_count=1,
        start=start,
        end=start + timedelta(hours=2),
    ).public_id


def _month() -> tuple[Any, Any]:
    start = timezone.now().replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    return start, (start + timedelta(days=32)).replace(day=1)


def _org_b_invoice(org_b: Organization, settings: Any) -> str:
    from marketplace.billing.services import invoices

    start, end = _month()
    return str(
        invoices.invoice_draft(organization=org_b, period_start=start, period_end=end).public_id
    )


def _org_b_statement(org_b: Organization, settings: Any) -> str:
    from marketplace.billing.services import statements
    from tests.capacity import factories

    provider = factories.provider()
    start, end = _month()
    statement_id = statements.statement_build(
        provider=provider, period_start=start, period_end=end
    ).public_id
    OWNER_KEYS[statement_id] = api_key_create(organization=provider, name="s").secret
    return str(statement_id)


def _org_b_topup(org_b: Organization) -> str:
    from marketplace.billing.services import topup_start

    return topup_start(organization=org_b, amount="50", method="bank_transfer").public_id


def _org_b_export(org_b: Organization) -> str:
    from marketplace.privacy.services import export_build, export_request

    return export_build(
        export_id=export_request(organization=org_b, requested_by=None).pk
    ).public_id


# Path parameter → a function (org B, settings) returning the id of one of org B's objects.
ID_FACTORIES: dict[str, Callable[[Organization, Any], str]] = {
    "file_id": lambda org_b, settings: file_for(org_b).id,
    "job_id": lambda org_b, settings: _org_b_job(org_b).id,
    "model_id": lambda org_b, settings: _org_b_job(org_b).fine_tuned_model,
    "webhook_endpoint_id": _org_b_endpoint,
    "delivery_id": _org_b_delivery,
    "key_id": lambda org_b, settings: (
        f"key_{api_key_create(organization=org_b, name='b2').api_key.pk}"
    ),
    "pool_id": _org_b_pool,
    "booking_id": _org_b_booking,
    "invoice_id": _org_b_invoice,
    "export_format": lambda org_b, settings: "csv",  # not an id: a valid value
    "statement_id": _org_b_statement,
    "topup_id": lambda org_b, settings: _org_b_topup(org_b),
    "export_id": lambda org_b, settings: _org_b_export(org_b),
    # staff-only routes (below): the organization and flavor are names, not private ids
    "organization": lambda org_b, settings: org_b.slug,
    "flavor": lambda org_b, settings: "h100-80g",
}

# Views that refuse by the caller's role before any lookup (a startup may not edit pools). They
# answer 403 whatever the id, so nothing leaks, but they break "404 every time": each entry must
# answer exactly as it does for an id that does not exist. Owners: move the role check after the
# scoped lookup and delete the entry.
ROLE_DENIED = {
    # staff-only: a startup's key gets the same 403 for every organization, its own included
    ("PATCH", "v1/admin/organizations/<str:organization>/quotas/<str:flavor>"),
    ("PUT", "v1/admin/organizations/<str:organization>/plan"),
}

PARAM = re.compile(r"<(?:(?P<converter>[a-z]+):)?(?P<name>\w+)>")


def _methods(callback: Any) -> list[str]:
    view_class = getattr(callback, "view_class", None) or getattr(callback, "cls", None)
    if view_class is None:
        return ["get"]
    allowed = getattr(view_class, "http_method_names", [])
    return [
        m
        for m in ("get", "post", "put", "patch", "delete")
        if hasattr(view_class, m) and m in allowed
    ]


def test_every_parameterized_v1_route_hides_other_orgs_objects(
    client_a: APIClient, org_b: Organization, key_b: str, settings: Any
) -> None:
    routes = [(route, cb, name) for route, cb, name in v1_routes() if PARAM.search(route)]
    assert len(routes) >= 15, routes  # the walk found the API
    missing = sorted(
        {m["name"] for r, _, _ in routes for m in PARAM.finditer(r)} - set(ID_FACTORIES)
    )
    assert not missing, f"add an org-B id factory for path parameter(s) {missing} in ID_FACTORIES"
    owner_b = APIClient()
    owner_b.credentials(HTTP_AUTHORIZATION=f"Bearer {key_b}")
    checked = []
    for route, callback, name in routes:
        ids: list[str] = []

        def fill(match: re.Match[str], ids: list[str] = ids) -> str:
            ids.append(ID_FACTORIES[match["name"]](org_b, settings))
            return ids[-1]

        path = "/" + PARAM.sub(fill, route)
        # The id is real: its owner can read it (where the route can be read at all).
        owner = owner_b
        if ids[0] in OWNER_KEYS:
            owner = APIClient()
            owner.credentials(HTTP_AUTHORIZATION=f"Bearer {OWNER_KEYS[ids[0]]}")
        if "get" in _methods(callback) and not name.endswith("stream"):
            assert owner.get(path).status_code == 200, (path, owner.get(path).content)
        for method in _methods(callback):
            response = getattr(client_a, method)(path, {}, format="json")
            if (method.upper(), route) in ROLE_DENIED and response.status_code != 404:
                nowhere = PARAM.sub("does-not-exist", "/" + route)
                unknown = getattr(client_a, method)(nowhere, {}, format="json")
                assert (response.status_code, response.json()) == (
                    unknown.status_code,
                    unknown.json(),
                )
                continue
            assert response.status_code == 404, (method.upper(), path, response.content)
            assert response.json()["error"]["type"] == "invalid_request_error"
            checked.append(f"{method.upper()} {route}")
    assert len(checked) >= len(routes)


def test_lists_never_show_another_orgs_objects(
    client_a: APIClient, org_a: Organization, org_b: Organization, settings: Any
) -> None:
    b_ids = {
        file_for(org_b).id,
        job_for(org_b).id,
        _org_b_delivery(org_b, settings),
        _org_b_endpoint(org_b, settings),
        org_b.public_id,
        _org_b_topup(org_b),
    }
    job_for(org_a)
    lists = [(route, cb) for route, cb, _ in v1_routes() if not PARAM.search(route)]
    assert len(lists) >= 10
    for route, callback in lists:
        if "get" not in _methods(callback):
            continue
        response = client_a.get("/" + route)
        body = response.content.decode()
        if route.startswith("v1/admin/"):  # staff-only lists: a startup's key is refused
            assert response.status_code == 403, (route, body)
            continue
        assert response.status_code in (200, 400), (route, body)  # 400: a required query parameter
        leaked = [i for i in b_ids if i in body]
        assert not leaked, (route, leaked)
