"""The Job builder and KubernetesExecutor against the fake API server (no database needed)."""

from __future__ import annotations

import copy
import sys
from typing import Any

import pytest
from kubernetes import client, config

from workers.executors import k8s_constants as K
from workers.executors.base import LaunchSpec, Phase
from workers.executors.kubernetes import (
    ClusterRef,
    JobConfig,
    KubernetesExecutor,
    KubernetesPermanentError,
    KubernetesTemporaryError,
    ResourceVersionExpired,
    RetryPolicy,
    job_manifest,
    token_secret_manifest,
)

DIGEST = "registry.example/partage/trainer@sha256:" + "a" * 64
NS = "partage-jobs"


def make_spec(api: Any = None, *, attempt: int = 1, gpus: int = 2, **pool: Any) -> LaunchSpec:
    return LaunchSpec(
        job_id="ftjob-abc123",
        org_id="org-a1",
        attempt=attempt,
        name=f"ft-abc123-a{attempt}",
        callback_url="http://partage.partage.svc/internal/v1",
        token="signed-token-for-this-job",
        base_model="partage/tiny-llama",
        gpu_count=gpus,
        gpu_flavor="h100-80g",
        active_deadline_seconds=3600,
        pool={
            "pool_id": "pool-1",
            "cluster": "fake",
            "cluster_kind": "kubeconfig",
            "credentials_ref": api.kubeconfig if api else "",
            "namespace": NS,
            "node_selector": {"partage.io/pool": "pool-1"},
            "tolerations": [
                {
                    "key": "dedicated",
                    "operator": "Equal",
                    "value": "partage",
                    "effect": "NoSchedule",
                }
            ],
            "gpu_resource_name": "nvidia.com/gpu",
            "gpu_count": gpus,
            **pool,
        },
        env={"PARTAGE_MODEL_CACHE": "/host/path/ignored"},
    )


CONFIG = JobConfig(image=DIGEST)
FAST = RetryPolicy(attempts=4, base_delay=0.01, max_delay=0.05, max_retry_after=0.2)


def executor() -> KubernetesExecutor:
    return KubernetesExecutor(retry=FAST, config=CONFIG)


def raw_batch(api: Any) -> client.BatchV1Api:
    return client.BatchV1Api(config.new_client_from_config(config_file=api.kubeconfig))


def raw_core(api: Any) -> client.CoreV1Api:
    return client.CoreV1Api(config.new_client_from_config(config_file=api.kubeconfig))


# ---------------------------------------------------------------- the manifest


def test_manifest_follows_the_checklist():
    job = job_manifest(make_spec(), CONFIG)
    meta, spec = job["metadata"], job["spec"]
    pod = spec["template"]["spec"]
    (container,) = pod["containers"]
    assert meta["name"] == "ft-abc123-a1"
    assert meta["labels"][K.LABEL_JOB] == "ftjob-abc123"
    assert meta["labels"][K.LABEL_ORG] == "org-a1"
    assert meta["labels"][K.LABEL_ATTEMPT] == "1"
    assert meta["labels"][K.LABEL_MANAGED_BY] == "partage"
    assert spec["template"]["metadata"]["labels"] == meta["labels"]
    assert pod["restartPolicy"] == "Never" and spec["backoffLimit"] <= 3
    assert spec["podReplacementPolicy"] == "Failed"
    rules = spec["podFailurePolicy"]["rules"]
    assert {
        "action": "Ignore",
        "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}],
    } in rules
    fail = next(r for r in rules if r["action"] == "FailJob")
    assert 3 in fail["onExitCodes"]["values"] and fail["onExitCodes"]["operator"] == "In"
    assert spec["activeDeadlineSeconds"] == 3600 and spec["ttlSecondsAfterFinished"] > 0
    resources = container["resources"]
    assert resources["limits"]["nvidia.com/gpu"] == "2"
    assert resources["requests"] == {k: resources["limits"][k] for k in ("cpu", "memory")}
    assert pod["nodeSelector"] == {"partage.io/pool": "pool-1"}
    keys = [t["key"] for t in pod["tolerations"]]
    assert keys == ["dedicated", "nvidia.com/gpu"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    assert volumes[mounts["/dev/shm"]["name"]]["emptyDir"]["medium"] == "Memory"
    assert mounts["/models"]["readOnly"] is True
    assert volumes[mounts["/models"]["name"]]["persistentVolumeClaim"]["readOnly"] is True
    assert "@sha256:" in container["image"]
    assert container["command"] == ["python", "-m", "workers.agent"]
    assert pod["automountServiceAccountToken"] is False
    assert pod["securityContext"]["runAsNonRoot"] is True
    sc = container["securityContext"]
    assert sc["allowPrivilegeEscalation"] is False and sc["capabilities"]["drop"] == ["ALL"]
    assert sc["seccompProfile"]["type"] == "RuntimeDefault"
    assert pod["terminationGracePeriodSeconds"] >= 60
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["PARTAGE_JOB_ID"] == "ftjob-abc123" and env["PARTAGE_ATTEMPT"] == "1"
    assert env["PARTAGE_MODEL_CACHE"] == "/models"  # the pod's mount, not the web host's path


def test_manifest_without_gpus_has_no_gpu_limit_or_toleration():
    pod = job_manifest(make_spec(gpus=0), CONFIG)["spec"]["template"]["spec"]
    assert "nvidia.com/gpu" not in pod["containers"][0]["resources"]["limits"]
    assert [t["key"] for t in pod["tolerations"]] == ["dedicated"]


def test_manifest_is_deterministic_per_attempt():
    assert job_manifest(make_spec(), CONFIG) == job_manifest(make_spec(), CONFIG)
    assert job_manifest(make_spec(attempt=2), CONFIG)["metadata"]["name"] == "ft-abc123-a2"


def test_image_must_be_pinned_by_digest():
    from django.core.exceptions import ImproperlyConfigured

    with pytest.raises(ImproperlyConfigured):
        JobConfig(image="ghcr.io/partage/trainer:latest").check(production=False)
    with pytest.raises(ImproperlyConfigured):
        JobConfig().check(production=True)  # the placeholder digest is refused in production


def test_rendered_job_passes_kubernetes_validate_strict():
    import kubernetes_validate
    from kubernetes_validate.utils import latest_version

    kubernetes_validate.validate(job_manifest(make_spec(), CONFIG), latest_version(), strict=True)
    broken = job_manifest(make_spec(), CONFIG)
    broken["spec"]["template"]["spec"]["containers"][0]["gpuz"] = 1
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, latest_version(), strict=True)


