"""Accounts in the portal: sign-up, organizations, invitation links, API keys, password reset."""

from __future__ import annotations

import re
from typing import Any

import pytest
from django.core import mail
from django.test import Client

from marketplace.accounts.models import ApiKey, Membership, User
from marketplace.portal.invites import invite_token

pytestmark = pytest.mark.django_db


def test_sign_up_then_create_an_organization() -> None:
    client = Client()
    response = client.post(
        "/signup/",
        {
            "username": "erin",
            "email": "Erin@Startup.example",
            "password1": "a-long-passphrase-42",
            "password2": "a-long-passphrase-42",
        },
    )
    assert response.status_code == 302 and response["Location"] == "/organization/"
    erin = User.objects.get(username="erin")
    assert erin.email == "erin@startup.example"
    # No organization yet: every org page sends erin to onboarding.
    assert client.get("/jobs/")["Location"] == "/organization/"
    response = client.post("/organization/", {"create": "1", "name": "Erin AI", "country": "fr"})
    assert response.status_code == 302
    membership = Membership.objects.get(user=erin)
    assert membership.role == "owner" and membership.organization.name == "Erin AI"
    assert membership.organization.country == "FR"
    assert client.get("/jobs/").status_code == 200


def test_sign_up_refuses_a_taken_email_and_weak_password(alice: Any) -> None:
    response = Client().post(
        "/signup/",
        {"username": "x", "email": "alice@a.example", "password1": "123", "password2": "123"},
    )
    body = response.content.decode()
    assert response.status_code == 200
    assert "An account already uses this email" in body
    assert "This password is too short" in body
    assert not User.objects.filter(username="x").exists()


def test_a_weak_password_is_reported_under_password_not_its_confirmation() -> None:
    response = Client().post(
        "/signup/",
        {"username": "x", "email": "x@x.example", "password1": "123", "password2": "123"},
    )
    form = response.context["form"]
    assert "This password is too short" in " ".join(form.errors.get("password1", []))
    assert "password2" not in form.errors


def test_a_taken_organization_name_is_explained(alice: Any, org_a: Any) -> None:
    client = Client()
    client.force_login(User.objects.create_user("frank", password="x-long-password-1"))
    response = client.post("/organization/", {"create": "1", "name": "Org A"})
    assert "is taken; pick another" in response.content.decode()


def test_invitation_link_adds_a_member(alice_web: Client, org_a: Any, bob: Any) -> None:
    response = alice_web.post("/team/", {"role": "member"})
    link = re.search(r'<code id="invite-link">([^<]+)</code>', response.content.decode())
    assert link, "the invitation link is shown"
    path = link.group(1).split("testserver", 1)[1]
    bob_web = Client()
    bob_web.force_login(bob)
    page = bob_web.get(path)
    assert "Join Org A" in page.content.decode()
    assert bob_web.post(path).status_code == 302
    assert Membership.objects.get(user=bob, organization=org_a).role == "member"
    # Bob now works in Org A.
    assert "Org A" in bob_web.get("/overview/").content.decode()


def test_a_member_cannot_create_invitations(org_a: Any, bob: Any) -> None:
    Membership.objects.create(user=bob, organization=org_a, role="member")
    client = Client()
    client.force_login(bob)
    client.post("/organization/switch/", {"org": org_a.public_id})
    response = client.post("/team/", {"role": "admin"})
    assert 'id="invite-link"' not in response.content.decode()
    assert "Ask an owner or admin" in response.content.decode()


def test_joining_never_downgrades_an_owner(alice_web: Client, alice: Any, org_a: Any) -> None:
    token = invite_token(organization=org_a, role="member")
    alice_web.post(f"/join/{token}/")
    assert Membership.objects.get(user=alice, organization=org_a).role == "owner"


def test_a_tampered_invitation_is_refused(bob_web: Client, org_a: Any, bob: Any) -> None:
    token = invite_token(organization=org_a, role="member")
    response = bob_web.post(f"/join/{token[:-2]}xx/")
    assert response.status_code == 400
    assert "not valid" in response.content.decode()
    assert not Membership.objects.filter(user=bob, organization=org_a).exists()


def test_api_key_secret_is_shown_once_and_works(alice_web: Client, org_a: Any) -> None:
    response = alice_web.post("/api-keys/", {"name": "ci-pipeline"})
    secret = re.search(r'<code id="new-key">(sk-ptg-[^<]+)</code>', response.content.decode())
    assert secret
    key = ApiKey.objects.get(organization=org_a, name="ci-pipeline")
    assert key.hashed_secret == ApiKey.hash_secret(secret.group(1))
    # The list shows only the prefix from now on.
    listing = alice_web.get("/api-keys/").content.decode()
    assert secret.group(1) not in listing and key.prefix in listing
    api = Client(HTTP_AUTHORIZATION=f"Bearer {secret.group(1)}")
    assert api.get("/v1/models").status_code == 200
    alice_web.post(f"/api-keys/{key.pk}/revoke/")
    assert api.get("/v1/models").status_code == 401


def test_a_nameless_key_is_explained(alice_web: Client) -> None:
    response = alice_web.post("/api-keys/", {"name": "   "})
    assert "This field is required" in response.content.decode() or "Give the key a name" in (
        response.content.decode()
    )
    assert not ApiKey.objects.exists()


def test_password_reset_by_email(alice: Any) -> None:
    client = Client()
    response = client.post("/password-reset/", {"email": "alice@a.example"})
    assert response.status_code == 302
    assert len(mail.outbox) == 1
    link = re.search(r"http://testserver(/password-reset/\S+/)", mail.outbox[0].body)
    assert link
    form_page = client.get(link.group(1), follow=True)
    assert "Choose a new password" in form_page.content.decode()
    response = client.post(
        form_page.redirect_chain[-1][0],
        {"new_password1": "brand-new-passphrase-7", "new_password2": "brand-new-passphrase-7"},
    )
    assert response.status_code == 302
    alice.refresh_from_db()
    assert alice.check_password("brand-new-passphrase-7")
