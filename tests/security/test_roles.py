"""Members reaching past their role (issue 14, point 5): scoped API keys that nobody can mint wider
than they may act, one table of the scope each /v1 route needs, single-use revocable expiring
invitations, and the audit of every role change.

alice owns org A, dave is a plain member of org A, erin is an admin of org A, bob is a member of
org B.
"""

from __future__ import annotations

import re
import threading
from datetime import timedelta
from typing import Any

import pytest
from django.db import close_old_connections, connection
from django.test import Client
from django.urls import URLPattern, URLResolver
from django.utils import timezone
from rest_framework.test import APIClient

from marketplace.accounts.models import ApiKey, Invitation, Membership, RoleChange, User
from marketplace.accounts.services import (
    api_key_create,
    invitation_accept,
    invitation_create,
    membership_set,
)
from marketplace.api import urls as api_urls
from marketplace.api.permissions import ROUTE_RIGHTS
from marketplace.errors import InvalidInput


def _api(secret: str) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {secret}")
    return client


def _web(user: User) -> Client:
    client = Client()
    client.force_login(user)
    return client


@pytest.fixture
def dave(org_a: Any) -> User:
    user = User.objects.create_user("dave", email="dave@a.example", password="dave-password-123")
    membership_set(organization=org_a, user=user, role=Membership.Role.MEMBER)
    return user


@pytest.fixture
def erin(org_a: Any) -> User:
    user = User.objects.create_user("erin", email="erin@a.example", password="erin-password-123")
    membership_set(organization=org_a, user=user, role=Membership.Role.ADMIN)
    return user


def _new_key_secret(response: Any) -> str | None:
    found = re.search(r'<code id="new-key">(sk-ptg-[^<]+)</code>', response.content.decode())
    return found.group(1) if found else None


# ------------------------------------------------------------------ the reported escalation


def test_a_member_cannot_mint_a_full_access_key_in_the_portal(dave: User, org_a: Any) -> None:
    web = _web(dave)
    response = web.post("/api-keys/", {"name": "sneaky", "scopes": ["admin"]})
    assert _new_key_secret(response) is None
    assert not ApiKey.objects.filter(name="sneaky").exists()
    for wider in (["billing"], ["jobs", "billing"]):
        web.post("/api-keys/", {"name": "wider", "scopes": wider})
        assert not ApiKey.objects.filter(name="wider").exists(), wider
    # What a member may do, they may give a key: jobs (the default) or read.
    assert _new_key_secret(web.post("/api-keys/", {"name": "mine"})) is not None
    assert ApiKey.objects.get(name="mine").scopes == ["jobs"]


def test_a_member_s_key_cannot_revoke_the_owner_s_keys_or_mint_keys(
    dave: User, alice: User, org_a: Any, key_a: str
) -> None:
    secret = _new_key_secret(_web(dave).post("/api-keys/", {"name": "mine"}))
    assert secret is not None
    member_key = _api(secret)
    owner_key = ApiKey.objects.get(name="alice-key")
    refused = member_key.post(f"/v1/api_keys/key_{owner_key.pk}/revoke")
    assert refused.status_code == 403, refused.content
    assert refused.json()["error"]["type"] == "permission_error"
    assert "'admin' scope" in refused.json()["error"]["message"]
    owner_key.refresh_from_db()
    assert owner_key.revoked_at is None
    assert _api(key_a).get("/v1/files").status_code == 200  # the owner's key still works
    assert member_key.post("/v1/api_keys", {"name": "x"}, format="json").status_code == 403
    assert member_key.get("/v1/api_keys").status_code == 403
    assert ApiKey.objects.count() == 2


def test_the_owner_and_admins_mint_any_scope(alice: User, erin: User, org_a: Any) -> None:
    for user, name in ((alice, "owner-admin-key"), (erin, "admin-admin-key")):
        assert _new_key_secret(_web(user).post("/api-keys/", {"name": name, "scopes": ["admin"]}))
        assert ApiKey.objects.get(name=name).scopes == ["admin"]


def test_only_owners_and_admins_revoke_keys_in_the_portal(
    dave: User, org_a: Any, key_a: str
) -> None:
    owner_key = ApiKey.objects.get(name="alice-key")
    _web(dave).post(f"/api-keys/{owner_key.pk}/revoke/")
    owner_key.refresh_from_db()
    assert owner_key.revoked_at is None


