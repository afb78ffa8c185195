"""Partner API throughput and latency on gunicorn, beside a bare Django JSON view.

Measures requests/s and p50/p99 latency, each API route beside a bare Django JSON view (plain
JsonResponse, same middleware, PARTAGE_API_BENCH_VIEW) that does the same database read and
rendering without authentication, DRF, rate limiting or pagination:
  - api job:  GET /v1/fine_tuning/jobs/{id}      vs  bare job:  /v1/_bench/bare?shape=job
  - api list: GET /v1/fine_tuning/jobs?limit=100 vs  bare list: /v1/_bench/bare?shape=list
  - bare constant: /v1/_bench/bare (no database at all), for scale.

Usage (PostgreSQL + Redis, as in production):
  python benchmarks/api_bench.py --database postgres://postgres@127.0.0.1:5432/partage_api_bench \
      --redis redis://127.0.0.1:6379/6 --workers 2 --threads 4 --seconds 10

Not a test: it prints a table, and a line for docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit

REPO = Path(__file__).resolve().parent.parent


def server_env(args: argparse.Namespace, data_dir: str) -> dict[str, str]:
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "marketplace.settings",
        "PARTAGE_DATA_DIR": data_dir,
        "DATABASE_URL": args.database,
        "PARTAGE_API_BENCH_VIEW": "true",
        "PARTAGE_API_RATE_LIMIT": "1000000000",  # counted (the cost is measured), never reached
        "DJANGO_DEBUG": "false",
        "PARTAGE_LOG_LEVEL": "warning",
    }
    if args.redis:
        env["REDIS_URL"] = args.redis
    return env


def ensure_database(url: str) -> None:
    if not url.startswith("postgres"):
        return
    import psycopg

    parts = urlsplit(url)
    name = parts.path.lstrip("/")
    admin = url.rsplit("/", 1)[0] + "/postgres"
    with psycopg.connect(admin, autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone()
        if not exists:
            conn.execute(f'CREATE DATABASE "{name}"')


SEED = """
import django, uuid
django.setup()
from marketplace.accounts.models import Organization
from marketplace.accounts.services import api_key_create, organization_create
from marketplace.finetuning.models import File, FineTuningJob
org = Organization.objects.filter(slug="bench").first() or organization_create(name="Bench", slug="bench")
FineTuningJob.objects.filter(organization=org).delete()
File.objects.filter(organization=org).delete()
f = File.objects.create(id=f"file-{uuid.uuid4().hex[:24]}", organization=org, filename="t.jsonl",
                        purpose="fine-tune", bytes=1, sha256="0"*64, content="files/bench.jsonl")
jobs = [FineTuningJob(id=f"ftjob-{uuid.uuid4().hex[:24]}", organization=org, model="partage/tiny-llama",
                      training_file=f, seed=i, status="succeeded",
                      hyperparameters={"n_epochs": 3, "batch_size": 8, "learning_rate_multiplier": 1.0},
                      lora={"r": 8, "alpha": 16, "dropout": 0.05, "target_modules": "all-linear"},
                      progress={"step": 10, "total_steps": 10, "train_loss": 0.5})
        for i in range(100)]
