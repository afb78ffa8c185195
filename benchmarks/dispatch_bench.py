"""Dispatch latency on the Kubernetes executor: from "job created through the API" to "its Job
created on the API server", p50/p99, with a Redis broker, real Celery workers and the fake API
server. Not a test: prints a table for docs/benchmarks.md.

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/partage \\
        .venv/bin/python benchmarks/dispatch_bench.py --rate 20 --seconds 60 --burst 1000

It creates a throw-away database (test_<name>) and starts a private redis-server on a free port
(never the shared one), the fake API server with its kubelet off (Jobs stay pending: no trainer
runs) and `--workers` Celery worker processes (prefork, `--concurrency` each). Jobs are created
through POST /v1/fine_tuning/jobs in this process; each job's clock starts when the API answers
(the job is committed and its admission pass enqueued) and stops when the fake API server
stores its Job. Two phases: a steady rate, then a burst submitted as fast as the API allows.
Afterwards every job must have exactly one Job created (no 409 adoption hides a second create).

The reference, in the same run: the bare `create_namespaced_job` call with the official client
against the same fake server (what one dispatch cannot go below); ratios are against it.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "marketplace.settings")
os.environ.setdefault("PARTAGE_ENV", "test")
os.environ.setdefault("PARTAGE_LOG_LEVEL", "warning")
os.environ.setdefault("PARTAGE_TEST_DB_NAME", "test_partage_k8s_bench")
os.environ["PARTAGE_API_RATE_LIMIT"] = "1000000"  # the bench measures dispatch, not throttling
DIGEST = "registry.example/partage/trainer@sha256:" + "b" * 64
NAMESPACE = "partage-jobs"
FLAVOR = "h100-80g"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_redis(directory: str) -> tuple[subprocess.Popen[bytes], str]:
    if shutil.which("redis-server") is None:
        sys.exit("redis-server is not on PATH: the benchmark needs a private Redis broker.")
    port = free_port()
    process = subprocess.Popen(
        [
            "redis-server",
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--dir",
            directory,
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
    )
    url = f"redis://127.0.0.1:{port}/0"
    import redis

    for _ in range(100):
        try:
            if redis.Redis(port=port, socket_timeout=0.5).ping():
                return process, url
        except redis.RedisError:
            time.sleep(0.1)
    sys.exit("the private redis-server did not answer")


class Recorder:
    """Wraps the fake API server's create: when each training Job was stored, and how often."""

    def __init__(self, api: Any) -> None:
        from workers.executors import k8s_constants as K

        self.created: dict[str, list[float]] = {}
        self.lock = threading.Lock()
        original = api.create

        def create(resource: str, namespace: str, body: dict[str, Any]) -> dict[str, Any]:
            stored = original(resource, namespace, body)  # raises 409 on a second create
            if resource == "jobs":
                job_id = stored["metadata"]["labels"].get(K.LABEL_JOB, "")
                with self.lock:
                    self.created.setdefault(job_id, []).append(time.time())
            return stored

        api.create = create

    def first(self, job_id: str) -> float | None:
        with self.lock:
            times = self.created.get(job_id)
            return times[0] if times else None


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


def workers_start(count: int, concurrency: int, env: dict[str, str], log: Path) -> list[Any]:
    processes = []
    sink = open(log, "ab")  # noqa: SIM115 - lives as long as the workers
    for index in range(count):
        processes.append(
            subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "celery",
                    "-A",
                    "workers.celery",
                    "worker",
                    "--pool",
                    "prefork",
                    "--concurrency",
                    str(concurrency),
                    "--hostname",
                    f"bench{index}@%h",
                    "--loglevel",
                    "WARNING",
                    "--without-gossip",
                    "--without-mingle",
                    "--without-heartbeat",
                ],
                cwd=REPO,
                env=env,
                stdout=sink,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        )
    return processes


def submitter(key: str, file_id: str) -> Callable[[], tuple[str, float, float]]:
    """A function that creates one job through the API: (job id, sent at, answered at)."""
    from rest_framework.test import APIClient

    local = threading.local()

    def submit() -> tuple[str, float, float]:
        from django.db import close_old_connections

        if not hasattr(local, "client"):
            local.client = APIClient()
            local.client.credentials(HTTP_AUTHORIZATION=f"Bearer {key}")
        sent = time.time()
        response = local.client.post(
            "/v1/fine_tuning/jobs",
            {
                "model": "partage/tiny-llama",
                "training_file": file_id,
                "seed": 1,
                "gpu_flavor": FLAVOR,
            },
            format="json",
        )
        answered = time.time()
        close_old_connections()
        if response.status_code != 200:
            raise RuntimeError(f"job create failed: {response.status_code} {response.content!r}")
        return response.json()["id"], sent, answered

    return submit


