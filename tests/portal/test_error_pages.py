"""Errors look like Partage: branded pages in the portal, the API's error shape under /v1."""

from __future__ import annotations

import os
import subprocess
import sys
from typing import Any

import pytest
from django.core.exceptions import PermissionDenied
from django.test import Client, override_settings
from django.urls import path

from marketplace import urls as root_urls

pytestmark = pytest.mark.django_db


def _boom(request: Any) -> Any:
    raise RuntimeError("a bug")


def _forbidden(request: Any) -> Any:
    raise PermissionDenied("Only owners can close the organization.")


urlpatterns = [
    path("boom/", _boom),
    path("v1/boom", _boom),
    path("forbidden/", _forbidden),
    *root_urls.urlpatterns,
]
handler400 = root_urls.handler400
handler403 = root_urls.handler403
handler404 = root_urls.handler404
handler500 = root_urls.handler500


def test_debug_is_off_unless_asked_for(tmp_path: Any) -> None:
    """The embedded default (PARTAGE_ENV=development, nothing else set) runs with DEBUG off."""
    env = {k: v for k, v in os.environ.items() if k not in {"DJANGO_DEBUG", "PARTAGE_ENV"}}
    env["PARTAGE_DATA_DIR"] = str(tmp_path)
    probe = "import django; django.setup(); from django.conf import settings; print(settings.DEBUG)"
    out = subprocess.run(
        [sys.executable, "-c", probe],
        env={**env, "DJANGO_SETTINGS_MODULE": "marketplace.settings"},
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout.strip() == "False"


def test_a_missing_page_is_branded_and_lists_no_urls() -> None:
    response = Client().get("/no-such-page/")
    body = response.content.decode()
    assert response.status_code == 404
    assert "This page does not exist" in body
    assert "portal.css" in body  # the site's own styles, allowed by its CSP
    assert "URLconf" not in body and "admin/" not in body
    assert 'href="/v1/docs"' in body


def test_a_missing_api_url_answers_in_the_api_error_shape() -> None:
    response = Client().get("/v1/no-such-thing")
    assert response.status_code == 404
    assert set(response.json()["error"]) == {"message", "type", "param", "code"}


@override_settings(ROOT_URLCONF=__name__)
def test_a_server_error_is_branded_in_the_portal_and_shaped_in_the_api() -> None:
    client = Client(raise_request_exception=False)
    page = client.get("/boom/")
    assert page.status_code == 500 and "Something went wrong on our side" in page.content.decode()
    assert "a bug" not in page.content.decode()
    api = client.get("/v1/boom")
    assert api.status_code == 500 and api.json()["error"]["type"] == "server_error"


@override_settings(ROOT_URLCONF=__name__)
def test_permission_denied_says_why_when_the_view_gave_a_reason() -> None:
    response = Client().get("/forbidden/")
    assert response.status_code == 403
    assert "Only owners can close the organization." in response.content.decode()


def test_the_footer_api_link_leads_to_the_api_documentation() -> None:
    body = Client().get("/login/").content.decode()
    assert 'href="/v1/docs"' in body
    assert Client().get("/v1/docs").status_code == 200