# ---------------------------------------------------------------- create, adopt, retry


def test_launch_is_idempotent_one_job(fake_api):
    spec = make_spec(fake_api)
    first = executor().launch(spec)
    second = executor().launch(spec)
    assert first == second == f"fake/{NS}/ft-abc123-a1"
    assert [j["metadata"]["name"] for j in fake_api.list("jobs", NS)] == ["ft-abc123-a1"]
    assert fake_api.count_requests("POST", "/jobs") == 2


def test_launch_refuses_to_adopt_a_job_that_is_not_ours(fake_api):
    foreign = job_manifest(make_spec(fake_api), CONFIG)
    foreign["metadata"]["labels"][K.LABEL_JOB] = "ftjob-someone-else"
    raw_batch(fake_api).create_namespaced_job(NS, foreign)
    with pytest.raises(KubernetesPermanentError) as error:
        executor().launch(make_spec(fake_api))
    assert error.value.status == 409


def test_lost_create_response_is_retried_and_adopted(fake_api):
    fake_api.fail_next(1, 500, after_apply=True, methods=("POST",))
    executor().launch(make_spec(fake_api))
    assert len(fake_api.list("jobs", NS)) == 1
    assert fake_api.count_requests("POST", "/jobs") == 2


def test_429_with_retry_after_and_500s_are_retried(fake_api):
    fake_api.fail_next(2, 429, retry_after=1)
    fake_api.fail_next(1, 503)
    executor().launch(make_spec(fake_api))
    assert len(fake_api.list("jobs", NS)) == 1
    statuses = [s for m, p, s in fake_api.requests if m == "POST" and p.endswith("/jobs")]
    assert statuses == [429, 429, 503, 201]


def test_persistent_5xx_is_a_temporary_error(fake_api):
    fake_api.fail_for(30, 500)
    with pytest.raises(KubernetesTemporaryError) as error:
        executor().launch(make_spec(fake_api))
    assert isinstance(error.value, ConnectionError)  # Celery's autoretry_for picks it up
    assert isinstance(error.value.__cause__, client.ApiException)
    assert fake_api.count_requests("POST", "/jobs") == FAST.attempts


def test_client_errors_are_permanent_and_not_retried(fake_api):
    fake_api.fail_next(1, 422)
    with pytest.raises(KubernetesPermanentError):
        executor().launch(make_spec(fake_api))
    assert fake_api.count_requests("POST", "/jobs") == 1


def test_unreachable_cluster_is_temporary(tmp_path):
    kubeconfig = tmp_path / "kc.json"
    kubeconfig.write_text(
        '{"apiVersion":"v1","kind":"Config","clusters":[{"name":"c","cluster":{"server":"http://127.0.0.1:9"}}],'
        '"users":[{"name":"u","user":{"token":"t"}}],"contexts":[{"name":"x","context":{"cluster":"c","user":"u"}}],'
        '"current-context":"x"}'
    )
    spec = make_spec(None, credentials_ref=str(kubeconfig))
    with pytest.raises(KubernetesTemporaryError):
        executor().launch(spec)