# ------------------------------------------------------------------ scopes over the API


def test_each_scope_allows_its_writes_and_no_others(org_a: Any, alice: User) -> None:
    read = _api(api_key_create(organization=org_a, name="r", scopes=["read"]).secret)
    jobs = _api(api_key_create(organization=org_a, name="j", scopes=["jobs"]).secret)
    billing = _api(api_key_create(organization=org_a, name="b", scopes=["billing"]).secret)
    for client in (read, jobs, billing):
        assert client.get("/v1/files").status_code == 200
        assert client.get("/v1/bookings").status_code == 200
        assert client.get("/v1/webhook_endpoints").status_code == 200
        assert client.post("/v1/webhook_endpoints", {}, format="json").status_code == 403
        assert client.put("/v1/residency_policy", {}, format="json").status_code == 403
        assert client.get("/v1/api_keys").status_code == 403
    # jobs: files and fine-tuning, not bookings; billing: bookings, not files or jobs.
    assert jobs.post("/v1/files", {}, format="multipart").status_code == 400  # past the scope
    assert jobs.post("/v1/bookings", {}, format="json").status_code == 403
    assert billing.post("/v1/bookings", {}, format="json").status_code == 400  # past the scope
    assert billing.post("/v1/files", {}, format="multipart").status_code == 403
    assert billing.post("/v1/fine_tuning/jobs", {}, format="json").status_code == 403
    assert read.post("/v1/files", {}, format="multipart").status_code == 403
    # Quotes and estimates read, whatever their method.
    assert read.post("/v1/bookings/quote", {}, format="json").status_code == 400


def test_an_admin_key_mints_narrower_keys_and_a_key_never_mints_wider(org_a: Any) -> None:
    admin = _api(api_key_create(organization=org_a, name="a", scopes=["admin"]).secret)
    made = admin.post("/v1/api_keys", {"name": "ci", "scopes": ["jobs"]}, format="json")
    assert made.status_code == 200, made.content
    assert made.json()["scopes"] == ["jobs"] and made.json()["read_only"] is False
    assert admin.post("/v1/api_keys", {"name": "x"}, format="json").json()["scopes"] == ["admin"]
    unknown = admin.post("/v1/api_keys", {"name": "x", "scopes": ["root"]}, format="json")
    assert unknown.status_code == 400 and unknown.json()["error"]["param"] == "scopes"
    limited = api_key_create(
        organization=org_a, name="keys-only", scopes=["admin"], resources=["api_keys"]
    )
    wider = _api(limited.secret).post(
        "/v1/api_keys", {"name": "x", "resources": ["files"]}, format="json"
    )
    assert wider.status_code == 403 and wider.json()["error"]["param"] == "resources"


def test_the_service_refuses_a_key_wider_than_its_minter(org_a: Any) -> None:
    from marketplace.errors import Forbidden

    with pytest.raises(Forbidden) as refused:
        api_key_create(organization=org_a, name="x", scopes=["billing"], allowed_scopes=["jobs"])
    assert refused.value.param == "scopes" and "billing" in refused.value.message
    assert not ApiKey.objects.filter(name="x").exists()


def _route_names(patterns: list[Any]) -> set[str]:
    names: set[str] = set()
    for pattern in patterns:
        if isinstance(pattern, URLResolver):
            names |= _route_names(pattern.url_patterns)
        elif isinstance(pattern, URLPattern) and pattern.name:
            names.add(pattern.name)
    return names


def test_every_v1_route_is_in_the_one_scope_table() -> None:
    public = {"openapi", "docs", "redoc"}
    routes = _route_names(api_urls.urlpatterns) - public
    assert routes == set(ROUTE_RIGHTS), (
        f"missing from ROUTE_RIGHTS: {sorted(routes - set(ROUTE_RIGHTS))}; "
        f"stale: {sorted(set(ROUTE_RIGHTS) - routes)}"
    )


def test_a_route_missing_from_the_table_is_refused(client_a: APIClient, monkeypatch: Any) -> None:
    monkeypatch.delitem(ROUTE_RIGHTS, "files")
    assert client_a.get("/v1/files").status_code == 403