def run_phase(
    name: str,
    submit: Callable[[], tuple[str, float, float]],
    count: int,
    rate: float | None,
    threads: int,
) -> dict[str, Any]:
    """Submit `count` jobs at `rate` per second (None: as fast as possible)."""
    start = time.time() + 0.5
    results: list[tuple[str, float, float]] = []
    lock = threading.Lock()

    def one(index: int) -> None:
        if rate is not None:
            delay = start + index / rate - time.time()
            if delay > 0:
                time.sleep(delay)
        result = submit()
        with lock:
            results.append(result)

    with ThreadPoolExecutor(max_workers=threads) as pool:
        list(pool.map(one, range(count)))
    sent = [r[1] for r in results]
    return {
        "name": name,
        "jobs": results,
        "offered_seconds": max(sent) - min(sent),
        "api_seconds": [r[2] - r[1] for r in results],
    }


def wait_dispatched(recorder: Recorder, job_ids: list[str], timeout: float) -> list[str]:
    deadline = time.time() + timeout
    missing = list(job_ids)
    shown = time.time()
    while missing and time.time() < deadline:
        missing = [j for j in missing if recorder.first(j) is None]
        if time.time() - shown > 10:
            print(f"  ... {len(missing)} of {len(job_ids)} not dispatched yet", file=sys.stderr)
            shown = time.time()
        time.sleep(0.2)
    return missing


def reference(api: Any, count: int) -> list[float]:
    """The bare create_namespaced_job round trip through the official client."""
    from kubernetes import client as k8s
    from kubernetes import config as k8s_config

    configuration = k8s.Configuration()
    k8s_config.load_kube_config(config_file=api.kubeconfig, client_configuration=configuration)
    batch = k8s.BatchV1Api(k8s.ApiClient(configuration))
    seconds = []
    for index in range(count):
        body = {
            "apiVersion": "batch/v1",
            "kind": "Job",
            "metadata": {"name": f"reference-{index}", "labels": {"bench": "reference"}},
            "spec": {"template": {"spec": {"restartPolicy": "Never", "containers": []}}},
        }
        started = time.perf_counter()
        batch.create_namespaced_job(NAMESPACE, body)
        seconds.append(time.perf_counter() - started)
    return seconds


def check_once(recorder: Recorder, job_ids: list[str]) -> tuple[int, int]:
    """(jobs with exactly one Job created, jobs with more) for these ids, in the DB too."""
    from marketplace.finetuning.models import JobAttempt

    with recorder.lock:
        counts = {j: len(recorder.created.get(j, [])) for j in job_ids}
    attempts: dict[str, int] = {}
    for job_id in JobAttempt.objects.filter(job_id__in=job_ids).values_list("job_id", flat=True):
        attempts[job_id] = attempts.get(job_id, 0) + 1
    once = sum(1 for j in job_ids if counts[j] == 1 and attempts.get(j) == 1)
    more = sum(1 for j in job_ids if counts[j] > 1 or attempts.get(j, 0) > 1)
    return once, more


def report(phase: dict[str, Any], recorder: Recorder, ref_p50: float) -> dict[str, Any]:
    from marketplace.finetuning.models import FineTuningJob

    latencies = [
        recorder.first(job_id) - answered  # type: ignore[operator]
        for job_id, _sent, answered in phase["jobs"]
        if recorder.first(job_id) is not None
    ]
    # Where the time goes: API answer → admitted (the admission pass), admitted → Job created
    # (the dispatch task: Celery with Redis, the executor, the API server).
    answered_at = {job_id: answered for job_id, _sent, answered in phase["jobs"]}
    admitted = dict(
        FineTuningJob.objects.filter(pk__in=answered_at).values_list("id", "admitted_at")
    )
    to_admission, to_job = [], []
    for job_id, answered in answered_at.items():
        created, admitted_at = recorder.first(job_id), admitted.get(job_id)
        if created is not None and admitted_at is not None:
            to_admission.append(admitted_at.timestamp() - answered)
            to_job.append(created - admitted_at.timestamp())
    row = {
        "name": phase["name"],
        "jobs": len(phase["jobs"]),
        "dispatched": len(latencies),
        "offered_rate": len(phase["jobs"]) / max(phase["offered_seconds"], 1e-9),
        "api_p50": statistics.median(phase["api_seconds"]),
        "p50": percentile(latencies, 50) if latencies else float("nan"),
        "p99": percentile(latencies, 99) if latencies else float("nan"),
        "max": max(latencies) if latencies else float("nan"),
    }
    row["ratio_p50"] = row["p50"] / ref_p50
    row["admission_p50"] = percentile(to_admission, 50) if to_admission else float("nan")
    row["dispatch_p50"] = percentile(to_job, 50) if to_job else float("nan")
    row["dispatch_p99"] = percentile(to_job, 99) if to_job else float("nan")
    return row