def test_each_cluster_has_its_own_connection(fake_api, tmp_path):
    from tests.fakes.kube_apiserver import FakeKubeApiServer

    with FakeKubeApiServer(kubeconfig_dir=str(tmp_path)) as other:
        ex = executor()
        ex.launch(make_spec(fake_api))
        ex.launch(make_spec(other, cluster="other"))
        assert len(fake_api.list("jobs", NS)) == 1 and len(other.list("jobs", NS)) == 1
        assert len(ex.connections._clients) == 2
        ex.launch(make_spec(fake_api, pool_id="pool-2"))  # same cluster, another pool
        assert len(ex.connections._clients) == 2


# ---------------------------------------------------------------- status, cancel, logs


def _run_with(api: Any, spec: LaunchSpec, code: str, **spec_changes: Any) -> None:
    """Create the attempt's Job, but with a stand-in container command (the pod's program)."""
    body = copy.deepcopy(job_manifest(spec, CONFIG))
    body["spec"]["template"]["spec"]["containers"][0]["command"] = [sys.executable, "-c", code]
    body["spec"].update(spec_changes)
    created = raw_batch(api).create_namespaced_job(NS, body)
    secret = token_secret_manifest(spec, CONFIG, job_uid=created.metadata.uid)
    raw_core(api).create_namespaced_secret(NS, secret)


def _wait_phase(api: Any, spec: LaunchSpec, phases: set[Phase]) -> Any:
    ex = executor()
    return api.wait_for(lambda: (s := ex.status(spec)).phase in phases and s, timeout=30)


def test_status_follows_the_job_to_success_and_logs_are_read(kubelet_api):
    spec = make_spec(kubelet_api)
    _run_with(
        kubelet_api,
        spec,
        "import time,os; print('step 1', os.environ['PARTAGE_JOB_ID'], flush=True); time.sleep(4)",
    )
    assert _wait_phase(kubelet_api, spec, {Phase.RUNNING}).phase == Phase.RUNNING
    seen = _wait_phase(kubelet_api, spec, {Phase.SUCCEEDED, Phase.FAILED})
    assert (seen.phase, seen.exit_code) == (Phase.SUCCEEDED, 0)
    assert executor().logs(spec) == "step 1 ftjob-abc123\n"


@pytest.mark.parametrize(
    ("code", "phase"),
    [(3, Phase.FAILED), (4, Phase.DISRUPTED), (1, Phase.FAILED)],
)
def test_reported_exit_codes_fail_the_job_at_once(kubelet_api, code, phase):
    spec = make_spec(kubelet_api)
    _run_with(kubelet_api, spec, f"raise SystemExit({code})")
    seen = _wait_phase(kubelet_api, spec, {Phase.SUCCEEDED, Phase.FAILED, Phase.DISRUPTED})
    assert (seen.phase, seen.exit_code) == (phase, code)
    assert "PodFailurePolicy" in seen.reason
    assert len(kubelet_api.pods_of_job(NS, spec.name)) == 1  # no replacement pod


def test_deadline_is_a_failure(kubelet_api):
    spec = make_spec(kubelet_api)
    _run_with(kubelet_api, spec, "import time; time.sleep(30)", activeDeadlineSeconds=1)
    seen = _wait_phase(kubelet_api, spec, {Phase.FAILED, Phase.DISRUPTED})
    assert seen.phase == Phase.FAILED and "time limit" in seen.reason


def test_missing_job_is_missing(fake_api):
    assert executor().status(make_spec(fake_api)).phase == Phase.MISSING


def test_cancel_deletes_job_and_pods_and_tolerates_absence(kubelet_api):
    spec = make_spec(kubelet_api)
    _run_with(kubelet_api, spec, "import time; time.sleep(60)")
    kubelet_api.wait_for(lambda: kubelet_api.pods_of_job(NS, spec.name))
    executor().cancel(spec)
    assert kubelet_api.list("jobs", NS) == [] and kubelet_api.pods_of_job(NS, spec.name) == []
    assert any(
        "propagationPolicy=Background" in p for m, p, _ in kubelet_api.requests if m == "DELETE"
    )
    executor().cancel(spec)  # gone already: fine
    assert executor().status(spec).phase == Phase.MISSING


# ---------------------------------------------------------------- watch


def test_watch_yields_events_and_410_asks_for_a_relist(fake_api):
    ex = executor()
    ref = ClusterRef("kubeconfig", fake_api.kubeconfig, "fake")
    jobs, version = ex.list_managed(ref, NS)
    assert jobs == []
    ex.launch(make_spec(fake_api))
    events = list(ex.watch(ref, NS, "jobs", version, timeout_seconds=1))
    assert [(e.type, e.job_id, e.attempt) for e in events] == [("ADDED", "ftjob-abc123", 1)]
    fake_api.expire_watches()
    with pytest.raises(ResourceVersionExpired):
        list(ex.watch(ref, NS, "jobs", version, timeout_seconds=1))
    jobs, _ = ex.list_managed(ref, NS)
    assert [(j.name, j.job_id, j.terminal) for j in jobs] == [
        ("ft-abc123-a1", "ftjob-abc123", False)
    ]