def test_the_schema_states_the_scope_and_the_413(client_a: APIClient) -> None:
    schema = Client().get("/v1/openapi.json").json()
    upload = schema["paths"]["/v1/files"]["post"]
    assert upload["x-partage-scope"] == "jobs" and "'jobs'" in upload["description"]
    assert "413" in upload["responses"]
    revoke = schema["paths"]["/v1/api_keys/{key_id}/revoke"]["post"]
    assert revoke["x-partage-scope"] == "admin"
    key_fields = schema["components"]["schemas"]["ApiKeyObject"]["properties"]
    assert "scopes" in key_fields


@pytest.mark.django_db(transaction=True)
def test_the_migration_gives_existing_keys_today_s_rights(org_a: Any) -> None:
    from django.db.migrations.executor import MigrationExecutor

    executor = MigrationExecutor(connection)
    executor.migrate([("accounts", "0001_initial")])
    old = executor.loader.project_state([("accounts", "0001_initial")]).apps
    OldKey = old.get_model("accounts", "ApiKey")
    OldKey.objects.create(
        organization_id=org_a.pk, name="writer", prefix="p1", hashed_secret="h1", read_only=False
    )
    OldKey.objects.create(
        organization_id=org_a.pk, name="reader", prefix="p2", hashed_secret="h2", read_only=True
    )
    executor = MigrationExecutor(connection)
    executor.loader.build_graph()
    executor.migrate(executor.loader.graph.leaf_nodes())
    assert ApiKey.objects.get(name="writer").scopes == ["admin"]
    reader = ApiKey.objects.get(name="reader")
    assert reader.scopes == ["read"] and reader.read_only


# ------------------------------------------------------------------ invitations


def test_an_admin_invitation_makes_one_admin_not_two(
    alice: User, org_a: Any, bob: User, dave: User
) -> None:
    token = invitation_create(organization=org_a, role="admin", created_by=alice).token
    assert _web(bob).post(f"/join/{token}/").status_code == 302
    second = _web(dave).post(f"/join/{token}/")
    assert second.status_code == 400 and "already been used" in second.content.decode()
    assert Membership.objects.get(organization=org_a, user=bob).role == "admin"
    assert Membership.objects.get(organization=org_a, user=dave).role == "member"
    assert Membership.objects.filter(organization=org_a, role="admin").count() == 1


def test_a_revoked_invitation_no_longer_works(alice: User, org_a: Any, bob: User) -> None:
    issued = invitation_create(organization=org_a, role="member", created_by=alice)
    _web(alice).post(f"/team/invitations/{issued.invitation.pk}/revoke/")
    refused = _web(bob).post(f"/join/{issued.token}/")
    assert refused.status_code == 400 and "revoked" in refused.content.decode()
    assert not Membership.objects.filter(organization=org_a, user=bob).exists()


def test_a_member_cannot_revoke_or_create_invitations(alice: User, dave: User, org_a: Any) -> None:
    issued = invitation_create(organization=org_a, role="member", created_by=alice)
    _web(dave).post(f"/team/invitations/{issued.invitation.pk}/revoke/")
    issued.invitation.refresh_from_db()
    assert issued.invitation.revoked_at is None
    _web(dave).post("/team/", {"role": "admin"})
    assert Invitation.objects.count() == 1


def test_an_expired_invitation_no_longer_works(alice: User, org_a: Any, bob: User) -> None:
    issued = invitation_create(organization=org_a, role="member", created_by=alice)
    Invitation.objects.filter(pk=issued.invitation.pk).update(
        expires_at=timezone.now() - timedelta(seconds=1)
    )
    refused = _web(bob).post(f"/join/{issued.token}/")
    assert refused.status_code == 400 and "expired" in refused.content.decode()
    assert not Membership.objects.filter(organization=org_a, user=bob).exists()


def test_the_link_holds_no_usable_secret_in_the_database(alice: User, org_a: Any) -> None:
    issued = invitation_create(organization=org_a, role="member", created_by=alice)
    stored = Invitation.objects.get(pk=issued.invitation.pk)
    assert issued.token not in stored.token_hash


