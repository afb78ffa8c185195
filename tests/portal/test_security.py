"""Security of the portal: CSP without inline script, CSRF, login throttling, tenancy (404s)."""

from __future__ import annotations

import re
from typing import Any

import pytest
from django.test import Client

from marketplace.finetuning.models import FineTuningJob
from tests.fakes.keys import provenance_key_pem
from tests.portal.conftest import assert_list_queries_flat, make_file, make_job

pytestmark = pytest.mark.django_db

INLINE_SCRIPT = re.compile(r"<script(?![^>]*\bsrc=)[^>]*>", re.IGNORECASE)
INLINE_HANDLER = re.compile(r"<[^>]+\son[a-z]+\s*=", re.IGNORECASE)
INLINE_STYLE = re.compile(r"<[^>]+\sstyle\s*=", re.IGNORECASE)


def assert_strict_page(response: Any) -> None:
    policy = response["Content-Security-Policy"]
    directives = dict(d.strip().split(" ", 1) for d in policy.split(";"))
    assert directives["script-src"] == "'self'"
    assert directives["style-src"] == "'self'"
    assert directives["frame-ancestors"] == "'none'"
    html = response.content.decode()
    assert not INLINE_SCRIPT.search(html), INLINE_SCRIPT.search(html)
    assert not INLINE_HANDLER.search(html), INLINE_HANDLER.search(html)
    assert not INLINE_STYLE.search(html), INLINE_STYLE.search(html)


def test_every_page_has_a_strict_csp_and_no_inline_script(
    alice_web: Client, org_a: Any, django_capture_on_commit_callbacks: Any
) -> None:
    job = make_job(org_a, django_capture_on_commit_callbacks)
    anonymous = Client()
    for url in ["/", "/login/", "/signup/", "/password-reset/"]:
        response = anonymous.get(url)
        assert response.status_code == 200, url
        assert_strict_page(response)
    pages = [
        "/overview/",
        "/data/",
        f"/data/{job.training_file_id}/",
        "/jobs/",
        "/jobs/new/",
        f"/jobs/{job.id}/",
        "/team/",
        "/api-keys/",
        "/offers/",
        "/usage/",
    ]
    for url in pages:
        response = alice_web.get(url)
        assert response.status_code == 200, url
        assert_strict_page(response)
    # The validation report (an error page) too.
    from django.core.files.uploadedfile import SimpleUploadedFile

    response = alice_web.post("/data/", {"file": SimpleUploadedFile("x.jsonl", b"{oops\n")})
    assert response.status_code == 400
    assert_strict_page(response)


def test_the_inline_script_check_can_fail() -> None:
    assert INLINE_SCRIPT.search("<script>alert(1)</script>")
    assert not INLINE_SCRIPT.search('<script src="/static/portal/portal.js" defer></script>')
    assert INLINE_HANDLER.search('<button onclick="x()">')
    assert INLINE_STYLE.search('<div style="color: red">')


def test_forms_refuse_posts_without_the_csrf_token(alice: Any) -> None:
    client = Client(enforce_csrf_checks=True)
    client.force_login(alice)
    response = client.post("/api-keys/", {"name": "ci"})
    assert response.status_code == 403
    page = client.get("/api-keys/")
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page.content.decode())
    assert token
    response = client.post("/api-keys/", {"name": "ci", "csrfmiddlewaretoken": token.group(1)})
    assert response.status_code == 200
    assert "sk-ptg-" in response.content.decode()


def _login(client: Client, password: str, ip: str = "10.0.0.1") -> Any:
    return client.post("/login/", {"username": "alice", "password": password}, REMOTE_ADDR=ip)


def test_login_is_throttled_per_username_and_address(alice: Any) -> None:
    client = Client()
    for _ in range(5):
        response = _login(client, "wrong-password")
        assert response.status_code == 200
        assert "Please enter a correct username and password" in response.content.decode()
    # Even the right password is refused now, with a clear message.
    response = _login(client, "alice-password-123")
    assert response.status_code == 200
    body = response.content.decode()
    assert "Too many failed sign-in attempts" in body and "Try again in 15 minute(s)" in body
    assert "_auth_user_id" not in client.session
    # From another address, alice can still sign in.
    other = Client()
    response = _login(other, "alice-password-123", ip="10.0.0.2")
    assert response.status_code == 302
    assert other.session["_auth_user_id"] == str(alice.pk)


