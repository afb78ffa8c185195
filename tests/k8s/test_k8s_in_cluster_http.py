"""With the shipped config map (PARTAGE_ENV=production), what calls Partage inside the cluster
over plain HTTP is served, not redirected: trainers' callbacks to /internal/, the kubelet's
/healthz and /readyz probes, Prometheus on /metrics. Everything else still goes to https."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml

from tests.fakes.keys import provenance_key_pem

ROOT = Path(__file__).resolve().parents[2]
CONFIG_MAP = ROOT / "k8s" / "base" / "configmap.yaml"

# Runs in a fresh interpreter with the production environment; prints one JSON line per request.
PROBE = """
import json, sys
import django
django.setup()
from django.test import Client

host, token = sys.argv[1], sys.argv[2]
client = Client(HTTP_HOST=host, raise_request_exception=False)
calls = [
    ("GET", "/healthz", {}),
    ("GET", "/readyz", {}),
    ("GET", "/metrics", {"HTTP_AUTHORIZATION": "Bearer not-the-metrics-token"}),
    ("GET", "/internal/v1/jobs/ftjob-x/spec", {"HTTP_AUTHORIZATION": "Bearer not-a-token"}),
    ("POST", "/internal/v1/jobs/ftjob-x/events", {"HTTP_AUTHORIZATION": "Bearer not-a-token"}),
    ("GET", "/v1/models", {}),
    ("GET", "/", {}),
    ("GET", "/v1/models", {"HTTP_X_FORWARDED_PROTO": "https"}),
]
for method, path, extra in calls:
    response = getattr(client, method.lower())(path, **extra)
    print(json.dumps({
        "call": f"{method} {path}" + (" (https)" if "HTTP_X_FORWARDED_PROTO" in extra else ""),
        "status": response.status_code,
        "location": response.get("Location", ""),
    }))
"""


def _cluster_env(tmp_path: Path) -> tuple[dict[str, str], str]:
    """The config map's values, with its secret files written under tmp_path."""
    data: dict[str, str] = yaml.safe_load(CONFIG_MAP.read_text())["data"]
    secrets = {
        "DJANGO_SECRET_KEY_FILE": "k" * 60,
        "DATABASE_URL_FILE": "postgres://partage@db.invalid:5432/partage",
        "REDIS_URL_FILE": "redis://redis.invalid:6379/0",
        "PARTAGE_METRICS_TOKEN_FILE": "metrics-token-for-prometheus",
        "PARTAGE_PROVENANCE_KEY_FILE": provenance_key_pem(),
    }
    for name, value in secrets.items():
        assert name in data, f"the config map no longer names {name}"
        path = tmp_path / name.lower()
        path.write_text(value)
        data[name] = str(path)
    data["PARTAGE_DATA_DIR"] = str(tmp_path / "data")
    data["PROMETHEUS_MULTIPROC_DIR"] = str(tmp_path / "prometheus")
    clean = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("DATABASE_URL", "REDIS_URL", "PARTAGE_", "DJANGO_", "PROMETHEUS_"))
    }
    env = {
        **clean,
        **data,
        "DJANGO_SETTINGS_MODULE": "marketplace.settings",
        "PYTHONPATH": str(ROOT),
    }
    return env, secrets["PARTAGE_METRICS_TOKEN_FILE"]


def _probe(tmp_path: Path) -> dict[str, dict[str, Any]]:
    env, token = _cluster_env(tmp_path)
    assert env["PARTAGE_ENV"] == "production"
    internal_host = urlsplit(env["PARTAGE_INTERNAL_URL"]).netloc
    assert urlsplit(env["PARTAGE_INTERNAL_URL"]).scheme == "http"  # what trainers use
    done = subprocess.run(
        [sys.executable, "-c", PROBE, internal_host, token],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    lines = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    return {line["call"]: line for line in lines}


def test_in_cluster_http_calls_are_served_and_public_ones_go_to_https(tmp_path: Path) -> None:
    seen = _probe(tmp_path)
    assert seen["GET /healthz"]["status"] == 200
    # No database here: the readiness probe answers 503; /metrics judges the scraper's token
    # (a wrong one here: the right one would read gauges from the database). What matters is
    # that they answer, rather than send the caller away to https.
    assert seen["GET /readyz"]["status"] == 503
    assert seen["GET /metrics"]["status"] in (401, 403)
    # The trainer's callbacks reach the internal API, which judges the token itself.
    assert seen["GET /internal/v1/jobs/ftjob-x/spec"]["status"] == 401
    assert seen["POST /internal/v1/jobs/ftjob-x/events"]["status"] == 401
    for call in seen.values():
        if call["call"].startswith(("GET /healthz", "GET /readyz", "GET /metrics", "GET /int")):
            assert call["status"] != 301 and call["location"] == "", call
    # The public API and the portal still move to https (HSTS and secure cookies need it).
    assert seen["GET /v1/models"]["status"] == 301
    assert seen["GET /v1/models"]["location"].startswith("https://")
    assert seen["GET /"]["status"] == 301
    assert seen["GET /v1/models (https)"]["status"] == 401  # behind the TLS ingress: served
