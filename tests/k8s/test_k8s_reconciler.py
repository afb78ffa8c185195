"""The reconciler and the stop path against the fake API server, on the test database.

Each attempt's Job is the executor's own manifest with a stand-in container command, run by
the fake kubelet as a local process, so its pod has a real log to capture.
"""

from __future__ import annotations

import copy
import json
import logging
import sys
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from django.utils import timezone

from marketplace.finetuning import services
from marketplace.finetuning.models import FineTuningJob, JobAttempt
from tests.conftest import chat_lines, jsonl
from tests.fakes.kube_apiserver import FakeKubeApiServer
from workers import dispatch
from workers.executors import k8s_constants as K
from workers.executors.base import Phase
from workers.executors.kubernetes import (
    ClusterRef,
    JobConfig,
    KubernetesExecutor,
    RetryPolicy,
    job_manifest,
    token_secret_manifest,
)
from workers.reconciler import Target, Watcher, collect_stale, handle

DIGEST = "registry.example/partage/trainer@sha256:" + "c" * 64
NS = "partage-jobs"
FAST = RetryPolicy(attempts=4, base_delay=0.01, max_delay=0.05, max_retry_after=0.2)
SAYS = "print('hello from the pod', flush=True); import time; time.sleep({sleep})"


@pytest.fixture
def cluster(kubelet_api: FakeKubeApiServer, settings: Any) -> Iterator[FakeKubeApiServer]:
    settings.PARTAGE_EXECUTOR = "kubernetes"
    settings.PARTAGE_K8S_IMAGE = DIGEST
    settings.PARTAGE_K8S_KUBECONFIG = kubelet_api.kubeconfig
    settings.PARTAGE_K8S_TERMINATION_GRACE_SECONDS = 2
    yield kubelet_api


def executor() -> KubernetesExecutor:
    return KubernetesExecutor(retry=FAST, config=JobConfig(image=DIGEST, namespace=NS))


def target(api: FakeKubeApiServer) -> Target:
    return Target(ClusterRef("kubeconfig", api.kubeconfig, "default"), NS)


def launched_attempt(client: Any, upload: Any, api: FakeKubeApiServer, code: str) -> JobAttempt:
    """A job admitted and launched: its Job is the real manifest, its pod runs `code`."""
    from marketplace.quotas.services import admission_pass

    file_id = upload(jsonl(chat_lines(8))).json()["id"]
    body = {"model": "partage/tiny-llama", "training_file": file_id}
    job_id = client.post("/v1/fine_tuning/jobs", body, format="json").json()["id"]
    assert job_id in admission_pass()
    attempt = services.attempt_for_dispatch(job_id=job_id)
    assert attempt is not None
    spec = dispatch.launch_spec(attempt)
    config = JobConfig.from_settings()
    manifest = copy.deepcopy(job_manifest(spec, config))
    manifest["spec"]["template"]["spec"]["containers"][0]["command"] = [sys.executable, "-c", code]
    created = api.create("jobs", NS, manifest)
    api.create(
        "secrets", NS, token_secret_manifest(spec, config, job_uid=created["metadata"]["uid"])
    )
    services.attempt_launched(attempt=attempt, handle=executor().handle(spec))
    api.wait_for(lambda: "hello from the pod" in _pod_log(api, attempt.name), timeout=30)
    return JobAttempt.objects.select_related("job").get(pk=attempt.pk)


def _pod_log(api: FakeKubeApiServer, job_name: str) -> str:
    return "".join(api.pod_log(NS, p["metadata"]["name"]) for p in api.pods_of_job(NS, job_name))


def job_event(api: FakeKubeApiServer, name: str, type_: str = "MODIFIED") -> Any:
    from workers.executors.kubernetes import _event

    obj = api.get("jobs", NS, name)
    assert obj is not None
    return _event(type_, "jobs", obj)


def end_as_reported(attempt: JobAttempt, *, ago: float = 0.0) -> None:
    """The trainer reported its end (here: a failure, with its own short log)."""
    services.attempt_ended(attempt_id=attempt.pk, phase=Phase.FAILED, exit_code=1, logs="short")
    if ago:
        JobAttempt.objects.filter(pk=attempt.pk).update(
            ended_at=timezone.now() - timedelta(seconds=ago)
        )


# ---------------------------------------------------------------- stale and orphan Jobs


