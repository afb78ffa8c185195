"""The fake API server, driven by the official kubernetes client: wire format, faults, kubelet."""

from __future__ import annotations

import json
import sys

import pytest
from kubernetes import client, config, watch
from kubernetes.client.rest import ApiException

NS = "training"


def _clients(api):
    configuration = client.Configuration()
    config.load_kube_config(config_file=api.kubeconfig, client_configuration=configuration)
    configuration.retries = False  # see every answer on the wire (urllib3 would retry a 429)
    api_client = client.ApiClient(configuration)
    return client.BatchV1Api(api_client), client.CoreV1Api(api_client)


def _job(name: str, argv: list[str], **spec) -> dict:
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name, "labels": {"app": "t", "run": name}},
        "spec": {
            "backoffLimit": 0,
            "template": {
                "metadata": {"labels": {"app": "t"}},
                "spec": {
                    "restartPolicy": "Never",
                    "terminationGracePeriodSeconds": 5,
                    "containers": [
                        {
                            "name": "trainer",
                            "image": "x",
                            "command": argv[:1],
                            "args": argv[1:],
                            "env": [{"name": "GREETING", "value": "bonjour"}],
                        }
                    ],
                },
            },
            **spec,
        },
    }


def _condition(job, type_):
    for cond in job.status.conditions or []:
        if cond.type == type_ and cond.status == "True":
            return cond
    return None


def test_create_get_list_and_resource_versions(fake_api):
    batch, _ = _clients(fake_api)
    created = batch.create_namespaced_job(NS, _job("a", ["true"]))
    assert created.metadata.uid and created.metadata.resource_version
    assert created.metadata.namespace == NS
    got = batch.read_namespaced_job("a", NS)
    assert got.metadata.resource_version == created.metadata.resource_version
    batch.create_namespaced_job(NS, _job("b", ["true"]))
    listed = batch.list_namespaced_job(NS, label_selector="app=t")
    assert sorted(j.metadata.name for j in listed.items) == ["a", "b"]
    assert int(listed.metadata.resource_version) > int(created.metadata.resource_version)
    assert [
        j.metadata.name for j in batch.list_namespaced_job(NS, label_selector="run=b").items
    ] == ["b"]
    assert batch.list_namespaced_job("other").items == []


def test_404_and_409_are_status_objects(fake_api):
    batch, _ = _clients(fake_api)
    with pytest.raises(ApiException) as missing:
        batch.read_namespaced_job("nope", NS)
    assert missing.value.status == 404
    assert json.loads(missing.value.body)["reason"] == "NotFound"
    batch.create_namespaced_job(NS, _job("a", ["true"]))
    with pytest.raises(ApiException) as dup:
        batch.create_namespaced_job(NS, _job("a", ["true"]))
    body = json.loads(dup.value.body)
    assert dup.value.status == 409
    assert (body["kind"], body["reason"], body["details"]["name"]) == (
        "Status",
        "AlreadyExists",
        "a",
    )


def test_watch_streams_events_from_a_resource_version(fake_api):
    batch, _ = _clients(fake_api)
    rv = batch.list_namespaced_job(NS).metadata.resource_version
    batch.create_namespaced_job(NS, _job("a", ["true"]))
    batch.delete_namespaced_job("a", NS, propagation_policy="Background")
    events = list(
        watch.Watch().stream(
            batch.list_namespaced_job,
            NS,
            resource_version=rv,
            timeout_seconds=1,
            _request_timeout=5,
        )
    )
    assert [(e["type"], e["object"].metadata.name) for e in events] == [
        ("ADDED", "a"),
        ("DELETED", "a"),
    ]
    assert isinstance(events[0]["object"], client.V1Job)