@pytest.mark.pg
@pytest.mark.django_db(transaction=True)
def test_racing_on_one_invitation_makes_one_member(alice: User, org_a: Any) -> None:
    token = invitation_create(organization=org_a, role="admin", created_by=alice).token
    racers = [User.objects.create_user(f"racer{i}", email=f"racer{i}@x.example") for i in range(8)]
    outcomes: list[str] = []
    start = threading.Barrier(len(racers))

    def accept(user: User) -> None:
        try:
            start.wait(timeout=30)
            invitation_accept(token=token, user=user)
            outcomes.append("joined")
        except InvalidInput:
            outcomes.append("refused")
        finally:
            close_old_connections()
            connection.close()

    threads = [threading.Thread(target=accept, args=(u,)) for u in racers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert sorted(outcomes) == ["joined"] + ["refused"] * 7
    assert Membership.objects.filter(organization=org_a, role="admin").count() == 1


# ------------------------------------------------------------------ the audit


def test_every_role_change_is_audited_and_the_owner_reads_it(
    alice: User, org_a: Any, bob: User, dave: User, erin: User
) -> None:
    token = invitation_create(organization=org_a, role="admin", created_by=alice).token
    _web(bob).post(f"/join/{token}/")
    joined = RoleChange.objects.get(organization=org_a, username="bob")
    assert (joined.old_role, joined.new_role, joined.via) == ("", "admin", "invitation")
    assert joined.changed_by == alice and joined.created_at is not None
    membership_set(organization=org_a, user=dave, role="admin", changed_by=alice, via="portal")
    promoted = RoleChange.objects.filter(organization=org_a, username="dave").first()
    assert promoted is not None
    assert (promoted.old_role, promoted.new_role, promoted.changed_by) == ("member", "admin", alice)
    owner_view = _web(alice).get("/team/").content.decode()
    assert 'id="role-changes"' in owner_view and "invitation" in owner_view
    for not_owner in (erin, dave):  # admins and members do not read the audit
        assert 'id="role-changes"' not in _web(not_owner).get("/team/").content.decode()


def test_setting_the_same_role_again_is_not_a_change(alice: User, org_a: Any) -> None:
    before = RoleChange.objects.count()
    membership_set(organization=org_a, user=alice, role="owner")
    assert RoleChange.objects.count() == before


def test_a_role_changed_in_the_django_admin_is_audited(
    carol: User, alice: User, dave: User, org_a: Any
) -> None:
    from django.contrib.auth.models import Permission

    carol.user_permissions.set(Permission.objects.filter(content_type__app_label="accounts"))
    staff = _web(carol)
    membership = Membership.objects.get(organization=org_a, user=dave)
    owner = Membership.objects.get(organization=org_a, user=alice)
    form = {
        "slug": org_a.slug,
        "name": org_a.name,
        "kind": org_a.kind,
        "country": org_a.country,
        "legal_name": "",
        "vat_id": "",
        "memberships-TOTAL_FORMS": "2",
        "memberships-INITIAL_FORMS": "2",
        "memberships-MIN_NUM_FORMS": "0",
        "memberships-MAX_NUM_FORMS": "1000",
        "memberships-0-id": str(owner.pk),
        "memberships-0-organization": str(org_a.pk),
        "memberships-0-user": str(alice.pk),
        "memberships-0-role": "owner",
        "memberships-0-created_at_0": "2026-01-01",
        "memberships-0-created_at_1": "00:00:00",
        "memberships-1-id": str(membership.pk),
        "memberships-1-organization": str(org_a.pk),
        "memberships-1-user": str(dave.pk),
        "memberships-1-role": "admin",
        "memberships-1-created_at_0": "2026-01-01",
        "memberships-1-created_at_1": "00:00:00",
    }
    response = staff.post(f"/admin/accounts/organization/{org_a.pk}/change/", form)
    assert response.status_code == 302, response.content.decode()[:3000]
    change = RoleChange.objects.filter(organization=org_a, username="dave").first()
    assert change is not None
    assert (change.old_role, change.new_role, change.changed_by, change.via) == (
        "member",
        "admin",
        carol,
        "django_admin",
    )
    form["memberships-1-DELETE"] = "on"
    assert staff.post(f"/admin/accounts/organization/{org_a.pk}/change/", form).status_code == 302
    removed = RoleChange.objects.filter(organization=org_a, username="dave").first()
    assert removed is not None and (removed.old_role, removed.new_role) == ("admin", "")
    assert not Membership.objects.filter(organization=org_a, user=dave).exists()
