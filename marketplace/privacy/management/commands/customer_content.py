"""`manage.py customer_content <job-or-file-id> --staff <username> --reason "…"`: support access
to a customer's job (its events and logs, printed) or file (its bytes, to --output or stdout).

The access is recorded (who, what, when, why) before anything is shown; the organization reads
it in the portal and at GET /v1/organization/staff_access.
"""

from __future__ import annotations

import shutil
import sys
from typing import Any

from django.core.management.base import BaseCommand, CommandError

from marketplace.accounts.models import User
from marketplace.errors import PartageError
from marketplace.finetuning import selectors as ft
from marketplace.finetuning.models import FineTuningJob
from marketplace.privacy.models import StaffAccess
from marketplace.privacy.services import staff_content_open


class Command(BaseCommand):
    help = "Show a customer's job or file for support work; the access is recorded with its reason."

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("subject", help="a job id (ftjob-…) or a file id (file-…)")
        parser.add_argument("--staff", required=True, help="your staff username")
        parser.add_argument("--reason", required=True, help="why: a ticket number, an incident")
        parser.add_argument("--output", help="write a file's bytes here instead of stdout")

    def handle(self, *args: Any, **options: Any) -> None:
        staff = User.objects.filter(username=options["staff"], is_staff=True).first()
        if staff is None:
            raise CommandError(f"No staff user {options['staff']!r}.")
        try:
            subject = staff_content_open(
                staff=staff,
                subject_id=options["subject"],
                reason=options["reason"],
                via=StaffAccess.Via.COMMAND,
            )
        except PartageError as e:
            raise CommandError(e.message) from e
        if isinstance(subject, FineTuningJob):
            for event in ft.events_for_job(subject).order_by("seq"):
                self.stdout.write(
                    f"{event.seq}\t{event.created_at:%Y-%m-%dT%H:%M:%S}\t{event.message}"
                )
            for attempt in ft.attempts_for_job(subject):
                self.stdout.write(
                    f"--- attempt {attempt.number} ({attempt.status})\n{attempt.logs}"
                )
            return
        with subject.content.open("rb") as source:
            if options["output"]:
                with open(options["output"], "wb") as target:
                    shutil.copyfileobj(source, target)
            else:
                self.stdout.flush()
                shutil.copyfileobj(source, sys.stdout.buffer)
