"""Time one admission pass over N pending jobs from 1,000 organizations across 50 pools, on
PostgreSQL, and count its queries. Not a test: prints a table for docs/benchmarks.md.

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/partage_bench \\
        .venv/bin/python benchmarks/admission_bench.py --sizes 1000 10000 100000

It creates a throw-away database (test_<name>), seeds 1,000 funded organizations, 50 approved
pools (30 H100, 20 A100; 16 GPUs each), a default plan, and running work that holds 95% of the
GPUs. For each size it inserts N queued jobs, runs a cold pass (every pending reason and
estimate is new, so all are written) and a warm pass (nothing changed), and rolls back.
"""

from __future__ import annotations

import argparse
import itertools
import os
import random
import sys
import time
import uuid
from datetime import timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "marketplace.settings")
os.environ.setdefault("PARTAGE_LOG_LEVEL", "warning")

import django

django.setup()

from django.db import connection, transaction  # noqa: E402
from django.test.utils import setup_test_environment  # noqa: E402
from django.utils import timezone  # noqa: E402

ORGS = 1000
POOLS = {"h100-80g": ("NVIDIA H100", 30), "a100-80g": ("NVIDIA A100", 20)}
GPUS_PER_POOL = 16
BUSY = 0.95


def seed_base(rng: random.Random) -> None:
    from marketplace.accounts.models import Organization, User
    from marketplace.billing.services import topup_record
    from marketplace.capacity import services as capacity
    from marketplace.capacity.models import GpuFlavor, Placement, Pool
    from marketplace.finetuning.models import File, FineTuningJob
    from marketplace.quotas import services as quotas
    from marketplace.quotas.models import Allocation

    staff = User.objects.create_user("bench-staff", email="staff@bench.example", is_staff=True)
    plan = quotas.plan_create(slug="bench", name="Bench", is_default=True)
    pools: list[Pool] = []
    for slug, (model_name, count) in POOLS.items():
        flavor = GpuFlavor.objects.create(slug=slug, model_name=model_name, memory_gb=80)
        quotas.plan_flavor_quota_set(
            plan=plan,
            flavor=flavor,
            values={
                "guaranteed_gpus": 1,
                "max_gpus": 16,
                "monthly_gpu_hours": "5000",
                "max_job_hours": "12",
                "max_concurrent_jobs": 8,
            },
        )
        for index in range(count):
            provider = Organization.objects.create(
                public_id=f"org-{uuid.uuid4().hex[:24]}",
                slug=f"prov-{slug}-{index}",
                name="Provider",
                kind=Organization.Kind.PROVIDER,
                country="FR",
                legal_name="Provider SAS",
                vat_id=f"FR{index:011d}",
            )
            capacity.provider_profile_upsert(organization=provider, payout_reference="bench")
            capacity.provider_approve(organization=provider, by=staff)
            cluster = capacity.cluster_connection_create(
                name=f"c-{slug}-{index}", credentials_ref=f"/var/run/secrets/c-{slug}-{index}"
            )
            pool = capacity.pool_create(
                provider=provider,
                flavor=slug,
                country=rng.choice(["FR", "DE", "NL", "US"]),
                name=f"{slug} {index}",
                gpu_count=GPUS_PER_POOL,
                region="eu-west",
                price_per_gpu_hour="2.00",
            )
            pools.append(capacity.pool_approve(pool=pool, by=staff, cluster=cluster))
    orgs = Organization.objects.bulk_create(
        Organization(
            public_id=f"org-{uuid.uuid4().hex[:24]}",
            slug=f"startup-{i}",
            name=f"Startup {i}",
            country="FR",
        )
        for i in range(ORGS)
    )
    for org in orgs:
        topup_record(organization=org, amount=Decimal("1000000"), reference=f"bench-{org.slug}")
    file = File.objects.create(
        id="file-bench",
        organization=orgs[0],
        filename="t.jsonl",
        purpose="fine-tune",
        bytes=1,
        sha256="0" * 64,
        content="files/bench.jsonl",
    )
    now = timezone.now()
    jobs, placements, allocations = [], [], []
    for pool in pools:
        left = int(GPUS_PER_POOL * BUSY)
        while left > 0:
            gpus = min(rng.choice([1, 2, 4]), left)
            left -= gpus
            org = rng.choice(orgs)
            job = FineTuningJob(
                id=f"ftjob-{uuid.uuid4().hex[:24]}",
                organization=org,
                model="bench",
                training_file=file,
                seed=1,
                gpu_flavor=pool.flavor.slug,
                gpu_count=gpus,
                status="running",
                attempt_count=1,
            )
            admitted = now - timedelta(minutes=rng.randrange(1, 600))
            jobs.append(job)
            placements.append(
                Placement(
                    job=job,
                    pool=pool,
                    gpu_count=gpus,
                    price_per_gpu_hour=pool.price_per_gpu_hour,
                    reason="bench",
                )
            )
            allocations.append(
                Allocation(
                    job=job,
                    attempt_number=1,
                    organization=org,
                    flavor=pool.flavor,
                    pool=pool,
                    gpus=gpus,
                    kind="borrowed",
                    reserved_gpu_hours=Decimal(gpus * 12),
                    admitted_at=admitted,
                    expected_end=admitted + timedelta(hours=12),
                )
            )
    FineTuningJob.objects.bulk_create(jobs)
    Placement.objects.bulk_create(placements)
    Allocation.objects.bulk_create(allocations)


