"""Idempotent demo data for the embedded default: one startup, one owner, one API key, and one
member of staff (for the cockpit: approvals, quotas, prices), so that nothing needs a shell."""

from __future__ import annotations

import dataclasses
import secrets
from pathlib import Path

from django.conf import settings

from marketplace.accounts.models import ApiKey, Membership, Organization, User
from marketplace.accounts.services import api_key_create, membership_set, organization_get_or_create

DEMO_USERNAME = "demo"
STAFF_USERNAME = "staff"


@dataclasses.dataclass(frozen=True)
class Demo:
    username: str
    password: str
    api_key: str
    organization: Organization


def demo_seed() -> Demo:
    """Create (or reuse) the demo organization, user and key. Secrets are kept in DATA_DIR only."""
    secrets_dir = settings.DATA_DIR / "demo"
    secrets_dir.mkdir(parents=True, exist_ok=True)
    org, _ = organization_get_or_create(slug="demo-startup", name="Demo Startup")
    password_file = secrets_dir / "password"
    user = User.objects.filter(username=DEMO_USERNAME).first()
    if user is None or not password_file.exists():
        password = secrets.token_urlsafe(12)
        if user is None:
            user = User.objects.create_user(
                DEMO_USERNAME, email="demo@partage.local", password=password
            )
        else:
            user.set_password(password)
            user.save(update_fields=["password"])
        _write_secret(password_file, password)
    membership_set(organization=org, user=user, role=Membership.Role.OWNER)
    key_file = secrets_dir / "api_key"
    key = key_file.read_text().strip() if key_file.exists() else ""
    if (
        not key
        or not ApiKey.objects.filter(
            hashed_secret=ApiKey.hash_secret(key), revoked_at__isnull=True, organization=org
        ).exists()
    ):
        key = api_key_create(organization=org, name="demo", created_by=user).secret
        _write_secret(key_file, key)
    return Demo(
        username=DEMO_USERNAME,
        password=password_file.read_text().strip(),
        api_key=key,
        organization=org,
    )


def demo_staff_seed() -> tuple[User, str]:
    """The demo's member of staff (not a superuser: the cockpit needs no more) and its
    password, kept in DATA_DIR only."""
    password_file = settings.DATA_DIR / "demo" / "staff_password"
    password_file.parent.mkdir(parents=True, exist_ok=True)
    user = User.objects.filter(username=STAFF_USERNAME).first()
    if user is None or not password_file.exists():
        password = secrets.token_urlsafe(12)
        if user is None:
            user = User.objects.create_user(
                STAFF_USERNAME, email="staff@partage.local", password=password, is_staff=True
            )
        else:
            user.set_password(password)
            user.save(update_fields=["password"])
        _write_secret(password_file, password)
    return user, password_file.read_text().strip()


def _write_secret(path: Path, value: str) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(value)
    tmp.chmod(0o600)
    tmp.replace(path)
