"""`manage.py create_api_key <org-slug>`: creates the organization if missing, prints the key last."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError

from marketplace.accounts.scopes import SCOPES
from marketplace.accounts.services import api_key_create, organization_get_or_create
from marketplace.errors import PartageError


class Command(BaseCommand):
    help = "Create an API key for an organization (created if missing). The key is printed alone on the last line."

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("org_slug")
        parser.add_argument("--name", default="cli", help="A name for the key (default: cli)")
        parser.add_argument("--read-only", action="store_true", help="Same as --scope read")
        parser.add_argument(
            "--scope",
            action="append",
            choices=SCOPES,
            help="What the key may do (repeat for several; default: admin, full access)",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            org, created = organization_get_or_create(slug=options["org_slug"])
            issued = api_key_create(
                organization=org,
                name=options["name"],
                read_only=options["read_only"],
                scopes=options["scope"],
            )
        except PartageError as e:
            raise CommandError(e.message) from e
        if created:
            self.stderr.write(f"Created organization {org.slug} ({org.public_id}).")
        self.stderr.write(
            f"API key {issued.api_key.prefix}… for {org.slug}; it is shown only once:"
        )
        self.stdout.write(issued.secret)
