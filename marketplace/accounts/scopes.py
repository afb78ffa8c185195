"""What an API key may do, as Stripe's restricted keys: a key carries scopes, and each scope
grants a set of rights. Every key can read (except the admin-only reads); `jobs` adds writing
files and fine-tuning jobs, `billing` adds bookings and money, `admin` adds everything else
(keys, webhooks, organization settings, pools).

A person's role bounds the keys they may mint: nobody mints a key that does more than they may.
The API maps each route to the right it needs in one table (marketplace.api.permissions).
"""

from __future__ import annotations

from collections.abc import Iterable

READ = "read"
JOBS = "jobs"
BILLING = "billing"
ADMIN = "admin"

SCOPES = (READ, JOBS, BILLING, ADMIN)
DESCRIPTIONS = {
    READ: "read-only: list and retrieve",
    JOBS: "read, plus upload files and create, pause, resume and cancel fine-tuning jobs",
    BILLING: "read, plus book GPUs and manage billing",
    ADMIN: "full access: API keys, webhooks, organization settings and pools too",
}
SCOPES_HELP = "What the key may do: " + "; ".join(
    f"'{scope}': {text}" for scope, text in DESCRIPTIONS.items()
)
GRANTS: dict[str, frozenset[str]] = {
    READ: frozenset({READ}),
    JOBS: frozenset({READ, JOBS}),
    BILLING: frozenset({READ, BILLING}),
    ADMIN: frozenset(SCOPES),
}
# What each role may do, hence the widest key each may mint (owner, admin, member).
ROLE_SCOPES: dict[str, tuple[str, ...]] = {
    "owner": (ADMIN,),
    "admin": (ADMIN,),
    "member": (JOBS,),
}


def granted(scopes: Iterable[str]) -> frozenset[str]:
    """Every right the scopes give together."""
    rights: set[str] = set()
    for scope in scopes:
        rights |= GRANTS.get(scope, frozenset())
    return frozenset(rights)


def allows(scopes: Iterable[str], right: str) -> bool:
    return right in granted(scopes)


def unknown(scopes: Iterable[str]) -> list[str]:
    return sorted(set(scopes) - set(SCOPES))


def beyond(scopes: Iterable[str], allowed: Iterable[str]) -> list[str]:
    """The rights `scopes` give that `allowed` does not, in SCOPES order."""
    extra = granted(scopes) - granted(allowed)
    return [s for s in SCOPES if s in extra]
