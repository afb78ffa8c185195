"""THE operation test of money out: a real Celery worker and beat, under a clock moved across a
period boundary (libfaketime), close the period with no call other than the scheduler's.

The test process writes a month of activity (a top-up, jobs, usage, charges) and nothing else.
The worker and beat run in their own processes on the test's PostgreSQL database and a private
redis-server, with their clock shifted (faketime) to 30 seconds before the next month begins.
Beat ticks every second; the first ticks find the period still open (it has not ended, then is
in its grace), and the first tick after the grace closes it: the invoices and the statement
appear, numbered without gaps, e-mailed with their PDF (file-based e-mail backend), and equal
to the ledger to the cent.
"""

from __future__ import annotations

import email
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from email.message import Message
from pathlib import Path
from typing import Any

import pytest
import time_machine
from django.db import connection

from marketplace.billing import services as billing
from marketplace.billing.models import (
    Account,
    BillingPeriod,
    BookingCharge,
    Charge,
    Invoice,
    LedgerLine,
    PayoutBatch,
    ProviderStatement,
)
from marketplace.capacity import services as capacity
from tests.billing.conftest import job_new, run_job, topup
from tests.capacity import factories
from tests.conftest import REPO, _worker_env, wait_for

pytestmark = [pytest.mark.pg, pytest.mark.django_db(transaction=True), pytest.mark.timeout(180)]

ACTIVITY = datetime(2026, 12, 14, 10, 0, tzinfo=UTC)
BOUNDARY = datetime(2027, 1, 1, tzinfo=UTC)  # the end of December, the period of the activity
GRACE_SECONDS = 5
LEAD_SECONDS = 15  # the processes' clock starts this long before the boundary
TICK = re.compile(
    r"^\[(?P<at>[0-9-]+ [0-9:,]+): INFO/MainProcess\] Task partage\.billing_periods_close"
    r"\[[^\]]+\] succeeded in [0-9.e-]+s: (?P<result>.*)$",
    re.MULTILINE,
)


@pytest.fixture(autouse=True)
def _needs_postgres_and_faketime() -> None:
    if connection.vendor != "postgresql":
        pytest.skip("the worker and beat share the database: run with DATABASE_URL=postgres://…")
    if shutil.which("faketime") is None:
        pytest.fail("libfaketime is missing: `make faketime` (Debian package faketime).")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[str]:
    import redis

    port = _free_port()
    process = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
         "--appendonly", "no", "--dir", str(tmp_path)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
    )  # fmt: skip
    url = f"redis://127.0.0.1:{port}/0"
    wait_for(lambda: _pings(redis.Redis.from_url(url)), timeout=20, interval=0.1, what="redis")
    yield url
    process.kill()
    process.wait(timeout=10)


def _pings(client: Any) -> bool:
    try:
        return bool(client.ping())
    except Exception:
        return False


@pytest.fixture
def scheduler(
    private_redis: str, tmp_path: Path, settings: Any
) -> Iterator[tuple[Path, Path, Path]]:
    """Start `celery worker` and `celery beat` under faketime; returns (mail dir, logs)."""
    mail_dir = tmp_path / "mail"
    offset = int((BOUNDARY - timedelta(seconds=LEAD_SECONDS) - datetime.now(UTC)).total_seconds())
    env = _worker_env(
        {
            "PARTAGE_ENV": "test",
            "REDIS_URL": private_redis,
            "PARTAGE_DATA_DIR": str(tmp_path / "data"),
            "PARTAGE_MEDIA_ROOT": str(settings.MEDIA_ROOT),
            "DJANGO_SECRET_KEY": settings.SECRET_KEY,
            "PARTAGE_BILLING_PERIOD": "month",
            "PARTAGE_BILLING_GRACE_SECONDS": str(GRACE_SECONDS),
            "PARTAGE_BILLING_CLOSE_EVERY_SECONDS": "1",
            "PARTAGE_PAYOUT_HOLDBACK_PERCENT": "0",
            "DJANGO_EMAIL_BACKEND": "django.core.mail.backends.filebased.EmailBackend",
            "DJANGO_EMAIL_FILE_PATH": str(mail_dir),
            # Monotonic clocks are shifted too (libfaketime's default): Python's time.sleep
            # waits for an absolute monotonic deadline, which must be on the same clock.
        }
    )
    faked = ["faketime", "-f", f"{offset:+d}"]
    celery = [sys.executable, "-m", "celery", "-A", "workers.celery"]
    logs = (tmp_path / "worker.log", tmp_path / "beat.log")
    processes = []
    for argv, log in (
        (
            [*celery, "worker", "--pool", "solo", "--loglevel", "INFO", "--without-gossip",
             "--without-mingle", "--without-heartbeat"],
            logs[0],
        ),
        (
            [*celery, "beat", "--loglevel", "INFO", "--max-interval", "1",
             "--schedule", str(tmp_path / "beat-schedule")],
            logs[1],
        ),
    ):  # fmt: skip
        with open(log, "ab") as out:
            processes.append(
                subprocess.Popen(
                    [*faked, *argv],
                    cwd=REPO,
                    env=env,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            )
    yield mail_dir, logs[0], logs[1]
    for process in processes:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
    for process in processes:
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)


def _mails(mail_dir: Path) -> list[Message]:
    separator = b"\n" + b"-" * 79 + b"\n"
    messages = []
    for path in sorted(mail_dir.glob("*.log")) if mail_dir.exists() else []:
        for chunk in path.read_bytes().split(separator):
            if chunk.strip():
                messages.append(email.message_from_bytes(chunk))
    return messages


