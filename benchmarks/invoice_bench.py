"""Finalize one month of invoices: 1,000,000 usage records across 1,000 organizations.

Setup (not timed): a dedicated PostgreSQL database is created if missing, migrated and emptied;
organizations, providers, pools, jobs, attempts and usage records are bulk-loaded with COPY.
Timed: `invoices_finalize` for the month, which claims the records (by range: nothing is written
to them), aggregates them in the database and writes one invoice per organization with one line
per job stream.
Then the result is checked: one invoice per org, every record claimed, lines add up to totals.
Reference, run first on the same data: the per-stream aggregation done in Python instead (every
record read back and grouped), without any of the writes; the ratio is printed.

Usage:
  python benchmarks/invoice_bench.py \
      --database postgres://postgres@127.0.0.1:5432/partage_billing_bench \
      --orgs 1000 --records 1000000 --attempts-per-job 10

Not a test: it prints the figures and a line for docs/benchmarks.md. The database name must
contain "bench": the script empties it.
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import time
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from urllib.parse import urlsplit

REPO = Path(__file__).resolve().parent.parent
MONTH = (2026, 10)


def ensure_database(url: str) -> None:
    import psycopg

    parts = urlsplit(url)
    name = parts.path.lstrip("/")
    if "bench" not in name:
        sys.exit(
            f"Refusing to use database {name!r}: its name must contain 'bench' (it is emptied)."
        )
    admin = parts._replace(path="/postgres").geturl()
    with psycopg.connect(admin, autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [name]).fetchone()
        if not exists:
            conn.execute(f'CREATE DATABASE "{name}"')


def setup_django(url: str) -> None:
    os.environ["DATABASE_URL"] = url
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "marketplace.settings")
    os.environ.setdefault("PARTAGE_DATA_DIR", str(REPO / "var" / "bench"))
    sys.path.insert(0, str(REPO))
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)


def empty() -> None:
    from django.db import connection

    tables = [
        "billing_invoiceline",
        "billing_usagerecord",
        "billing_invoice",
        "billing_invoicenumbersequence",
        "billing_charge",
        "billing_ledgerline",
        "billing_journalentry",
        "billing_jobpricing",
        "billing_billingaccount",
        "billing_providerstatement",
        "finetuning_jobattempt",
        "finetuning_jobevent",
        "finetuning_checkpoint",
        "finetuning_finetuningjob",
        "finetuning_file",
    ]
    with connection.cursor() as cursor:
        cursor.execute(f"TRUNCATE {', '.join(tables)} RESTART IDENTITY CASCADE")
        cursor.execute(
            "DELETE FROM capacity_pool; DELETE FROM capacity_gpuflavor; "
            "DELETE FROM accounts_organization WHERE slug LIKE 'bench-%%'"
        )


def load(orgs: int, records: int, attempts_per_job: int, seed: int) -> dict[str, int]:
    from django.db import connection

    from marketplace.accounts.models import Organization
    from marketplace.capacity.models import GpuFlavor, Pool

    countries = ["FR", "DE", "NL", "US", "FR", "FR"]
    customers = Organization.objects.bulk_create(
        Organization(
            public_id=f"org-bench-{i}",
            slug=f"bench-org-{i}",
            name=f"Bench org {i}",
            country=countries[i % len(countries)],
            vat_id=f"DE{i:09d}" if countries[i % len(countries)] == "DE" else "",
        )
        for i in range(orgs)
    )
    providers = Organization.objects.bulk_create(
        Organization(
            public_id=f"org-bench-p{i}",
            slug=f"bench-provider-{i}",
            name=f"Provider {i}",
            kind="provider",
            country="FR",
        )
        for i in range(5)
    )
    flavor = GpuFlavor.objects.create(slug="h100-80g", model_name="NVIDIA H100", memory_gb=80)
    pools = Pool.objects.bulk_create(
        Pool(
            public_id=f"pool-bench-{i}",
            provider=providers[i % 5],
            name=f"pool {i}",
            flavor=flavor,
            gpu_count=64,
            region="eu-west",
            country="FR",
            status="active",
            price_per_gpu_hour=Decimal("1.2345") + Decimal(i) * Decimal("0.3791"),
        )
        for i in range(10)
    )
    jobs = records // attempts_per_job
    start = datetime(*MONTH, 1, tzinfo=UTC)
    with connection.cursor() as cursor:
        raw = cursor.cursor
        with raw.copy(
            "COPY finetuning_file (id, organization_id, filename, purpose, bytes, sha256, "
            "content, status, data_format, line_count, created_at) FROM STDIN"
        ) as copy:
            for org in customers:
                copy.write_row(
                    [
                        f"file-bench-{org.pk}",
                        org.pk,
                        "t.jsonl",
                        "fine-tune",
                        10,
                        "0" * 64,
                        "files/x.jsonl",
                        "processed",
                        "chat",
                        1,
                        start,
                    ]
                )
        job_rows: list[tuple[str, int, int, str]] = []
        with raw.copy(
            "COPY finetuning_finetuningjob (id, organization_id, model, training_file_id, "
            "hyperparameters, lora, seed, suffix, metadata, gpu_flavor, gpu_count, priority, "
            "residency, status, failure_class, pending_reason, placement_reason, attempt_count, "
            "progress, fine_tuned_model, event_seq, created_at, updated_at) FROM STDIN"
        ) as copy:
            for n in range(jobs):
                org = customers[n % orgs]
                failed = n % 100 == 0  # 1 % fail through a platform fault: waived
                gpus = 1 + n % 4
                job_id = f"ftjob-bench-{n:08d}"
                job_rows.append((job_id, org.pk, gpus, "failed" if failed else "succeeded"))
                copy.write_row(
                    [
                        job_id,
                        org.pk,
                        "partage/tiny-llama",
                        f"file-bench-{org.pk}",
                        "{}",
                        "{}",
                        n,
                        "",
                        "{}",
                        "h100-80g",
                        gpus,
                        0,
                        "{}",
                        "failed" if failed else "succeeded",
                        "platform_error" if failed else "",
                        "",
                        "",
                        attempts_per_job,
                        "{}",
                        "",
                        0,
                        start,
                        start,
                    ]
                )
        with raw.copy(
            "COPY finetuning_jobattempt (id, job_id, number, executor, name, handle, status, "
            "reason, logs, created_at, training_started_at, ended_at, gpu_seconds) FROM STDIN"
        ) as copy:
            for (
                attempt_id,
                _org,
                job_id,
                number,
                _pool,
                _gpus,
                gpu_seconds,
                began,
                ended,
            ) in attempts(job_rows, pools, attempts_per_job, start, seed):
                copy.write_row(
                    [
                        attempt_id,
                        job_id,
                        number,
                        "kubernetes",
                        f"a{attempt_id}",
                        "",
                        "succeeded",
                        "",
                        "",
                        began,
                        began,
                        ended,
                        gpu_seconds,
                    ]
                )
        # Same seed, same rows: the usage records are generated again rather than kept in memory.
        with raw.copy(
            "COPY billing_usagerecord (key, organization_id, job_id, attempt_id, pool_id, "
            "provider_id, price_per_gpu_hour, gpu_count, gpu_seconds, started_at, ended_at, "
            "recorded_at) FROM STDIN"
        ) as copy:
            count = 0
            for attempt_id, org_id, job_id, _n, pool, gpus, gpu_seconds, began, ended in attempts(
                job_rows, pools, attempts_per_job, start, seed
            ):
                count += 1
                copy.write_row(
                    [
                        f"attempt:{attempt_id}",
                        org_id,
                        job_id,
                        attempt_id,
                        pool.pk,
                        pool.provider_id,
                        pool.price_per_gpu_hour,
                        gpus,
                        gpu_seconds,
                        began,
                        ended,
                        ended,
                    ]
                )
        cursor.execute("ANALYZE")
    return {"jobs": jobs, "records": count}


def attempts(
    job_rows: list[tuple[str, int, int, str]],
    pools: list,
    attempts_per_job: int,
    start: datetime,
    seed: int,
):  # type: ignore[no-untyped-def]
    """Every attempt of every job: one pool per job, random lengths inside the month."""
    rng = random.Random(seed + 1)
    attempt_id = 0
    for job_id, org_id, gpus, _status in job_rows:
        pool = pools[rng.randrange(len(pools))]
        for number in range(1, attempts_per_job + 1):
            attempt_id += 1
            began = start + timedelta(seconds=rng.randrange(0, 27 * 24 * 3600))
            wall = Decimal(rng.randrange(60_000, 4 * 3600_000)) / 1000
            ended = began + timedelta(seconds=float(wall))
            yield attempt_id, org_id, job_id, number, pool, gpus, wall * gpus, began, ended


def python_aggregation_seconds(period_end: datetime) -> float:
    """The reference: read every uninvoiced record back and group it per stream in Python."""
    from marketplace.billing.models import UsageRecord

    began = time.perf_counter()
    streams: dict[tuple[int, str, int | None, Decimal], Decimal] = {}
    rows = UsageRecord.objects.filter(recorded_at__lt=period_end)
    for org_id, job_id, pool_id, price, gpu_seconds in rows.values_list(
        "organization_id", "job_id", "pool_id", "price_per_gpu_hour", "gpu_seconds"
    ).iterator(chunk_size=20_000):
        key = (org_id, job_id, pool_id, price)
        streams[key] = streams.get(key, Decimal(0)) + gpu_seconds
    assert streams
    return time.perf_counter() - began


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--database", default="postgres://postgres@127.0.0.1:5432/partage_billing_bench"
    )
    parser.add_argument("--orgs", type=int, default=1000)
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--attempts-per-job", type=int, default=10)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    ensure_database(args.database)
    setup_django(args.database)
    empty()
    began = time.perf_counter()
    counts = load(args.orgs, args.records, args.attempts_per_job, args.seed)
    print(
        f"loaded {counts['records']:,} usage records, {counts['jobs']:,} jobs, {args.orgs:,} orgs "
        f"in {time.perf_counter() - began:.1f} s"
    )

    from django.db.models import Count, Sum

    from marketplace.billing import services
    from marketplace.billing.models import Invoice, InvoiceLine, UsageRecord

    period_start, period_end = services.month_bounds(*MONTH)
    reference = python_aggregation_seconds(period_end)
    print(
        f"reference: the same per-stream aggregation in Python (1 row per record read back, "
        f"no writes) takes {reference:.2f} s"
    )
    began = time.perf_counter()
    invoices = services.invoices_finalize(period_start=period_start, period_end=period_end)
    elapsed = time.perf_counter() - began

    lines = InvoiceLine.objects.count()
    assert len(invoices) == args.orgs, len(invoices)
    # Every record is billed, once: the invoices' ranges reach the period's end, and the lines
    # carry every GPU-second of the records.
    assert not Invoice.objects.exclude(usage_until=period_end).exists()
    record_seconds = UsageRecord.objects.aggregate(total=Sum("gpu_seconds"))["total"]
    line_seconds = InvoiceLine.objects.aggregate(total=Sum("gpu_seconds"))["total"]
    assert record_seconds == line_seconds, (record_seconds, line_seconds)
    sums = Invoice.objects.aggregate(subtotal=Sum("subtotal"), n=Count("id"))
    line_sum = InvoiceLine.objects.aggregate(total=Sum("amount"))["total"]
    assert sums["subtotal"] == line_sum, (sums, line_sum)
    print(
        f"finalize: {len(invoices):,} invoices, {lines:,} lines from {counts['records']:,} usage "
        f"records in {elapsed:.2f} s (subtotal sum {sums['subtotal']} EUR = sum of lines; "
        f"{line_seconds} GPU-s on lines = in records)"
    )
    print(
        f"ratio: Python-side aggregation alone / database finalize = {reference / elapsed:.1f}x; "
        f"target <= 10 s: {'met' if elapsed <= 10 else 'NOT met'}"
    )
    print(
        f"| invoice finalize, {counts['records']:,} records / {args.orgs:,} orgs / {lines:,} lines "
        f"| {elapsed:.2f} s |"
    )


if __name__ == "__main__":
    main()