def test_a_success_clears_the_failure_count(alice: Any) -> None:
    client = Client()
    for _ in range(4):
        _login(client, "wrong-password")
    assert _login(client, "alice-password-123").status_code == 302
    client.logout()
    for _ in range(4):
        _login(client, "wrong-password")
    assert _login(client, "alice-password-123").status_code == 302


def test_bob_cannot_open_alice_s_job_file_or_adapter(
    alice_web: Client, bob_web: Client, org_a: Any, django_capture_on_commit_callbacks: Any
) -> None:
    job = make_job(org_a, django_capture_on_commit_callbacks)
    result = make_file(org_a, name="adapter.tar.gz")
    FineTuningJob.objects.filter(pk=job.pk).update(result_file=result, manifest={"x": 1})
    urls = [
        f"/jobs/{job.id}/",
        f"/jobs/{job.id}/live/",
        f"/jobs/{job.id}/adapter/",
        f"/jobs/{job.id}/manifest/",
        f"/data/{job.training_file_id}/",
        f"/data/{job.training_file_id}/download/",
        f"/data/{result.id}/download/",
    ]
    for url in urls:
        assert alice_web.get(url).status_code == 200, url
        assert bob_web.get(url).status_code == 404, url
    assert bob_web.post(f"/jobs/{job.id}/cancel/").status_code == 404
    job.refresh_from_db()
    assert job.status == "queued"
    assert job.id not in bob_web.get("/jobs/").content.decode()


def test_staff_pages_are_hidden_from_startups(alice_web: Client, carol_web: Client) -> None:
    assert alice_web.get("/cockpit/").status_code == 404
    assert carol_web.get("/cockpit/").status_code == 200
    assert Client().get("/cockpit/").status_code == 302


def test_switching_to_someone_else_s_organization_is_ignored(
    bob_web: Client, org_a: Any, org_b: Any
) -> None:
    bob_web.post("/organization/switch/", {"org": org_a.public_id})
    page = bob_web.get("/overview/").content.decode()
    assert "Org B" in page and "Org A" not in page


def test_the_admin_keeps_working_under_its_own_policy(carol: Any) -> None:
    client = Client()
    client.force_login(carol)
    User = type(carol)
    User.objects.filter(pk=carol.pk).update(is_superuser=True)
    response = client.get("/admin/")
    assert response.status_code == 200
    policy = response["Content-Security-Policy"]
    assert "script-src 'self';" in policy and "style-src 'self' 'unsafe-inline'" in policy
    assert not INLINE_SCRIPT.search(response.content.decode())


@pytest.mark.parametrize("url", ["/jobs/", "/data/", "/overview/"])
def test_list_pages_do_not_grow_queries_with_rows(
    alice_web: Client,
    org_a: Any,
    url: str,
    django_capture_on_commit_callbacks: Any,
    django_assert_max_num_queries: Any,
) -> None:
    assert_list_queries_flat(
        alice_web, url, org_a, django_capture_on_commit_callbacks, django_assert_max_num_queries
    )


def _deploy_check(env: dict[str, str], tmp_path: Any) -> str:
    """`manage.py check --deploy` (security checks) in a fresh process with this environment."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    clean = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("DATABASE_URL", "REDIS_URL", "PARTAGE_", "DJANGO_"))
    }
    result = subprocess.run(
        [sys.executable, "manage.py", "check", "--deploy", "--tag", "security"],
        cwd=Path(__file__).resolve().parents[2],
        env={**clean, "PARTAGE_DATA_DIR": str(tmp_path), **env},
        capture_output=True,
        text=True,
        timeout=180,
    )
    return result.stdout + result.stderr


def test_session_and_csrf_cookies_are_secure_in_production(tmp_path: Any) -> None:
    production = _deploy_check(
        {
            "PARTAGE_ENV": "production",
            "DJANGO_SECRET_KEY": "p7-" + "x9Yq2" * 10,
            "DJANGO_ALLOWED_HOSTS": "partage.example",
            "DATABASE_URL": "postgres://partage@db.invalid:5432/partage",
            "PARTAGE_PROVENANCE_KEY": provenance_key_pem(),
        },
        tmp_path,
    )
    assert "System check identified" in production or "no issues" in production, production
    # W012: SESSION_COOKIE_SECURE, W016: CSRF_COOKIE_SECURE, W004: HSTS, W008: HTTPS redirect.
    for warning in ("security.W012", "security.W016", "security.W004", "security.W008"):
        assert warning not in production, production
    # The same check does flag the local, plain-HTTP default: it can fail.
    local = _deploy_check({"PARTAGE_ENV": "development"}, tmp_path)
    assert "security.W012" in local and "security.W016" in local, local
