"""Refusals of new content. An app that must stop an organization from adding content (the
privacy app, while the organization's deletion is scheduled) registers a guard here at start-up;
the apps that create content (uploads, fine-tuning jobs, bookings) ask before they write, without
importing it. A guard raises a domain error saying what is refused, why and how to undo it."""

from __future__ import annotations

from collections.abc import Callable

from marketplace.accounts.models import Organization

# What is being added, in words a person reads in the error: "upload a file", "create a
# fine-tuning job", "book GPUs".
ContentGuard = Callable[[Organization, str], None]

_guards: dict[str, ContentGuard] = {}


def content_guard_register(name: str, guard: ContentGuard) -> None:
    _guards[name] = guard


def content_add_check(*, organization: Organization, action: str) -> None:
    """Raise if any guard refuses `action` for the organization; return otherwise."""
    for guard in _guards.values():
        guard(organization, action)
