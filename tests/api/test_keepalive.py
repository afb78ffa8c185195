"""Keep-alive on the embedded default: a partner client that polls every 1 to 3 s over one pooled
connection, with retries off, never meets a connection the server dropped.

gunicorn's default 2 s keep-alive closed idle connections just as clients reused them (their
pools keep a connection for 5 s), and the request died with APIConnectionError. The test starts
the real web server exactly as `partage_up` does, on a fresh data folder, and drives it for two
minutes through the unchanged openai SDK with max_retries=0.
"""

from __future__ import annotations

import os
import random
import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx2
import pytest
from openai import OpenAI

from marketplace.demo.management.commands.partage_up import web_command
from tests.k8s.test_k8s_manifests import K8S, _documents

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
POLL_FOR_SECONDS = 120


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _embedded_env(data_dir: Path) -> dict[str, str]:
    """The embedded default: none of the test run's database, broker or Partage settings."""
    clean = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("DATABASE_URL", "REDIS_URL", "PARTAGE_", "DJANGO_"))
    }
    return {**clean, "PARTAGE_DATA_DIR": str(data_dir), "PYTHONPATH": str(ROOT)}


@pytest.fixture
def embedded_server(tmp_path: Path) -> Iterator[tuple[str, str]]:
    """A real gunicorn started as partage_up starts it; yields (base URL, demo API key)."""
    env = _embedded_env(tmp_path)
    setup = subprocess.run(
        [sys.executable, "manage.py", "partage_up", "--no-serve"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert setup.returncode == 0, setup.stderr[-3000:]
    key = re.search(r"API key:\s+(\S+)", setup.stdout)
    assert key, setup.stdout
    bind = f"127.0.0.1:{_free_port()}"
    log = (tmp_path / "gunicorn.log").open("wb")
    server = subprocess.Popen(
        web_command(bind),
        cwd=ROOT,
        env={**env, "DJANGO_SETTINGS_MODULE": "marketplace.settings"},
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 120
        while True:
            assert server.poll() is None, (tmp_path / "gunicorn.log").read_text()[-3000:]
            try:
                if httpx2.get(f"http://{bind}/healthz", timeout=2).status_code == 200:
                    break
            except httpx2.TransportError:
                pass
            assert time.monotonic() < deadline, "gunicorn did not answer within 120 s"
            time.sleep(0.5)
        yield f"http://{bind}", key.group(1)
    finally:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        log.close()


def test_polling_over_keep_alive_for_two_minutes_never_drops_a_connection(
    embedded_server: tuple[str, str],
) -> None:
    base_url, api_key = embedded_server
    client = OpenAI(api_key=api_key, base_url=f"{base_url}/v1", max_retries=0, timeout=30)
    pace = random.Random(14)  # the pauses between polls
    client_ports: set[int] = set()
    polls = 0
    gaps: list[float] = []
    started = time.monotonic()
    while time.monotonic() - started < POLL_FOR_SECONDS:
        # Any dropped connection raises here: retries are off.
        raw = client.models.with_raw_response.list()
        assert raw.http_response.status_code == 200
        assert raw.parse().data  # the base models the demo offers
        stream = raw.http_response.extensions["network_stream"]
        client_ports.add(stream.get_extra_info("client_addr")[1])
        polls += 1
        gap = pace.uniform(1.0, 3.0)
        gaps.append(gap)
        time.sleep(gap)
    client.close()
    assert polls >= 40 and max(gaps) > 2.5
    # Every poll reused the one pooled connection: the server never closed it while idle.
    assert len(client_ports) == 1, f"{len(client_ports)} connections for {polls} polls"


def test_the_image_and_the_deployment_load_the_same_gunicorn_settings() -> None:
    from marketplace import gunicorn_conf

    # Longer than common pool expiries: httpx 5 s, ingress-nginx upstream and load balancers 60 s.
    assert gunicorn_conf.keepalive > 60
    assert "python:marketplace.gunicorn_conf" in web_command("127.0.0.1:8000")
    dockerfile = (K8S / "images" / "web.Dockerfile").read_text()
    assert '"-c", "python:marketplace.gunicorn_conf"' in dockerfile
    web = next(d for d in _documents(K8S / "base" / "web.yaml") if d["kind"] == "Deployment")
    (container,) = web["spec"]["template"]["spec"]["containers"]
    command: list[Any] = container["command"]
    assert command[command.index("-c") + 1] == "python:marketplace.gunicorn_conf"
    assert "--keep-alive" not in command  # one place sets it
