"""`Authorization: Bearer <key>` authentication for /v1."""

from __future__ import annotations

from typing import Any

from rest_framework import authentication, exceptions
from rest_framework.request import Request

from marketplace.accounts.models import ApiKey, Organization
from marketplace.accounts.selectors import api_key_by_secret
from marketplace.accounts.services import api_key_touch


class ApiKeyPrincipal:
    """The authenticated caller: an organization acting through one API key."""

    is_authenticated = True
    is_anonymous = False

    def __init__(self, key: ApiKey) -> None:
        self.key = key
        self.organization = key.organization

    @property
    def pk(self) -> int:
        return self.key.pk


class ApiKeyAuthentication(authentication.BaseAuthentication):
    keyword = "Bearer"

    def authenticate(self, request: Request) -> tuple[Any, ApiKey] | None:
        header = authentication.get_authorization_header(request).decode("latin-1")
        if not header:
            raise exceptions.NotAuthenticated(
                "Missing API key: send 'Authorization: Bearer <your Partage key>'."
            )
        scheme, _, secret = header.partition(" ")
        if scheme != self.keyword or not secret.strip():
            raise exceptions.AuthenticationFailed(
                "Malformed Authorization header: use 'Authorization: Bearer <key>'."
            )
        key = api_key_by_secret(secret.strip())
        if key is None:
            raise exceptions.AuthenticationFailed("Invalid or revoked API key.")
        api_key_touch(key=key)
        return ApiKeyPrincipal(key), key

    def authenticate_header(self, request: Request) -> str:
        return self.keyword


def principal_of(request: Request) -> ApiKeyPrincipal:
    """The API-key caller of a /v1 request (views behind ApiKeyAuthentication only)."""
    principal: object = request.user
    if not isinstance(principal, ApiKeyPrincipal):
        raise exceptions.NotAuthenticated(
            "Missing API key: send 'Authorization: Bearer <your Partage key>'."
        )
    return principal


def organization_of(request: Request) -> Organization:
    return principal_of(request).organization


def api_key_of(request: Request) -> ApiKey:
    return principal_of(request).key