FineTuningJob.objects.bulk_create(jobs)
print(api_key_create(organization=org, name="bench").secret, jobs[0].id)
"""


def run(cmd: list[str], env: dict[str, str]) -> str:
    return subprocess.run(cmd, env=env, cwd=REPO, check=True, capture_output=True, text=True).stdout


def load(port: int, path: str, key: str, *, threads: int, seconds: float) -> dict[str, float]:
    return summary(*timed(port, path, key, threads=threads, seconds=seconds))


def summary(latencies: list[float], errors: int, elapsed: float) -> dict[str, float]:
    latencies = sorted(latencies)
    return {
        "requests": len(latencies),
        "rps": len(latencies) / elapsed,
        "p50_ms": statistics.median(latencies) * 1000,
        "p99_ms": latencies[max(int(len(latencies) * 0.99) - 1, 0)] * 1000,
        "errors": errors,
    }


def timed(
    port: int, path: str, key: str, *, threads: int, seconds: float
) -> tuple[list[float], int, float]:
    """Closed-loop load: `threads` clients, each a new connection per request (no keep-alive,
    like gunicorn's sync workers). Returns the latencies, the non-200 count and the time taken."""
    latencies: list[float] = []
    errors = 0
    lock = threading.Lock()
    stop_at = time.perf_counter() + seconds

    def worker() -> None:
        nonlocal errors
        mine: list[float] = []
        bad = 0
        while time.perf_counter() < stop_at:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            start = time.perf_counter()
            conn.request("GET", path, headers={"Authorization": f"Bearer {key}"})
            response = conn.getresponse()
            response.read()
            mine.append(time.perf_counter() - start)
            bad += response.status != 200
            conn.close()
        with lock:
            latencies.extend(mine)
            errors += bad

    pool = [threading.Thread(target=worker) for _ in range(threads)]
    began = time.perf_counter()
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join()
    return latencies, errors, time.perf_counter() - began


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--database", default="postgres://postgres@127.0.0.1:5432/partage_api_bench"
    )
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/6")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--threads", type=int, default=4, help="concurrent client connections")
    parser.add_argument("--seconds", type=float, default=10, help="per target, all rounds")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds")
    parser.add_argument("--port", type=int, default=8765)
    args = parser.parse_args()

    data_dir = tempfile.mkdtemp(prefix="partage-bench-")
    env = server_env(args, data_dir)
    ensure_database(args.database)
    run([sys.executable, "manage.py", "migrate", "--no-input"], env)
    key, job_id = run([sys.executable, "-c", SEED], env).split()

    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "gunicorn",
            "marketplace.wsgi:application",
            "--workers",
            str(args.workers),
            "--bind",
            f"127.0.0.1:{args.port}",
            "--log-level",
            "warning",
        ],
        env=env,
        cwd=REPO,
        start_new_session=True,
    )
    try:
        for _ in range(100):
            try:
                conn = http.client.HTTPConnection("127.0.0.1", args.port, timeout=1)
                conn.request("GET", "/v1/_bench/bare")
                if conn.getresponse().status == 200:
                    break
            except OSError:
                time.sleep(0.2)
        targets = {
            "bare constant": "/v1/_bench/bare",
            "bare job": f"/v1/_bench/bare?shape=job&id={job_id}",
            "api job": f"/v1/fine_tuning/jobs/{job_id}",
            "bare list": "/v1/_bench/bare?shape=list&org=bench",
            "api list (100)": "/v1/fine_tuning/jobs?limit=100",
        }
        for path in targets.values():
            load(args.port, path, key, threads=args.threads, seconds=2)  # warm up
        # Interleaved rounds: on a shared machine, a slow spell hits every target alike.
        samples: dict[str, tuple[list[float], int, float]] = {n: ([], 0, 0.0) for n in targets}
        for _ in range(args.rounds):
            for name, path in targets.items():
                lat, err, took = timed(
                    args.port, path, key, threads=args.threads, seconds=args.seconds / args.rounds
                )
                before = samples[name]
                samples[name] = (before[0] + lat, before[1] + err, before[2] + took)
        results = {name: summary(*sample) for name, sample in samples.items()}
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)

    baseline = {"api job": "bare job", "api list (100)": "bare list"}
    print(f"{'endpoint':<16} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'vs bare':>8} {'errors':>6}")
    for name, r in results.items():
        bare = results.get(baseline.get(name, ""), {}).get("rps")
        ratio = f"{r['rps'] / bare:>7.0%}" if bare else f"{'':>7}"
        print(
            f"{name:<16} {r['rps']:>8.0f} {r['p50_ms']:>8.1f} {r['p99_ms']:>8.1f} {ratio} {r['errors']:>6}"
        )
    print(
        json.dumps(
            {
                "workers": args.workers,
                "threads": args.threads,
                "seconds": args.seconds,
                "rounds": args.rounds,
                "results": results,
            }
        )
    )


if __name__ == "__main__":
    main()
