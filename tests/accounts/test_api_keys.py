"""API keys: shown once, stored hashed with a visible prefix, revocable, and required."""

from __future__ import annotations

from typing import Any

from django.core.management import call_command
from django.db import connection

from marketplace.accounts.models import ApiKey, Organization
from marketplace.accounts.services import api_key_create, api_key_revoke


def test_keys_are_not_stored_in_plain_text(org_a: Organization) -> None:
    issued = api_key_create(organization=org_a, name="ci")
    with connection.cursor() as cursor:
        cursor.execute("SELECT * FROM accounts_apikey")
        rows = cursor.fetchall()
    flat = " ".join(str(value) for row in rows for value in row)
    assert issued.secret not in flat
    assert issued.secret.split("-", 2)[-1] not in flat
    key = ApiKey.objects.get()
    assert issued.secret.startswith(key.prefix)
    assert key.hashed_secret != issued.secret and len(key.hashed_secret) == 64


def test_missing_bad_and_revoked_keys_get_401(client: Any, org_a: Organization) -> None:
    assert client.get("/v1/files").status_code == 401
    body = client.get("/v1/files", HTTP_AUTHORIZATION="Bearer sk-ptg-nope").json()
    assert body["error"]["type"] == "authentication_error"
    issued = api_key_create(organization=org_a, name="temp")
    auth = {"HTTP_AUTHORIZATION": f"Bearer {issued.secret}"}
    assert client.get("/v1/files", **auth).status_code == 200
    api_key_revoke(organization=org_a, key_id=issued.api_key.pk)
    assert client.get("/v1/files", **auth).status_code == 401


def test_last_used_is_recorded(client: Any, org_a: Organization) -> None:
    issued = api_key_create(organization=org_a, name="temp")
    client.get("/v1/files", HTTP_AUTHORIZATION=f"Bearer {issued.secret}")
    issued.api_key.refresh_from_db()
    assert issued.api_key.last_used_at is not None


def test_create_api_key_command_creates_org_and_prints_key_last(db: None, capsys: Any) -> None:
    call_command("create_api_key", "fresh-startup")
    out = capsys.readouterr().out.strip().splitlines()
    secret = out[-1]
    assert Organization.objects.filter(slug="fresh-startup").exists()
    key = ApiKey.objects.get(organization__slug="fresh-startup")
    assert key.hashed_secret == ApiKey.hash_secret(secret)
    call_command("create_api_key", "fresh-startup")
    assert ApiKey.objects.filter(organization__slug="fresh-startup").count() == 2


def test_create_api_key_command_gives_the_scopes_asked(db: None, capsys: Any) -> None:
    from marketplace.accounts.models import ApiKey

    call_command("create_api_key", "fresh-startup", "--name", "ci", "--scope", "jobs")
    call_command("create_api_key", "fresh-startup", "--name", "everything")
    assert ApiKey.objects.get(name="ci").scopes == ["jobs"]
    assert ApiKey.objects.get(name="everything").scopes == ["admin"]