def setup_pool(kubeconfig: str, gpus: int) -> None:
    """The production path: one approved pool whose cluster connection is the fake API server
    (the kubeconfig path stands for the mounted Secret), a plan that admits every job."""
    from marketplace.accounts.models import Organization, User
    from marketplace.capacity import services as capacity
    from marketplace.capacity.models import GpuFlavor
    from marketplace.quotas import services as quotas

    staff = User.objects.create_user("bench-staff", email="staff@bench.example", is_staff=True)
    flavor = GpuFlavor.objects.create(slug=FLAVOR, model_name="NVIDIA H100", memory_gb=80)
    plan = quotas.plan_create(slug="bench", name="Bench", is_default=True)
    quotas.plan_flavor_quota_set(
        plan=plan,
        flavor=flavor,
        values={
            "guaranteed_gpus": gpus,
            "max_gpus": gpus,
            "monthly_gpu_hours": str(gpus * 1000),
            "max_job_hours": "1",
            "max_concurrent_jobs": gpus,
        },
    )
    provider = Organization.objects.create(
        public_id="org-benchprovider",
        slug="bench-provider",
        name="Provider",
        kind=Organization.Kind.PROVIDER,
        country="FR",
        legal_name="Provider SAS",
        vat_id="FR00000000001",
    )
    capacity.provider_profile_upsert(organization=provider, payout_reference="bench")
    capacity.provider_approve(organization=provider, by=staff)
    cluster = capacity.cluster_connection_create(name="fake", credentials_ref=kubeconfig)
    pool = capacity.pool_create(
        provider=provider,
        flavor=FLAVOR,
        country="FR",
        name="bench pool",
        gpu_count=gpus,
        region="eu-west",
        price_per_gpu_hour="2.00",
    )
    capacity.pool_approve(pool=pool, by=staff, cluster=cluster)