def test_watch_from_a_compacted_resource_version_gets_410(fake_api):
    batch, _ = _clients(fake_api)
    rv = batch.list_namespaced_job(NS).metadata.resource_version
    batch.create_namespaced_job(NS, _job("a", ["true"]))
    fake_api.expire_watches()
    with pytest.raises(ApiException) as gone:
        list(
            watch.Watch().stream(
                batch.list_namespaced_job,
                NS,
                resource_version=rv,
                timeout_seconds=1,
                _request_timeout=5,
            )
        )
    assert gone.value.status == 410
    # the relist gives a fresh resourceVersion from which the watch works again
    fresh = batch.list_namespaced_job(NS).metadata.resource_version
    batch.create_namespaced_job(NS, _job("b", ["true"]))
    events = list(
        watch.Watch().stream(
            batch.list_namespaced_job,
            NS,
            resource_version=fresh,
            timeout_seconds=1,
            _request_timeout=5,
        )
    )
    assert [e["object"].metadata.name for e in events] == ["b"]


def test_open_watch_ends_with_410_when_expired(fake_api):
    import threading

    batch, _ = _clients(fake_api)
    rv = batch.list_namespaced_job(NS).metadata.resource_version
    threading.Timer(0.3, fake_api.expire_watches).start()
    with pytest.raises(ApiException) as gone:
        list(
            watch.Watch().stream(
                batch.list_namespaced_job,
                NS,
                resource_version=rv,
                timeout_seconds=10,
                _request_timeout=15,
            )
        )
    assert gone.value.status == 410


def test_fault_injection_429_with_retry_after_and_500(fake_api):
    batch, _ = _clients(fake_api)
    fake_api.fail_next(1, 429, retry_after=2)
    with pytest.raises(ApiException) as throttled:
        batch.list_namespaced_job(NS)
    assert throttled.value.status == 429
    assert throttled.value.headers["Retry-After"] == "2"
    fake_api.fail_next(2, 500)
    for _ in range(2):
        with pytest.raises(ApiException) as broken:
            batch.list_namespaced_job(NS)
        assert broken.value.status == 500
    assert batch.list_namespaced_job(NS).items == []
    fake_api.fail_for(0.5, 500, methods=("POST",))
    with pytest.raises(ApiException):
        batch.create_namespaced_job(NS, _job("a", ["true"]))
    assert batch.list_namespaced_job(NS).items == []  # GETs pass, the POST did not apply


def test_lost_response_fault_applies_the_write(fake_api):
    batch, _ = _clients(fake_api)
    fake_api.fail_next(1, 500, after_apply=True, methods=("POST",))
    with pytest.raises(ApiException):
        batch.create_namespaced_job(NS, _job("a", ["true"]))
    assert [j.metadata.name for j in batch.list_namespaced_job(NS).items] == ["a"]


def test_background_propagation_deletes_pods_orphan_keeps_them(kubelet_api):
    batch, core = _clients(kubelet_api)
    sleeper = [sys.executable, "-c", "import time; time.sleep(60)"]
    for name in ("bg", "orphan"):
        batch.create_namespaced_job(NS, _job(name, sleeper))
        kubelet_api.wait_for(lambda n=name: kubelet_api.pods_of_job(NS, n))
    batch.delete_namespaced_job("bg", NS, propagation_policy="Background")
    batch.delete_namespaced_job("orphan", NS)
    assert kubelet_api.pods_of_job(NS, "bg") == []
    assert len(kubelet_api.pods_of_job(NS, "orphan")) == 1
    with pytest.raises(ApiException) as gone:
        core.read_namespaced_pod_log("bg-x", NS)
    assert gone.value.status == 404


def test_kubelet_runs_the_container_and_completes_the_job(kubelet_api):
    batch, core = _clients(kubelet_api)
    code = "import os; print('hello', os.environ['GREETING'])"
    batch.create_namespaced_job(NS, _job("ok", [sys.executable, "-c", code]))
    kubelet_api.wait_for(lambda: _done(batch, "ok"))
    job = batch.read_namespaced_job("ok", NS)
    assert _condition(job, "Complete") and job.status.succeeded == 1
    (pod,) = core.list_namespaced_pod(NS, label_selector="batch.kubernetes.io/job-name=ok").items
    assert pod.status.phase == "Succeeded"
    assert pod.status.container_statuses[0].state.terminated.exit_code == 0
    assert core.read_namespaced_pod_log(pod.metadata.name, NS) == "hello bonjour\n"


