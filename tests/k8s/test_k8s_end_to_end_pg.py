"""End to end on the Kubernetes executor, with faults, on PostgreSQL + Redis + real Celery.

API request → Celery (Redis) → dispatch task → Job on the fake API server → the fake kubelet
runs the real pod agent and LoRA trainer → progress, checkpoints and the adapter come back over
HTTP → the partner downloads the adapter. The reconciler runs in this process, as threads.
Only the Kubernetes API server (and its kubelet) is fake.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from django.test import Client
from django.utils.html import escape

from marketplace.finetuning.models import FineTuningJob, JobAttempt
from tests.conftest import REPO, _worker_env, chat_lines, jsonl, wait_for
from tests.fakes.kube_apiserver import FakeKubeApiServer
from tests.k8s.conftest import kubelet_env
from workers.executors import k8s_constants as K

pytestmark = [pytest.mark.pg, pytest.mark.slow]

DIGEST = "registry.example/partage/trainer@sha256:" + "b" * 64
NS = "partage-jobs"
TERMINAL = {"succeeded", "failed", "cancelled"}


# ---------------------------------------------------------------- fixtures


@pytest.fixture
def cluster(monkeypatch: Any, settings: Any, tmp_path: Path) -> Iterator[FakeKubeApiServer]:
    """The fake API server, and every Partage process pointed at it through the environment."""
    api = FakeKubeApiServer(
        kubelet=True, kubelet_env=kubelet_env(), kubelet_cwd=str(REPO), kubeconfig_dir=str(tmp_path)
    ).start()
    pod_tmp = tmp_path / "pod-tmp"
    pod_tmp.mkdir()
    env = {
        "PARTAGE_EXECUTOR": "kubernetes",
        "PARTAGE_K8S_KUBECONFIG": api.kubeconfig,
        "PARTAGE_K8S_IMAGE": DIGEST,
        # The fake kubelet runs pods as local processes: "mounts" are local paths.
        "PARTAGE_K8S_MODEL_CACHE_PATH": str(settings.PARTAGE_MODEL_CACHE),
        "PARTAGE_K8S_TMP_PATH": str(pod_tmp),
        "PARTAGE_K8S_TERMINATION_GRACE_SECONDS": "60",
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    settings.PARTAGE_EXECUTOR = "kubernetes"
    yield api
    api.stop()


@pytest.fixture
def reconciler(cluster: FakeKubeApiServer) -> Iterator[threading.Event]:
    from workers.reconciler import run_forever

    stop = threading.Event()
    thread = threading.Thread(
        target=run_forever,
        args=(stop,),
        kwargs={"resync_seconds": 2.0, "watch_timeout": 2},
        daemon=True,
    )
    thread.start()
    yield stop
    stop.set()
    thread.join(timeout=40)


@pytest.fixture
def beat(
    celery_worker_process: Any, settings: Any, live_callbacks: str, tmp_path: Path
) -> Iterator[Callable[[], subprocess.Popen[bytes]]]:
    """A real `celery beat` (the periodic level-based resync and the admission pass)."""
    processes: list[subprocess.Popen[bytes]] = []
    log = open(tmp_path / "beat.log", "ab")  # noqa: SIM115 - closed at teardown

    def start() -> subprocess.Popen[bytes]:
        env = _worker_env(
            {
                "PARTAGE_INTERNAL_URL": live_callbacks,
                "PARTAGE_ENV": "test",
                "DJANGO_SECRET_KEY": settings.SECRET_KEY,
                "REDIS_URL": settings.REDIS_URL,
                "PARTAGE_DATA_DIR": str(tmp_path / "beat-data"),
            }
        )
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "celery",
                "-A",
                "workers.celery",
                "beat",
                "--loglevel",
                "INFO",
                "--schedule",
                str(tmp_path / "beat-schedule"),
            ],
            cwd=REPO,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        processes.append(process)
        return process

    yield start
    for process in processes:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
            process.wait(timeout=15)
    log.close()


# ---------------------------------------------------------------- helpers


def submit(client: Any, upload: Any, *, lines: int = 16, epochs: int = 2, batch: int = 4) -> str:
    file_id = upload(jsonl(chat_lines(lines))).json()["id"]
    response = client.post(
        "/v1/fine_tuning/jobs",
        {
            "model": "partage/tiny-llama",
            "training_file": file_id,
            "hyperparameters": {
                "n_epochs": epochs,
                "batch_size": batch,
                "learning_rate_multiplier": 10,
            },
            "suffix": "k8s",
            "seed": 7,
        },
        format="json",
    )
    assert response.status_code == 200, response.content
    return response.json()["id"]


def finished(job_id: str, timeout: float = 400) -> FineTuningJob:
    """The job is terminal and every attempt has ended (the trainer's exit report, or the
    reconciler, closes an attempt a moment after the adapter made the job succeed)."""
    wait_for(
        lambda: FineTuningJob.objects.get(pk=job_id).status in TERMINAL,
        timeout=timeout,
        what=f"{job_id} to finish",
    )
    wait_for(
        lambda: not JobAttempt.objects.filter(job_id=job_id, ended_at__isnull=True).exists(),
        timeout=120,
        what=f"every attempt of {job_id} to end",
    )
    return FineTuningJob.objects.get(pk=job_id)


def k8s_jobs(api: FakeKubeApiServer, job_id: str) -> list[dict[str, Any]]:
    return [j for j in api.list("jobs", NS) if j["metadata"]["labels"].get(K.LABEL_JOB) == job_id]


def jobs_ever_created(api: FakeKubeApiServer, job_id: str) -> list[str]:
    """Names of every Job ever created for this job (from the API server's event history)."""
    with api.lock:
        return sorted(
            {
                obj["metadata"]["name"]
                for _rv, resource, _ns, kind, obj in api.events
                if resource == "jobs"
                and kind == "ADDED"
                and obj["metadata"]["labels"].get(K.LABEL_JOB) == job_id
            }
        )


def explain(job: FineTuningJob) -> str:
    events = [f"{e.level} {e.message}" for e in job.events.order_by("seq")]
    attempts = [
        (a.number, a.status, a.exit_code, a.reason, a.logs[-1500:]) for a in job.attempts.all()
    ]
    return f"{job.status} {job.error}\nevents: {events}\nattempts: {attempts}"


def running_pod(api: FakeKubeApiServer, job_name: str) -> dict[str, Any] | None:
    for pod in api.pods_of_job(NS, job_name):
        if pod["status"].get("phase") == "Running":
            return pod
    return None


def checkpoints(job_id: str) -> int:
    from marketplace.finetuning.models import Checkpoint

    return Checkpoint.objects.filter(job_id=job_id).count()


def assert_billed_once(job: FineTuningJob) -> None:
    from marketplace.billing.models import UsageRecord

    attempts = list(job.attempts.all())
    records = list(UsageRecord.objects.filter(job_id=job.pk))
    assert sorted(r.attempt_id for r in records) == sorted(a.pk for a in attempts)
    for record in records:
        attempt = next(a for a in attempts if a.pk == record.attempt_id)
        assert record.gpu_seconds == attempt.gpu_seconds


# ---------------------------------------------------------------- the happy path


def test_partner_path_on_kubernetes(
    alice: Any,
    client_a: Any,
    upload: Any,
    celery_worker_process: Any,
    cluster: FakeKubeApiServer,
    reconciler: Any,
    tmp_path: Path,
) -> None:
    from tests.finetuning.adapters import assert_eval_report, extract

    celery_worker_process()
    job_id = submit(client_a, upload)
    job = finished(job_id)
    assert job.status == "succeeded", explain(job)
    (attempt,) = job.attempts.all()
    assert attempt.executor == "kubernetes" and attempt.handle == f"default/{NS}/{attempt.name}"
    (k8s_job,) = k8s_jobs(cluster, job_id)
    assert k8s_job["metadata"]["name"] == attempt.name
    labels = k8s_job["metadata"]["labels"]
    assert labels[K.LABEL_ATTEMPT] == "1" and labels[K.LABEL_ORG] == job.organization.public_id
    container = k8s_job["spec"]["template"]["spec"]["containers"][0]
    assert container["image"] == DIGEST and container["command"] == [
        "python",
        "-m",
        "workers.agent",
    ]
    # the pod ran the agent; its log is the trainer's output and is kept on the attempt
    wait_for(
        lambda: cluster.get("jobs", NS, attempt.name)["status"].get("succeeded") == 1, timeout=60
    )
    body = client_a.get(f"/v1/fine_tuning/jobs/{job_id}").json()
    assert body["status"] == "succeeded" and len(body["result_files"]) == 2
    evaluation = client_a.get(f"/v1/files/{body['result_files'][1]}/content")
    assert_eval_report(b"".join(evaluation.streaming_content), job_id=job_id)
    events = client_a.get(f"/v1/fine_tuning/jobs/{job_id}/events?limit=100").json()["data"]
    assert any(e["type"] == "metrics" for e in events)
    archive = client_a.get(f"/v1/files/{body['result_files'][0]}/content")
    assert archive.status_code == 200
    adapter = extract(b"".join(archive.streaming_content), tmp_path / "adapter")
    assert (adapter / "adapter_model.safetensors").exists()
    # the pod's log was captured before anything deleted it, and its owner sees it
    (pod,) = cluster.pods_of_job(NS, attempt.name)
    pod_log = cluster.pod_log(NS, pod["metadata"]["name"]).strip()
    assert pod_log
    wait_for(lambda: pod_log in JobAttempt.objects.get(pk=attempt.pk).logs, timeout=30)
    alice_web = Client()
    alice_web.force_login(alice)
    page = alice_web.get(f"/jobs/{job_id}/").content.decode()
    # The page shows the log cleaned for a person; the raw one is a click away.
    from marketplace.portal.logs import log_for_user

    assert escape(log_for_user(pod_log).splitlines()[-1]) in page
    raw = alice_web.get(f"/jobs/{job_id}/attempts/{attempt.number}/log/").content.decode()
    assert pod_log.splitlines()[-1] in raw
    assert_billed_once(job)


# ---------------------------------------------------------------- faults


def test_worker_killed_during_dispatch_creates_exactly_one_job(
    client_a: Any,
    upload: Any,
    celery_worker_process: Any,
    beat: Any,
    cluster: FakeKubeApiServer,
    reconciler: Any,
) -> None:
    # The first create reaches the API server but its answer is lost; later creates fail, so
    # the worker is inside the dispatch task, retrying, when it is killed.
    cluster.fail_next(1, 500, after_apply=True, methods=("POST",))
    cluster.fail_for(20, 503, methods=("POST",))
    worker = celery_worker_process()
    beat()
    job_id = submit(client_a, upload, epochs=1)
    wait_for(
        lambda: cluster.count_requests("POST", "/jobs") >= 2, timeout=120, what="dispatch retries"
    )
    os.killpg(worker.pid, signal.SIGKILL)
    worker.wait(timeout=30)
    assert len(k8s_jobs(cluster, job_id)) == 1  # created, but Partage never heard it was
    assert JobAttempt.objects.get(job_id=job_id).handle == ""
    celery_worker_process()
    job = finished(job_id, timeout=500)
    assert job.status == "succeeded", explain(job)
    assert jobs_ever_created(cluster, job_id) == [f"ft-{job_id.removeprefix('ftjob-')}-a1"]
    assert job.attempts.count() == 1
    assert_billed_once(job)


def test_pod_evicted_mid_training_resumes_from_checkpoint_and_is_billed_once(
    client_a: Any,
    upload: Any,
    celery_worker_process: Any,
    cluster: FakeKubeApiServer,
    reconciler: Any,
) -> None:
    celery_worker_process()
    # 256 steps: still training when the eviction lands, even on a quiet machine
    job_id = submit(client_a, upload, lines=32, epochs=8, batch=1)
    first = wait_for(
        lambda: JobAttempt.objects.filter(job_id=job_id, number=1).first(), timeout=120
    )
    wait_for(
        lambda: FineTuningJob.objects.get(pk=job_id).progress.get("step", 0) >= 2,
        timeout=300,
        what="training progress",
    )
    pod = running_pod(cluster, first.name)
    assert pod is not None
    cluster.evict(NS, pod["metadata"]["name"])  # DisruptionTarget, SIGTERM, grace, SIGKILL
    job = finished(job_id, timeout=500)
    assert job.status == "succeeded", explain(job)
    attempts = list(job.attempts.order_by("number"))
    assert [a.status for a in attempts] == ["disrupted", "succeeded"], explain(job)
    assert attempts[0].exit_code == 4
    assert checkpoints(job_id) >= 1
    assert any("resum" in e.message.lower() for e in job.events.all()), explain(job)
    evicted = cluster.get("pods", NS, pod["metadata"]["name"])
    if evicted is not None:  # not yet garbage-collected
        assert any(c["type"] == "DisruptionTarget" for c in evicted["status"]["conditions"])
    assert sorted(jobs_ever_created(cluster, job_id)) == sorted(a.name for a in attempts)
    # the first Job stopped for good (FailJob on exit 4): no replacement pod raced attempt 2
    first_job_pods = [
        p
        for p in cluster.list("pods", NS)
        if p["metadata"]["name"].startswith(attempts[0].name + "-")
    ]
    assert len(first_job_pods) <= 1
    assert_billed_once(job)


def test_watch_410_relists_and_misses_no_transition(
    client_a: Any,
    upload: Any,
    celery_worker_process: Any,
    cluster: FakeKubeApiServer,
    monkeypatch: Any,
) -> None:
    from workers.executors.kubernetes import ClusterRef, KubernetesExecutor
    from workers.reconciler import Target, Watcher

    monkeypatch.setenv("PARTAGE_K8S_BACKOFF_LIMIT", "0")
    celery_worker_process()
    job_id = submit(client_a, upload, lines=32, epochs=3, batch=2)
    attempt = wait_for(
        lambda: JobAttempt.objects.filter(job_id=job_id, number=1).exclude(handle="").first(),
        timeout=120,
    )
    watcher = Watcher(
        KubernetesExecutor(),
        Target(ClusterRef("kubeconfig", cluster.kubeconfig, "default"), NS),
        "jobs",
        timeout_seconds=2,
    )
    watcher.relist()
    pod = wait_for(lambda: running_pod(cluster, attempt.name), timeout=120)
    wait_for(lambda: FineTuningJob.objects.get(pk=job_id).status == "running", timeout=300)
    # The pod dies hard (no chance to report): only the Job's Failed condition tells Partage.
    # Then the history holding that transition is compacted: the watch answers 410.
    cluster.crash(NS, pod["metadata"]["name"])
    wait_for(
        lambda: any(
            c["type"] == "Failed"
            for c in cluster.get("jobs", NS, attempt.name)["status"].get("conditions", [])
        ),
        timeout=60,
    )
    cluster.expire_watches()
    watcher.run_once()  # 410 → marks the version stale
    assert watcher.version is None
    watcher.run_once()  # relist: the failed Job is applied
    job = FineTuningJob.objects.get(pk=job_id)
    attempt.refresh_from_db()
    assert attempt.ended_at is not None and attempt.exit_code == 137, explain(job)
    assert job.status == "failed" and job.failure_class == "platform_error", explain(job)
    assert ("LISTED", "observed-failed") in watcher.handled
    assert_billed_once(job)


def test_api_server_500s_and_429s_for_a_while_no_duplicate_job(
    client_a: Any,
    upload: Any,
    celery_worker_process: Any,
    cluster: FakeKubeApiServer,
    reconciler: Any,
) -> None:
    cluster.fail_next(3, 429, retry_after=1)
    cluster.fail_for(6, 500)
    celery_worker_process()
    job_id = submit(client_a, upload, epochs=1)
    job = finished(job_id)
    assert job.status == "succeeded", explain(job)
    statuses = {s for _m, _p, s in cluster.requests}
    assert {429, 500} <= statuses
    assert jobs_ever_created(cluster, job_id) == [job.attempts.get().name]
    assert_billed_once(job)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def own_redis(settings: Any, tmp_path: Path) -> Iterator[Callable[[], None]]:
    """A private redis-server (never the shared one), and a way to restart it empty."""
    from workers.celery import app

    port = _free_port()
    argv = [
        "redis-server",
        "--port",
        str(port),
        "--bind",
        "127.0.0.1",
        "--save",
        "",
        "--appendonly",
        "no",
        "--dir",
        str(tmp_path),
    ]
    state: dict[str, subprocess.Popen[bytes]] = {}

    def start() -> None:
        state["p"] = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        wait_for(lambda: _ping(port), timeout=20, interval=0.1)

    def restart() -> None:
        state["p"].kill()
        state["p"].wait(timeout=10)
        time.sleep(2)
        start()

    start()
    saved = (settings.REDIS_URL, app.conf.broker_url)
    settings.REDIS_URL = f"redis://127.0.0.1:{port}/0"
    settings.CACHES = {  # as in the worker: cache and broker on the same Redis
        "default": {**settings.CACHES["default"], "LOCATION": settings.REDIS_URL}
    }
    app.conf.broker_url = settings.REDIS_URL
    app.close()
    yield restart
    settings.REDIS_URL, app.conf.broker_url = saved
    app.close()
    state["p"].kill()
    state["p"].wait(timeout=10)


def _ping(port: int) -> bool:
    import redis

    try:
        return bool(redis.Redis(port=port, socket_timeout=0.5).ping())
    except redis.RedisError:
        return False


def test_redis_restart_with_jobs_in_flight(
    own_redis: Callable[[], None],
    client_a: Any,
    upload: Any,
    celery_worker_process: Any,
    beat: Any,
    cluster: FakeKubeApiServer,
    reconciler: Any,
) -> None:
    celery_worker_process()
    beat()
    first = submit(client_a, upload, lines=16, epochs=2, batch=2)
    wait_for(lambda: FineTuningJob.objects.get(pk=first).status == "running", timeout=300)
    second = submit(client_a, upload, epochs=1)
    own_redis()  # every queued message is gone, the worker and beat lose their connection
    jobs = [finished(first, timeout=600), finished(second, timeout=600)]
    for job in jobs:
        assert job.status == "succeeded", explain(job)
        assert len(jobs_ever_created(cluster, job.pk)) == job.attempts.count()
        assert_billed_once(job)