def add_pending(count: int, rng: random.Random) -> None:
    from marketplace.accounts.models import Organization
    from marketplace.finetuning.models import FineTuningJob

    org_ids = list(Organization.objects.filter(kind="startup").values_list("pk", flat=True))
    now = timezone.now()
    FineTuningJob.objects.bulk_create(
        (
            FineTuningJob(
                id=f"ftjob-{uuid.uuid4().hex[:24]}",
                organization_id=rng.choice(org_ids),
                model="bench",
                training_file_id="file-bench",
                seed=1,
                gpu_flavor=rng.choice(list(POOLS)),
                gpu_count=rng.choice([1, 1, 2, 4]),
                priority=1 if rng.random() < 0.05 else 0,
                status="queued",
                created_at=now - timedelta(seconds=rng.randrange(86400)),
            )
            for _ in range(count)
        ),
        batch_size=5000,
    )


class QueryCounter:
    """Counts every statement sent (Django's own query log keeps only the last 9,000)."""

    def __init__(self) -> None:
        self.count = 0

    def __call__(self, execute: Any, sql: str, params: Any, many: bool, context: Any) -> Any:
        self.count += 1
        return execute(sql, params, many, context)


def timed_pass() -> tuple[float, int, Any]:
    from marketplace.quotas.services import admission_pass_run

    counter = QueryCounter()
    with connection.execute_wrapper(counter):
        started = time.perf_counter()
        report = admission_pass_run()
        elapsed = time.perf_counter() - started
    return elapsed, counter.count, report


def timed_outlooks(calls: int, rng: random.Random) -> None:
    """The check every submission makes (quotas' job_outlook): time and statements per call,
    against the same pools and running work as the passes."""
    from marketplace.accounts.models import Organization
    from marketplace.quotas.selectors import job_outlook

    org_ids = list(Organization.objects.filter(kind="startup").values_list("pk", flat=True))
    counter = QueryCounter()
    seconds = []
    with connection.execute_wrapper(counter):
        for _ in range(calls):
            started = time.perf_counter()
            job_outlook(
                organization_id=rng.choice(org_ids),
                gpu_flavor=rng.choice(list(POOLS)),
                gpu_count=rng.choice([1, 1, 2, 4]),
            )
            seconds.append(time.perf_counter() - started)
    seconds.sort()
    print(
        f"submission check (job_outlook), {calls} calls: median {seconds[calls // 2] * 1000:.1f} ms, "
        f"p95 {seconds[int(calls * 0.95)] * 1000:.1f} ms, {counter.count / calls:.0f} statements per call"
    )
    print()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000, 100000])
    parser.add_argument(
        "--outlooks", type=int, default=200, help="submission checks to time (0: none)"
    )
    args = parser.parse_args()
    if connection.vendor != "postgresql":
        sys.exit("Run it on PostgreSQL: set DATABASE_URL=postgres://…")
    setup_test_environment()
    old_name = connection.creation.create_test_db(verbosity=0, autoclobber=True)
    try:
        rng = random.Random(42)
        seed_base(rng)
        if args.outlooks:
            timed_outlooks(args.outlooks, random.Random(7))
        print(
            "| pending jobs | pass | wall time (s) | load | decide | admit | explain "
            "| queries | admitted | admission batches | reasons written |"
        )
        print("|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        results: dict[tuple[int, str], tuple[float, int]] = {}
        for size in args.sizes:
            try:
                with transaction.atomic():
                    add_pending(size, random.Random(size))
                    for label in ("cold", "warm"):
                        elapsed, queries, report = timed_pass()
                        results[(size, label)] = (elapsed, queries)
                        print(_row(size, label, elapsed, queries, report), flush=True)
                    raise _Rollback
            except _Rollback:
                pass
        _print_growth(args.sizes, results)
    finally:
        connection.creation.destroy_test_db(old_name, verbosity=0)


def _row(size: int, label: str, elapsed: float, queries: int, report: Any) -> str:
    phases = " | ".join(
        f"{report.seconds.get(name, 0):.3f}" for name in ("load", "decide", "admit", "explain")
    )
    # A pass sends a fixed number of statements (queue, world, quota book, bulk writes), and
    # each batch of admissions a fixed number more (one short transaction through quotas,
    # billing, capacity and finetuning), whatever the number of jobs it admits.
    return (
        f"| {size:,} | {label} | {elapsed:.3f} | {phases} | {queries:,} "
        f"| {len(report.admitted)} | {report.batches} | {report.reasons_updated:,} |"
    )


def _print_growth(sizes: list[int], results: dict[tuple[int, str], tuple[float, int]]) -> None:
    print()
    print("| from → to | pass | jobs ratio | time ratio | queries ratio |")
    print("|---|---|---:|---:|---:|")
    for small, large in itertools.pairwise(sizes):
        for label in ("cold", "warm"):
            (t0, q0), (t1, q1) = results[(small, label)], results[(large, label)]
            print(
                f"| {small:,} → {large:,} | {label} | {large / small:.0f} | {t1 / t0:.2f} "
                f"| {q1 / q0:.2f} |"
            )
    for size in sizes:
        for label in ("cold", "warm"):
            elapsed = results[(size, label)][0]
            print(f"target ≤ 1 s per pass at {size:,} jobs ({label}): {elapsed:.3f} s", end="")
            print(f" ({elapsed / 1.0:.2f} of the target)")


class _Rollback(Exception):
    pass


if __name__ == "__main__":
    main()