@pytest.mark.django_db
def test_a_job_whose_attempt_just_ended_is_left_to_finish_then_deleted_with_its_log_kept(
    client_a: Any, upload: Any, cluster: FakeKubeApiServer
) -> None:
    attempt = launched_attempt(client_a, upload, cluster, SAYS.format(sleep=60))
    end_as_reported(attempt)
    event = job_event(cluster, attempt.name)
    assert not event.terminal
    assert handle(event, executor(), target(cluster)) == "ending"
    assert cluster.get("jobs", NS, attempt.name) is not None  # left alone within the grace
    JobAttempt.objects.filter(pk=attempt.pk).update(
        ended_at=timezone.now() - timedelta(seconds=120)
    )
    assert collect_stale(executor(), [target(cluster)]) == 1
    assert cluster.get("jobs", NS, attempt.name) is None
    assert cluster.pods_of_job(NS, attempt.name) == []  # background propagation
    assert "hello from the pod" in JobAttempt.objects.get(pk=attempt.pk).logs  # read first
    assert collect_stale(executor(), [target(cluster)]) == 0


ORPHAN = {
    "metadata": {
        "name": "ft-nobody-a1",
        "labels": {
            K.LABEL_MANAGED_BY: K.MANAGED_BY,
            K.LABEL_COMPONENT: K.COMPONENT_TRAINING,
            K.LABEL_JOB: "ftjob-nobody",
            K.LABEL_ATTEMPT: "1",
        },
    },
    "spec": {"template": {"spec": {"containers": [{"name": "x", "command": ["true"]}]}}},
}


@pytest.mark.django_db
def test_a_job_no_attempt_owns_is_deleted(cluster: FakeKubeApiServer) -> None:
    cluster.create("jobs", NS, copy.deepcopy(ORPHAN))
    assert handle(job_event(cluster, "ft-nobody-a1", "ADDED"), executor(), target(cluster)) == (
        "deleted-orphan"
    )
    assert cluster.get("jobs", NS, "ft-nobody-a1") is None


# ---------------------------------------------------------------- logs


@pytest.mark.django_db
def test_the_finished_pods_log_replaces_the_shorter_report(
    client_a: Any, upload: Any, cluster: FakeKubeApiServer
) -> None:
    attempt = launched_attempt(client_a, upload, cluster, SAYS.format(sleep=0) + "; exit(1)")
    end_as_reported(attempt)
    cluster.wait_for(lambda: job_event(cluster, attempt.name).terminal, timeout=30)
    assert handle(job_event(cluster, attempt.name), executor(), target(cluster)) == "ended"
    assert "hello from the pod" in JobAttempt.objects.get(pk=attempt.pk).logs
    assert cluster.get("jobs", NS, attempt.name) is not None  # a finished Job is left to its TTL


@pytest.mark.django_db
def test_a_longer_log_is_never_replaced_by_a_shorter_one(
    client_a: Any, upload: Any, cluster: FakeKubeApiServer
) -> None:
    attempt = launched_attempt(client_a, upload, cluster, SAYS.format(sleep=60))
    assert services.attempt_logs_capture(attempt_id=attempt.pk, logs="a long pod log " * 10)
    assert not services.attempt_logs_capture(attempt_id=attempt.pk, logs="short")
    end_as_reported(attempt)  # the report ("short") does not erase the captured log
    assert JobAttempt.objects.get(pk=attempt.pk).logs == "a long pod log " * 10


@pytest.mark.django_db
def test_cancel_keeps_the_pods_log_then_deletes_in_the_background(
    client_a: Any, upload: Any, cluster: FakeKubeApiServer
) -> None:
    attempt = launched_attempt(client_a, upload, cluster, SAYS.format(sleep=60))
    assert client_a.post(f"/v1/fine_tuning/jobs/{attempt.job_id}/cancel").status_code == 200
    dispatch.job_stop(job_id=attempt.job_id)  # what the partage.job_stop task runs
    assert cluster.get("jobs", NS, attempt.name) is None
    assert cluster.pods_of_job(NS, attempt.name) == []
    deletes = [p for m, p, _ in cluster.requests if m == "DELETE" and "/jobs/" in p]
    assert deletes and all("propagationPolicy=Background" in p for p in deletes)
    # the reconciler sees the Job vanish: the attempt ends cancelled, its log kept
    watcher = Watcher(executor(), target(cluster), "jobs", timeout_seconds=1)
    watcher.relist()
    assert ("VANISHED", "observed-missing") in watcher.handled
    attempt.refresh_from_db()
    assert attempt.status == JobAttempt.Status.CANCELLED
    assert "hello from the pod" in attempt.logs
    assert FineTuningJob.objects.get(pk=attempt.job_id).status == "cancelled"