def _ledger(account: str, org: Any) -> Decimal:
    amounts = LedgerLine.objects.filter(account=account, organization=org).values_list(
        "amount", flat=True
    )
    return sum(amounts, Decimal("0.00"))


def test_worker_and_beat_close_the_month_across_the_boundary(
    org_a: Any, org_b: Any, alice: Any, bob: Any, scheduler: Any, settings: Any
) -> None:
    mail_dir, worker_log, beat_log = scheduler
    started = time.monotonic()
    # December's activity, written by the test process (its own clock, frozen in December).
    with time_machine.travel(ACTIVITY, tick=False) as clock:
        provider = factories.provider("gpu-provider")
        pool = factories.pool(provider, price="2.50", gpus=16)
        capacity.provider_payout_details_set(
            organization=provider, name="GPU Provider SAS", iban="FR1420041010050500013M02606"
        )
        topup(org_a, "100.00")
        topup(org_b, "100.00", ref="t2")
        billing.billing_contact_set(organization=org_b, email="accounts@b.example")
        run_job(job_new(org_a, gpus=2), pool, clock, 3600)  # €5.00 + €1.00 VAT
        run_job(job_new(org_a), pool, clock, 1234)  # €0.857 → €0.86 + VAT
        run_job(job_new(org_b), pool, clock, 7200)  # org B (DE, no VAT id): €5.00 + VAT
    assert not Invoice.objects.exists()

    # Nothing else: the scheduler's ticks before the boundary (and in the grace) close
    # nothing, the first one after it closes December.
    def closed() -> BillingPeriod | None:
        return BillingPeriod.objects.first()

    period = wait_for(closed, timeout=120, interval=0.5, what="beat to close December")
    assert (period.start, period.end) == (datetime(2026, 12, 1, tzinfo=UTC), BOUNDARY)
    assert period.closed_by == "scheduler" and not period.early
    assert period.closed_at >= BOUNDARY + timedelta(seconds=GRACE_SECONDS)
    # The worker ran the task on each tick: before the boundary it closed nothing; the first
    # tick after the grace closed December (the task returns the periods it closed).
    assert "Sending due task partage-billing-periods-close" in beat_log.read_text()

    def ticks() -> list[tuple[str, str]]:
        return [(m["at"], m["result"]) for m in TICK.finditer(worker_log.read_text())]

    # The task's result is logged just after its transaction commits: wait for that line.
    wait_for(lambda: any(r != "[]" for _, r in ticks()), timeout=30, what="the closing tick")
    seen = ticks()
    assert any(at < "2027-01-01" and result == "[]" for at, result in seen), seen
    closing = [(at, result) for at, result in seen if result != "[]"]
    assert len(closing) == 1 and closing[0][0] >= "2027-01-01 00:00:05", seen
    assert "2026-12-01" in closing[0][1]
    invoices = list(Invoice.objects.order_by("number"))
    assert [(i.organization_id, i.status) for i in invoices] == [
        (org_a.pk, "finalized"),
        (org_b.pk, "finalized"),
    ]
    # One series, no gaps, in the order they were finalized.
    assert [i.number for i in invoices] == ["PARTAGE-2026-000001", "PARTAGE-2026-000002"]
    # Each invoice is what the ledger charged the organization, to the cent.
    for invoice in invoices:
        charged = sum(
            (c.net + c.vat for c in Charge.objects.filter(organization=invoice.organization)),
            Decimal("0.00"),
        ) + sum(
            (
                c.net + c.vat
                for c in BookingCharge.objects.filter(organization=invoice.organization)
            ),
            Decimal("0.00"),
        )
        spent = Decimal("100.00") - billing.balance_available(organization=invoice.organization)
        assert invoice.total == charged == spent
        assert invoice.subtotal == sum((line.amount for line in invoice.lines.all()), Decimal(0))
    assert invoices[0].subtotal == Decimal("5.86") and invoices[0].total == Decimal("7.03")
    assert invoices[1].subtotal == Decimal("5.00")

    statement = ProviderStatement.objects.get(provider=provider)
    assert statement.status == "finalized"
    assert statement.gross == sum((i.subtotal for i in invoices), Decimal(0)) == Decimal("10.86")
    assert statement.gpu_seconds == Decimal("15634.000")
    # The provider's payable in the ledger is exactly the statement's (nothing held back).
    assert -_ledger(Account.PROVIDER_PAYABLE, provider) == statement.payable == statement.due

    # Its payout is batched into the SEPA file, for exactly the payable.
    batch = PayoutBatch.objects.get()
    assert batch.total == statement.due and batch.payouts.count() == 1

    # Both invoices are e-mailed with their PDF: org A's to its owner alice (no billing
    # contact), org B's to its billing contact (bob is only a member).
    mails = wait_for(
        lambda: (found := _mails(mail_dir)) and len(found) >= 2 and found,
        timeout=60,
        interval=0.5,
        what="the invoice e-mails",
    )
    assert len(mails) == 2
    by_number = {m["Subject"].split()[1]: m for m in mails}
    first = by_number["PARTAGE-2026-000001"]
    assert first["To"] == alice.email
    [pdf] = [part for part in first.walk() if part.get_content_type() == "application/pdf"]
    assert pdf.get_filename() == "PARTAGE-2026-000001.pdf"
    assert pdf.get_payload(decode=True).startswith(b"%PDF")
    assert by_number["PARTAGE-2026-000002"]["To"] == "accounts@b.example"
    assert time.monotonic() - started < 90