def setup_tenant() -> tuple[str, str]:
    from django.core.files.uploadedfile import SimpleUploadedFile
    from rest_framework.test import APIClient

    from marketplace.accounts.models import Membership, User
    from marketplace.accounts.services import api_key_create, membership_set, organization_create
    from marketplace.billing.services import topup_record

    org = organization_create(name="Bench", slug="bench", country="FR")
    topup_record(organization=org, amount=Decimal("100000000"), reference="bench")
    user = User.objects.create_user("bench-owner", email="owner@bench.example")
    membership_set(organization=org, user=user, role=Membership.Role.OWNER)
    key = api_key_create(organization=org, name="bench", created_by=user).secret
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {key}")
    line = b'{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}\n'
    response = client.post(
        "/v1/files",
        {"file": SimpleUploadedFile("t.jsonl", line * 8), "purpose": "fine-tune"},
        format="multipart",
    )
    assert response.status_code == 200, response.content
    return key, response.json()["id"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=20.0)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--burst", type=int, default=1000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--threads", type=int, default=4, help="API submitting threads")
    parser.add_argument("--reference", type=int, default=300)
    args = parser.parse_args()

    scratch = tempfile.mkdtemp(prefix="dispatch-bench-")
    redis_process, redis_url = start_redis(scratch)
    os.environ["REDIS_URL"] = redis_url
    os.environ["PARTAGE_EXECUTOR"] = "kubernetes"
    os.environ["PARTAGE_K8S_IMAGE"] = DIGEST
    os.environ["PARTAGE_MEDIA_ROOT"] = str(Path(scratch) / "media")
    os.environ["PARTAGE_DATA_DIR"] = str(Path(scratch) / "data")

    import django

    django.setup()
    from django.conf import settings
    from django.db import connection
    from django.test.utils import setup_test_environment

    from tests.fakes.kube_apiserver import FakeKubeApiServer

    api = FakeKubeApiServer(kubelet=False, kubeconfig_dir=scratch).start()
    recorder = Recorder(api)
    setup_test_environment()
    old_name = connection.creation.create_test_db(verbosity=0, autoclobber=True)
    db = connection.settings_dict
    worker_env = {
        **os.environ,
        "DATABASE_URL": f"postgres://{db['USER']}@{db['HOST'] or '127.0.0.1'}:{db['PORT'] or 5432}/{db['NAME']}",
        "PARTAGE_K8S_KUBECONFIG": api.kubeconfig,
        "DJANGO_SECRET_KEY": str(settings.SECRET_KEY),
    }
    workers: list[Any] = []
    steady_count = int(args.rate * args.seconds)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # clean up on `timeout` too
    try:
        if not db["ENGINE"].endswith("postgresql"):
            sys.exit("Set DATABASE_URL to PostgreSQL: workers and this process share the database.")
        setup_pool(api.kubeconfig, gpus=steady_count + args.burst + 40)
        key, file_id = setup_tenant()
        submit = submitter(key, file_id)
        reference_seconds = reference(api, args.reference)
        ref_p50 = statistics.median(reference_seconds)
        workers = workers_start(args.workers, args.concurrency, worker_env, Path(scratch) / "w.log")
        warm = run_phase("warm-up", submit, 20, None, 2)  # workers import Django, connect
        wait_dispatched(recorder, [j for j, _s, _a in warm["jobs"]], 120)
        rows = []
        steady = run_phase(
            f"steady {args.rate:g}/s x {args.seconds:g}s",
            submit,
            steady_count,
            args.rate,
            args.threads,
        )
        missing = wait_dispatched(recorder, [j for j, _s, _a in steady["jobs"]], 600)
        rows.append(report(steady, recorder, ref_p50))
        burst = run_phase(f"burst of {args.burst}", submit, args.burst, None, args.threads)
        missing += wait_dispatched(recorder, [j for j, _s, _a in burst["jobs"]], 900)
        rows.append(report(burst, recorder, ref_p50))
        time.sleep(5)  # a late duplicate create would show up now
        all_ids = [j for phase in (warm, steady, burst) for j, _s, _a in phase["jobs"]]
        once, more = check_once(recorder, all_ids)
        print(
            f"\nreference: bare create_namespaced_job on the fake API server, n={args.reference}:"
        )
        print(
            f"  p50 {ref_p50 * 1000:.1f} ms, p99 {percentile(reference_seconds, 99) * 1000:.1f} ms"
        )
        print(
            f"workers: {args.workers} x prefork concurrency {args.concurrency}; "
            f"API submitting threads: {args.threads}\n"
        )
        print(
            "| phase | jobs | dispatched | offered rate (jobs/s) | API p50 (ms) "
            "| API → Job p50 (s) | p99 (s) | max (s) | p50 / bare create "
            "| of which API → admitted p50 (s) | admitted → Job p50 (s) | p99 (s) |"
        )
        print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        for r in rows:
            print(
                f"| {r['name']} | {r['jobs']} | {r['dispatched']} | {r['offered_rate']:.1f} "
                f"| {r['api_p50'] * 1000:.0f} | {r['p50']:.3f} | {r['p99']:.3f} | {r['max']:.3f} "
                f"| {r['ratio_p50']:.0f}x | {r['admission_p50']:.3f} | {r['dispatch_p50']:.3f} "
                f"| {r['dispatch_p99']:.3f} |"
            )
        print(
            f"\nexactly once: {once}/{len(all_ids)} jobs have exactly one Job created and one "
            f"attempt; {more} have more; {len(missing)} never dispatched."
        )
        if once != len(all_ids):
            sys.exit(1)
    finally:
        workers_stop(workers)
        api.stop()
        redis_process.kill()
        redis_process.wait(timeout=10)
        database_drop(old_name)
        shutil.rmtree(scratch, ignore_errors=True)


def workers_stop(workers: list[Any]) -> None:
    for process in workers:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
    for process in workers:
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=20)
        with contextlib.suppress(ProcessLookupError):  # prefork children too
            os.killpg(process.pid, signal.SIGKILL)


def database_drop(old_name: str) -> None:
    """Drop the throw-away database, closing the sessions the submitting threads left open."""
    from django.db import connection

    name = connection.settings_dict["NAME"]
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = %s AND pid <> pg_backend_pid()",
            [name],
        )
    connection.creation.destroy_test_db(old_name, verbosity=0)


if __name__ == "__main__":
    main()