# ---------------------------------------------------------------- structured logs


@pytest.mark.django_db
def test_reconciler_logs_are_json_with_job_and_org(
    client_a: Any, upload: Any, cluster: FakeKubeApiServer, caplog: Any
) -> None:
    from marketplace.logging import JsonFormatter

    attempt = launched_attempt(client_a, upload, cluster, SAYS.format(sleep=60))
    end_as_reported(attempt, ago=120)
    with caplog.at_level(logging.INFO, logger="partage"):
        assert collect_stale(executor(), [target(cluster)]) == 1
    (record,) = [r for r in caplog.records if r.name == "partage.reconciler"]
    line = json.loads(JsonFormatter().format(record))
    assert line["job_id"] == attempt.job_id
    assert line["org_id"] == attempt.job.organization.public_id
    assert line["level"] == "info" and "deleting Job" in line["message"]


# ---------------------------------------------------------------- 410 Gone


# Transactional: run_once closes the thread's connection between rounds, as a long-running
# watcher must, which would end a test wrapped in a transaction.
@pytest.mark.django_db(transaction=True)
def test_a_watch_that_ends_with_410_relists_and_misses_no_transition(
    client_a: Any, upload: Any, cluster: FakeKubeApiServer, settings: Any
) -> None:
    settings.PARTAGE_K8S_BACKOFF_LIMIT = 0  # one pod failure fails the Job
    attempt = launched_attempt(client_a, upload, cluster, SAYS.format(sleep=60))
    watcher = Watcher(executor(), target(cluster), "jobs", timeout_seconds=1)
    watcher.relist()
    (pod,) = cluster.pods_of_job(NS, attempt.name)
    cluster.crash(NS, pod["metadata"]["name"])  # dies without reporting: only the Job tells
    cluster.wait_for(lambda: job_event(cluster, attempt.name).terminal, timeout=30)
    cluster.expire_watches()  # the history holding the transition is compacted away
    watcher.run_once()
    assert watcher.version is None, watcher.handled  # 410: the version is stale
    assert JobAttempt.objects.get(pk=attempt.pk).ended_at is None  # nothing seen yet
    watcher.run_once()  # relist: the failed Job is applied
    assert ("LISTED", "observed-failed") in watcher.handled
    attempt.refresh_from_db()
    assert attempt.ended_at is not None and attempt.exit_code == 137
    assert "hello from the pod" in attempt.logs


# ---------------------------------------------------------------- several clusters


@pytest.mark.django_db
def test_every_cluster_connection_is_watched_and_holds_only_a_reference(
    cluster: FakeKubeApiServer, tmp_path: Any
) -> None:
    from marketplace.capacity.models import ClusterConnection
    from marketplace.capacity.services import cluster_connection_create
    from workers.reconciler import targets

    with FakeKubeApiServer(kubeconfig_dir=str(tmp_path)) as other:
        cluster_connection_create(name="provider-b", credentials_ref=other.kubeconfig)
        cluster_connection_create(name="provider-c", credentials_ref="provider-c-kubeconfig")
        found = {t.ref.name: t for t in targets(executor())}
        assert set(found) == {"provider-b", "provider-c", "default"}
        assert found["provider-b"].ref.credentials_ref == other.kubeconfig
        # the database holds where the credentials are (a path, or a Secret's name), never them
        for connection in ClusterConnection.objects.all():
            assert "token" not in connection.credentials_ref
            assert not connection.credentials_ref.startswith("{")
        # a Secret's name is read from its mount under PARTAGE_K8S_CREDENTIALS_DIR
        mounted = tmp_path / "secrets" / "provider-c-kubeconfig"
        mounted.mkdir(parents=True)
        (mounted / "kubeconfig").write_text(Path(cluster.kubeconfig).read_text())
        ex = KubernetesExecutor(
            retry=FAST, config=JobConfig(image=DIGEST, credentials_dir=str(tmp_path / "secrets"))
        )
        orphan = copy.deepcopy(ORPHAN)
        orphan["metadata"]["name"] = "ft-c-a1"
        cluster.create("jobs", NS, orphan)
        items, _version = ex.list_managed(found["provider-c"].ref, NS)
        assert [item.name for item in items] == ["ft-c-a1"]  # reached through the mounted file
