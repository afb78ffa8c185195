"""The review page's expected cost against what each job was then really charged (issue 18).

Drives a running `make run` (the demo model, the demo pool `local-cpu`) as a user would: for
each shape (lines of training data x epochs) it uploads the file, posts the portal's launch
form to its review step and reads the expected cost there, launches the job with the same
settings, waits for it, and reads its charge (its usage records' GPU-seconds x price, VAT
included, to the cent: the ledger's figure). Each job then adds to the measured throughput the
next estimate uses. The first shape is only a calibration when nothing was measured yet.

    python benchmarks/estimate_bench.py --key "$PARTAGE_KEY" --password <demo password> \
        [--shapes 12x2,48x2,36x3,24x5] [--base-url http://127.0.0.1:8000]

Not a test: it prints a table (expected, charged, ratio) for docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from decimal import ROUND_HALF_EVEN, Decimal
from pathlib import Path

import requests

DATA = Path(__file__).resolve().parents[1] / "docs" / "demo" / "pirate.jsonl"
MODEL = "HuggingFaceTB/SmolLM2-135M-Instruct"
VAT = Decimal("0.20")


def training_lines(count: int) -> bytes:
    """`count` lines cycled from the demo data, each a little different (a numbered prompt)."""
    rows = [json.loads(line) for line in DATA.read_text().splitlines() if line.strip()]
    out = []
    for i in range(count):
        row = json.loads(json.dumps(rows[i % len(rows)]))
        row["messages"][0]["content"] += f" (question {i + 1})"
        out.append(json.dumps(row))
    return ("\n".join(out) + "\n").encode()


def portal(base: str, username: str, password: str) -> requests.Session:
    session = requests.Session()
    login = session.get(f"{base}/login/")
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', login.text)
    assert token, "no login form"
    answer = session.post(
        f"{base}/login/",
        data={"username": username, "password": password, "csrfmiddlewaretoken": token[1]},
        headers={"Referer": f"{base}/login/"},
    )
    answer.raise_for_status()
    assert "logout" in answer.text.lower(), "login refused"
    return session


def expected_on_review(
    session: requests.Session, base: str, file_id: str, epochs: int
) -> tuple[str, float | None]:
    form = session.get(f"{base}/jobs/new/")
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', form.text)
    assert token, "no launch form"
    review = session.post(
        f"{base}/jobs/new/",
        data={
            "csrfmiddlewaretoken": token[1],
            "model": MODEL,
            "training_file": file_id,
            "n_epochs": epochs,
            "batch_size": 8,
            "learning_rate_multiplier": 10,
            "max_seq_length": 1024,
            "lora_r": 8,
            "lora_alpha": 16,
            "lora_dropout": 0.05,
            "target_modules": "all-linear",
            "gpu_count": 1,
            "action": "review",
        },
        headers={"Referer": f"{base}/jobs/new/"},
    )
    review.raise_for_status()
    found = re.search(
        r'id="estimate-expected"(?: data-seconds="([0-9.]+)")?>(€[0-9.]+|—)<', review.text
    )
    assert found, "no expected cost on the review page"
    return found[2], float(found[1]) if found[1] else None


def charged(api: requests.Session, base: str, job_id: str) -> tuple[Decimal, float]:
    """The job's charge, VAT included, and its GPU-seconds per GPU (what the charge prices)."""
    records = api.get(f"{base}/v1/billing/usage", params={"limit": 100}).json()["data"]
    net, per_gpu = Decimal(0), 0.0
    for record in records:
        if record["job_id"] == job_id:
            seconds = Decimal(record["gpu_seconds"])
            per_gpu += float(seconds) / record["gpu_count"]
            net += seconds * Decimal(record["price_per_gpu_hour"]) / 3600
    net = net.quantize(Decimal("0.01"), ROUND_HALF_EVEN)
    return net + (net * VAT).quantize(Decimal("0.01"), ROUND_HALF_EVEN), per_gpu


def run(api: requests.Session, base: str, file_id: str, epochs: int) -> tuple[str, float]:
    job = api.post(
        f"{base}/v1/fine_tuning/jobs",
        json={
            "model": MODEL,
            "training_file": file_id,
            "hyperparameters": {
                "n_epochs": epochs,
                "batch_size": 8,
                "learning_rate_multiplier": 10,
            },
            "lora": {"r": 8, "alpha": 16},
        },
    )
    job.raise_for_status()
    job_id = job.json()["id"]
    start = time.monotonic()
    while True:
        body = api.get(f"{base}/v1/fine_tuning/jobs/{job_id}").json()
        if body["status"] in {"succeeded", "failed", "cancelled"}:
            break
        time.sleep(3)
    assert body["status"] == "succeeded", body
    for _ in range(40):  # the usage record comes with the attempt's end, just after
        if any(r["job_id"] == job_id for r in api.get(f"{base}/v1/billing/usage").json()["data"]):
            break
        time.sleep(1)
    return job_id, time.monotonic() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base-url", default="http://127.0.0.1:8000")
    parser.add_argument("--key", required=True)
    parser.add_argument("--username", default="demo")
    parser.add_argument("--password", required=True)
    parser.add_argument("--shapes", default="12x2,48x2,36x3,24x5")
    args = parser.parse_args()
    base = args.base_url.rstrip("/")
    api = requests.Session()
    api.headers["Authorization"] = f"Bearer {args.key}"
    session = portal(base, args.username, args.password)
    print(
        f"{'shape':>7} {'bytes':>7} {'expected':>9} {'charged':>8} "
        f"{'exp. s':>7} {'billed s':>8} {'ratio':>6} {'wall s':>7}"
    )
    for shape in args.shapes.split(","):
        lines, epochs = (int(part) for part in shape.split("x"))
        upload = api.post(
            f"{base}/v1/files",
            files={"file": ("bench.jsonl", training_lines(lines))},
            data={"purpose": "fine-tune"},
        )
        upload.raise_for_status()
        file_id, size = upload.json()["id"], upload.json()["bytes"]
        expected, expected_s = expected_on_review(session, base, file_id, epochs)
        job_id, wall = run(api, base, file_id, epochs)
        cost, billed_s = charged(api, base, job_id)
        # The ratio compares seconds: at the demo pool's price a job costs a cent or two, and
        # whole cents would hide the error.
        ratio = f"{expected_s / billed_s:.2f}" if expected_s and billed_s else "—"
        shown_s = f"{expected_s:.0f}" if expected_s else "—"
        print(
            f"{shape:>7} {size:>7} {expected:>9} {'€' + str(cost):>8} "
            f"{shown_s:>7} {billed_s:>8.0f} {ratio:>6} {wall:>7.0f}"
        )
        sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
