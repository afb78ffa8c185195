"""Prometheus metrics: jobs by state, queue depth, dispatch latency, GPU-seconds, API latency."""

from __future__ import annotations

import dataclasses
from datetime import timedelta
from decimal import Decimal
from typing import Any

import pytest
from django.utils import timezone
from prometheus_client.parser import text_string_to_metric_families

from marketplace.finetuning import services
from marketplace.finetuning.models import FineTuningJob, JobAttempt
from tests.conftest import chat_lines, jsonl
from tests.fakes.kube_apiserver import FakeKubeApiServer
from workers import metrics
from workers.executors.kubernetes import ClusterRef, JobConfig, KubernetesExecutor
from workers.reconciler import Target, handle

DIGEST = "registry.example/partage/trainer@sha256:" + "d" * 64
NS = "partage-jobs"


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def scrape(client: Any, **headers: str) -> Any:
    return client.get("/metrics", **headers)


def value(found: dict[Any, float], name: str, **labels: str) -> float:
    return found.get((name, tuple(sorted(labels.items()))), 0.0)


@pytest.mark.django_db
def test_metrics_cover_states_gpu_seconds_dispatch_and_api_latency(
    client: Any, client_a: Any, upload: Any, fake_api: FakeKubeApiServer, settings: Any
) -> None:
    from marketplace.quotas.services import admission_pass

    settings.PARTAGE_EXECUTOR = "kubernetes"
    settings.PARTAGE_K8S_IMAGE = DIGEST
    settings.PARTAGE_K8S_KUBECONFIG = fake_api.kubeconfig
    before = samples(scrape(client).content.decode())
    file_id = upload(jsonl(chat_lines(8))).json()["id"]
    body = {"model": "partage/tiny-llama", "training_file": file_id}
    ids = [client_a.post("/v1/fine_tuning/jobs", body, format="json").json()["id"] for _ in "ab"]
    assert set(ids) <= set(admission_pass())
    # the first job is dispatched through the real executor onto the fake API server
    from workers.dispatch import job_dispatch

    assert job_dispatch(job_id=ids[0])
    attempt = JobAttempt.objects.get(job_id=ids[0])
    executor = KubernetesExecutor(config=JobConfig(image=DIGEST))
    target = Target(ClusterRef("kubeconfig", fake_api.kubeconfig, "default"), NS)
    (added,) = executor.list_managed(target.ref, NS)[0]
    assert handle(dataclasses.replace(added, type="ADDED"), executor, target) == "live"
    # it ran for 90 GPU-seconds and ended
    services.attempt_training_started(attempt=attempt)
    JobAttempt.objects.filter(pk=attempt.pk).update(
        training_started_at=timezone.now() - timedelta(seconds=90)
    )
    services.attempt_ended(attempt_id=attempt.pk, phase="failed", exit_code=3, reason="bad data")

    response = scrape(client)
    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/plain")
    found = samples(response.content.decode())
    statuses = dict(FineTuningJob.objects.values_list("id", "status"))
    assert value(found, "partage_jobs", state=statuses[ids[1]]) >= 1
    assert value(found, "partage_jobs", state="failed") == 1
    gpu = value(found, "partage_gpu_seconds_total", flavor="unspecified")
    assert gpu == float(JobAttempt.objects.get(pk=attempt.pk).gpu_seconds) >= 90
    assert JobAttempt.objects.get(pk=attempt.pk).gpu_seconds >= Decimal(90)
    create = {"operation": "create_job", "status": "ok"}
    assert (
        value(found, "partage_k8s_api_request_seconds_count", **create)
        == value(before, "partage_k8s_api_request_seconds_count", **create) + 1
    )
    assert (
        value(found, "partage_dispatch_latency_seconds_count")
        == value(before, "partage_dispatch_latency_seconds_count") + 1
    )
    assert value(found, "partage_dispatch_create_seconds_count") >= 1
    assert value(found, "partage_k8s_jobs_created_total") >= 1


@pytest.mark.django_db
def test_metrics_need_the_token_when_one_is_set(client: Any, monkeypatch: Any) -> None:
    monkeypatch.setenv("PARTAGE_METRICS_TOKEN", "s3cret-scrape-token")
    assert scrape(client).status_code == 403
    assert scrape(client, HTTP_AUTHORIZATION="Bearer wrong").status_code == 403
    ok = scrape(client, HTTP_AUTHORIZATION="Bearer s3cret-scrape-token")
    assert ok.status_code == 200 and b"partage_jobs" in ok.content


@pytest.mark.django_db
def test_production_without_a_token_serves_no_metrics(
    client: Any, settings: Any, monkeypatch: Any
) -> None:
    monkeypatch.delenv("PARTAGE_METRICS_TOKEN", raising=False)
    settings.PRODUCTION = True
    response = scrape(client, HTTP_AUTHORIZATION="Bearer ")
    assert response.status_code == 403 and b"PARTAGE_METRICS_TOKEN" in response.content


@pytest.mark.pg
def test_queue_depth_is_the_length_of_the_redis_queue(settings: Any) -> None:
    import redis

    assert settings.REDIS_URL, "the PostgreSQL pass runs with REDIS_URL"
    connection = redis.Redis.from_url(settings.REDIS_URL)
    queue = "partage-test-metrics-queue"
    connection.delete(queue)
    connection.rpush(queue, "a", "b", "c")
    try:
        assert metrics.queue_depth(queue) == 3
    finally:
        connection.delete(queue)
    assert metrics.queue_depth(queue) == 0


def test_workers_and_the_reconciler_serve_their_own_metrics(tmp_path: Any) -> None:
    """Under PROMETHEUS_MULTIPROC_DIR (k8s/base/configmap.yaml), even before the folder exists."""
    import os
    import socket
    import subprocess
    import sys
    import urllib.request

    from tests.conftest import REPO, wait_for

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    code = (
        "import time; from workers import metrics; "
        "metrics.observe_k8s_call('create_job', 'ok', 0.02); "
        "print(metrics.exporter_start(), flush=True); time.sleep(60)"
    )
    env = {
        **os.environ,
        "PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "not-yet" / "prometheus"),
        "PARTAGE_METRICS_PORT": str(port),
    }
    process = subprocess.Popen([sys.executable, "-c", code], cwd=REPO, env=env)
    try:

        def scraped() -> str:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2) as r:
                    return str(r.read().decode())
            except OSError:
                return ""

        text = wait_for(scraped, timeout=60, interval=0.2)
        found = samples(text)
        create = {"operation": "create_job", "status": "ok"}
        assert value(found, "partage_k8s_api_request_seconds_count", **create) == 1
    finally:
        process.kill()
        process.wait(timeout=10)