def _done(batch, name):
    job = batch.read_namespaced_job(name, NS)
    return _condition(job, "Complete") or _condition(job, "Failed")


POLICY = {
    "rules": [
        {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]},
        {
            "action": "FailJob",
            "onExitCodes": {"containerName": "trainer", "operator": "In", "values": [3]},
        },
    ]
}


def test_pod_failure_policy_fails_the_job_on_user_error_exit_code(kubelet_api):
    batch, _core = _clients(kubelet_api)
    argv = [sys.executable, "-c", "raise SystemExit(3)"]
    batch.create_namespaced_job(NS, _job("user", argv, backoffLimit=3, podFailurePolicy=POLICY))
    kubelet_api.wait_for(lambda: _done(batch, "user"))
    job = batch.read_namespaced_job("user", NS)
    assert _condition(job, "Failed").reason == "PodFailurePolicy"
    assert _condition(job, "FailureTarget")
    assert len(kubelet_api.pods_of_job(NS, "user")) == 1  # no retry despite backoffLimit 3


def test_backoff_limit_counts_other_failures(kubelet_api):
    batch, _ = _clients(kubelet_api)
    argv = [sys.executable, "-c", "raise SystemExit(1)"]
    batch.create_namespaced_job(NS, _job("flaky", argv, backoffLimit=1, podFailurePolicy=POLICY))
    kubelet_api.wait_for(lambda: _done(batch, "flaky"))
    assert (
        _condition(batch.read_namespaced_job("flaky", NS), "Failed").reason
        == "BackoffLimitExceeded"
    )
    assert len(kubelet_api.pods_of_job(NS, "flaky")) == 2


def test_eviction_sends_sigterm_and_the_ignore_rule_replaces_the_pod(kubelet_api, tmp_path):
    batch, core = _clients(kubelet_api)
    marker = tmp_path / "evicted-once"
    code = (
        "import os, signal, sys, time, pathlib\n"
        f"m = pathlib.Path({str(marker)!r})\n"
        "if m.exists(): print('resumed'); sys.exit(0)\n"
        "def term(*a): m.write_text('x'); print('checkpointed', flush=True); sys.exit(4)\n"
        "signal.signal(signal.SIGTERM, term)\n"
        "print('training', flush=True)\n"
        "time.sleep(60)\n"
    )
    batch.create_namespaced_job(
        NS, _job("ev", [sys.executable, "-c", code], backoffLimit=0, podFailurePolicy=POLICY)
    )
    first = kubelet_api.wait_for(
        lambda: [
            p
            for p in kubelet_api.pods_of_job(NS, "ev")
            if "training" in kubelet_api.pod_log(NS, p["metadata"]["name"])
        ]
    )[0]
    kubelet_api.evict(NS, first["metadata"]["name"])
    kubelet_api.wait_for(lambda: _done(batch, "ev"))
    job = batch.read_namespaced_job("ev", NS)
    assert _condition(job, "Complete")  # backoffLimit 0, yet the disruption did not count
    pods = {p.metadata.name: p for p in core.list_namespaced_pod(NS).items}
    evicted = pods[first["metadata"]["name"]]
    assert evicted.status.phase == "Failed"
    assert evicted.status.container_statuses[0].state.terminated.exit_code == 4
    assert any(
        c.type == "DisruptionTarget" and c.status == "True" for c in evicted.status.conditions
    )
    assert "checkpointed" in core.read_namespaced_pod_log(evicted.metadata.name, NS)
    (replacement,) = [p for n, p in pods.items() if n != evicted.metadata.name]
    assert replacement.status.phase == "Succeeded"


def test_active_deadline_fails_the_job(kubelet_api):
    batch, _ = _clients(kubelet_api)
    argv = [sys.executable, "-c", "import time; time.sleep(60)"]
    batch.create_namespaced_job(NS, _job("slow", argv, activeDeadlineSeconds=1))
    kubelet_api.wait_for(lambda: _done(batch, "slow"), timeout=20)
    assert _condition(batch.read_namespaced_job("slow", NS), "Failed").reason == "DeadlineExceeded"
