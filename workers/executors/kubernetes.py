"""Runs each attempt as a batch/v1 Job on the cluster of the pool it was placed on.

The only module in Partage that imports the `kubernetes` client. `job_manifest` is a pure
function (LaunchSpec → Job) that follows REFERENCE §4; `KubernetesExecutor` implements the
Executor protocol with one API connection per cluster, retries with backoff on 429/5xx, and
keeps temporary and permanent errors apart. `watch_jobs` serves the reconciler.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import random
import re
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar, cast

import urllib3
from kubernetes import client as k8s
from kubernetes import config as k8s_config
from kubernetes import watch as k8s_watch
from kubernetes.client.rest import ApiException
from kubernetes.config.config_exception import ConfigException

from workers import metrics
from workers.executors import k8s_constants as K
from workers.executors.base import (
    EXIT_PREEMPTED,
    EXIT_USER_ERROR,
    AttemptStatus,
    LaunchSpec,
    Phase,
)

logger = logging.getLogger("partage.k8s")

T = TypeVar("T")

PLACEHOLDER_DIGEST = "sha256:" + "0" * 64
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
_LABEL_VALUE = re.compile(r"[^A-Za-z0-9._-]")


class KubernetesError(Exception):
    """Base of the executor's errors; `status` is the HTTP status when there was one."""

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class KubernetesTemporaryError(KubernetesError, ConnectionError):
    """Worth retrying later (429, 5xx, network). A ConnectionError, so Celery autoretries it."""


class KubernetesPermanentError(KubernetesError):
    """Retrying will not help (bad manifest, forbidden, name taken by something else)."""


class KubernetesConfigError(KubernetesPermanentError):
    """The cluster connection cannot be built (missing kubeconfig, bad settings)."""


# ---------------------------------------------------------------- settings


@dataclasses.dataclass(frozen=True)
class JobConfig:
    """Cluster-independent knobs of the training Job. Built from Django settings by `from_settings`."""

    image: str = f"ghcr.io/partage/trainer@{PLACEHOLDER_DIGEST}"
    namespace: str = "partage-jobs"
    backoff_limit: int = 2
    ttl_seconds_after_finished: int = 24 * 3600
    termination_grace_seconds: int = 300
    cpu_per_gpu: str = "8"
    memory_per_gpu: str = "64Gi"
    cpu_without_gpu: str = "2"
    memory_without_gpu: str = "8Gi"
    shm_size: str = "16Gi"
    tmp_size: str = "50Gi"
    model_cache_claim: str = "partage-model-cache"
    model_cache_path: str = "/models"
    tmp_path: str = "/tmp"  # noqa: S108 - an emptyDir in the pod, not the host's /tmp
    priority_class: str = ""
    run_as_user: int = 10001
    credentials_dir: str = "/var/run/secrets/partage/clusters"
    extra_env: tuple[tuple[str, str], ...] = ()

    @classmethod
    def from_settings(cls) -> JobConfig:
        """PARTAGE_K8S_<FIELD> from Django settings, else from the environment (or <NAME>_FILE)."""
        from django.conf import settings

        values: dict[str, Any] = {}
        for field in dataclasses.fields(cls):
            key = "PARTAGE_K8S_" + field.name.upper()
            value = getattr(settings, key, None)
            if value is None:
                value = _env_text(key)
                if value is not None and field.name == "extra_env":
                    value = json.loads(value)
                elif value is not None and isinstance(getattr(cls, field.name, None), int):
                    value = int(value)
            if value is not None:
                values[field.name] = value
        if "extra_env" in values:
            values["extra_env"] = tuple(dict(values["extra_env"]).items())
        config = cls(**values)
        config.check(production=getattr(settings, "PRODUCTION", False))
        return config

    def check(self, *, production: bool) -> None:
        from django.core.exceptions import ImproperlyConfigured

        if "@sha256:" not in self.image:
            raise ImproperlyConfigured(
                f"PARTAGE_K8S_IMAGE must be pinned by digest (name@sha256:…), not {self.image!r}."
            )
        if production and self.image.endswith(PLACEHOLDER_DIGEST):
            raise ImproperlyConfigured("Set PARTAGE_K8S_IMAGE to the trainer image's real digest.")
        if not _DNS_LABEL.match(self.namespace):
            raise ImproperlyConfigured(
                f"PARTAGE_K8S_NAMESPACE {self.namespace!r} is not a DNS label."
            )


# ---------------------------------------------------------------- the Job manifest


def label_value(value: str) -> str:
    """A valid label value: 63 characters at most, alphanumeric at both ends."""
    cleaned = _LABEL_VALUE.sub("-", value)[:63]
    return cleaned.strip("-_.")


def attempt_labels(spec: LaunchSpec) -> dict[str, str]:
    labels = {
        K.LABEL_MANAGED_BY: K.MANAGED_BY,
        K.LABEL_COMPONENT: K.COMPONENT_TRAINING,
        K.LABEL_NAME: K.TRAINER_NAME,
        K.LABEL_ORG: label_value(spec.org_id),
        K.LABEL_JOB: label_value(spec.job_id),
        K.LABEL_ATTEMPT: str(spec.attempt),
    }
    if spec.pool.get("pool_id"):
        labels[K.LABEL_POOL] = label_value(str(spec.pool["pool_id"]))
    return labels


def _labels(obj: Any) -> dict[str, str]:
    return dict(obj.metadata.labels or {}) if obj.metadata else {}


def _uid(obj: Any) -> str:
    uid = obj.metadata.uid if obj.metadata else None
    if not uid:
        raise KubernetesPermanentError(
            f"the API server returned {type(obj).__name__} without a uid"
        )
    return str(uid)


def _identity_matches(labels: dict[str, str] | None, spec: LaunchSpec) -> bool:
    expected = attempt_labels(spec)
    labels = labels or {}
    return all(
        labels.get(key) == expected[key]
        for key in (K.LABEL_MANAGED_BY, K.LABEL_JOB, K.LABEL_ATTEMPT)
    )


def _resources(spec: LaunchSpec, config: JobConfig) -> dict[str, dict[str, str]]:
    gpus = int(spec.pool.get("gpu_count") or spec.gpu_count or 0)
    if gpus > 0:
        cpu = str(int(float(config.cpu_per_gpu) * gpus))
        memory = _scale_quantity(config.memory_per_gpu, gpus)
        limits = {"cpu": cpu, "memory": memory}
        limits[str(spec.pool.get("gpu_resource_name") or K.DEFAULT_GPU_RESOURCE)] = str(gpus)
    else:
        limits = {"cpu": config.cpu_without_gpu, "memory": config.memory_without_gpu}
    requests = {k: v for k, v in limits.items() if k in ("cpu", "memory")}
    return {"limits": limits, "requests": requests}


def _scale_quantity(quantity: str, factor: int) -> str:
    match = re.fullmatch(r"(\d+)([A-Za-z]*)", quantity)
    if not match:
        raise ValueError(f"unsupported quantity {quantity!r}; use e.g. '64Gi'")
    return f"{int(match.group(1)) * factor}{match.group(2)}"


def _tolerations(spec: LaunchSpec) -> list[dict[str, Any]]:
    tolerations = [dict(t) for t in spec.pool.get("tolerations") or []]
    gpus = int(spec.pool.get("gpu_count") or spec.gpu_count or 0)
    if gpus > 0 and not any(t.get("key") == K.GPU_TAINT_KEY for t in tolerations):
        tolerations.append({"key": K.GPU_TAINT_KEY, "operator": "Exists", "effect": "NoSchedule"})
    return tolerations


def token_secret_name(spec: LaunchSpec) -> str:
    return spec.name + K.TOKEN_SECRET_SUFFIX


def _env(spec: LaunchSpec, config: JobConfig) -> list[dict[str, Any]]:
    values = {
        **dict(config.extra_env),
        **spec.env,
        "PARTAGE_CALLBACK_URL": spec.callback_url,
        "PARTAGE_JOB_ID": spec.job_id,
        "PARTAGE_ATTEMPT": str(spec.attempt),
        "PARTAGE_MODEL_CACHE": config.model_cache_path,
        "HOME": config.tmp_path,
        "TMPDIR": config.tmp_path,
        "HF_HUB_OFFLINE": "1",
        "PYTHONUNBUFFERED": "1",
    }
    values.pop(K.TOKEN_ENV, None)
    env: list[dict[str, Any]] = [{"name": n, "value": v} for n, v in sorted(values.items())]
    # Signed for this job and attempt only, valid until the attempt's deadline
    # (finetuning/tokens.py); read from the attempt's Secret, never written into the Job spec.
    token_ref = {"name": token_secret_name(spec), "key": K.TOKEN_SECRET_KEY}
    env.append({"name": K.TOKEN_ENV, "valueFrom": {"secretKeyRef": token_ref}})
    return env


def _pod_failure_policy() -> dict[str, Any]:
    return {
        "rules": [
            # The agent reported these exit codes to Partage before exiting (3 user error,
            # 4 preempted after a checkpoint, 1 internal error): Partage fails or requeues the
            # job as a new attempt, so the Job must not start a replacement that would race it.
            {
                "action": "FailJob",
                "onExitCodes": {
                    "containerName": K.CONTAINER_NAME,
                    "operator": "In",
                    "values": list(K.REPORTED_EXIT_CODES),
                },
            },
            # Preemption, eviction, node drain that killed the pod before it could report:
            # not the job's fault; the Job replaces the pod, which resumes from the checkpoint.
            {
                "action": "Ignore",
                "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}],
            },
        ]
    }


def _volumes(config: JobConfig) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    volumes: list[dict[str, Any]] = [
        {"name": K.VOLUME_SHM, "emptyDir": {"medium": "Memory", "sizeLimit": config.shm_size}},
        {"name": K.VOLUME_TMP, "emptyDir": {"sizeLimit": config.tmp_size}},
    ]
    mounts: list[dict[str, Any]] = [
        {"name": K.VOLUME_SHM, "mountPath": "/dev/shm"},  # noqa: S108 - the pod's shm,
        {"name": K.VOLUME_TMP, "mountPath": config.tmp_path},
    ]
    if config.model_cache_claim:
        volumes.append(
            {
                "name": K.VOLUME_MODEL_CACHE,
                "persistentVolumeClaim": {"claimName": config.model_cache_claim, "readOnly": True},
            }
        )
        mounts.append(
            {"name": K.VOLUME_MODEL_CACHE, "mountPath": config.model_cache_path, "readOnly": True}
        )
    return volumes, mounts


def job_manifest(spec: LaunchSpec, config: JobConfig) -> dict[str, Any]:
    """The batch/v1 Job for one attempt (REFERENCE §4), as the wire-format dict."""
    if not _DNS_LABEL.match(spec.name):
        raise KubernetesPermanentError(f"attempt name {spec.name!r} is not a valid DNS label")
    labels = attempt_labels(spec)
    volumes, mounts = _volumes(config)
    container: dict[str, Any] = {
        "name": K.CONTAINER_NAME,
        "image": config.image,
        "imagePullPolicy": "IfNotPresent",
        "command": list(K.AGENT_COMMAND),
        "env": _env(spec, config),
        "resources": _resources(spec, config),
        "volumeMounts": mounts,
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "capabilities": {"drop": ["ALL"]},
            "readOnlyRootFilesystem": True,
            "runAsNonRoot": True,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }
    pod_spec: dict[str, Any] = {
        "restartPolicy": "Never",
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "terminationGracePeriodSeconds": config.termination_grace_seconds,
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": config.run_as_user,
            "runAsGroup": config.run_as_user,
            "fsGroup": config.run_as_user,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "nodeSelector": dict(spec.pool.get("node_selector") or {}),
        "tolerations": _tolerations(spec),
        "containers": [container],
        "volumes": volumes,
    }
    if config.priority_class:
        pod_spec["priorityClassName"] = config.priority_class
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": spec.name,
            "namespace": _namespace(spec, config),
            "labels": labels,
            "annotations": {"partage.io/base-model": spec.base_model},
        },
        "spec": {
            "backoffLimit": config.backoff_limit,
            "activeDeadlineSeconds": spec.active_deadline_seconds,
            "ttlSecondsAfterFinished": config.ttl_seconds_after_finished,
            "podReplacementPolicy": "Failed",
            "podFailurePolicy": _pod_failure_policy(),
            "template": {"metadata": {"labels": labels}, "spec": pod_spec},
        },
    }


def token_secret_manifest(spec: LaunchSpec, config: JobConfig, *, job_uid: str) -> dict[str, Any]:
    """The v1 Secret that holds the attempt's token, owned by its Job (deleted with it)."""
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {
            "name": token_secret_name(spec),
            "namespace": _namespace(spec, config),
            "labels": attempt_labels(spec),
            "ownerReferences": [
                {
                    "apiVersion": "batch/v1",
                    "kind": "Job",
                    "name": spec.name,
                    "uid": job_uid,
                    "blockOwnerDeletion": False,
                }
            ],
        },
        "type": "Opaque",
        "immutable": True,
        "stringData": {K.TOKEN_SECRET_KEY: spec.token},
    }


def _namespace(spec: LaunchSpec, config: JobConfig) -> str:
    return str(spec.pool.get("namespace") or config.namespace)


# ---------------------------------------------------------------- connections


@dataclasses.dataclass(frozen=True)
class ClusterRef:
    """Where a pool's cluster is; credentials stay in the mounted secret the ref points at."""

    kind: str  # "kubeconfig" | "in_cluster"
    credentials_ref: str  # kubeconfig path, or the name of a Secret mounted under credentials_dir
    name: str = "default"

    @classmethod
    def for_spec(cls, spec: LaunchSpec) -> ClusterRef:
        pool = spec.pool
        return cls(
            kind=str(
                pool.get("cluster_kind") or _default("PARTAGE_K8S_CLUSTER_KIND", "kubeconfig")
            ),
            credentials_ref=str(
                pool.get("credentials_ref") or _default("PARTAGE_K8S_KUBECONFIG", "")
            ),
            name=str(pool.get("cluster") or "default"),
        )


def _default(name: str, fallback: str) -> str:
    from django.conf import settings

    return str(getattr(settings, name, "") or _env_text(name) or fallback)


def _env_text(name: str) -> str | None:
    """Settings this module owns, read with Partage's one env helper (supports NAME_FILE)."""
    from marketplace import env

    return env.raw(name)


class Connections:
    """One ApiClient per cluster, built once per process and shared by every pool on it."""

    def __init__(self) -> None:
        self._clients: dict[ClusterRef, k8s.ApiClient] = {}
        self._lock = threading.Lock()

    def get(self, ref: ClusterRef, credentials_dir: str) -> k8s.ApiClient:
        with self._lock:
            api_client = self._clients.get(ref)
            if api_client is None:
                api_client = self._clients[ref] = _api_client(ref, credentials_dir)
            return api_client

    def clear(self) -> None:
        with self._lock:
            for api_client in self._clients.values():
                api_client.close()
            self._clients.clear()


def _api_client(ref: ClusterRef, credentials_dir: str) -> k8s.ApiClient:
    configuration = k8s.Configuration()
    try:
        if ref.kind == "in_cluster":
            k8s_config.load_incluster_config(client_configuration=configuration)
        else:
            path = ref.credentials_ref
            if path and "/" not in path:  # a Secret name: mounted as <dir>/<name>/kubeconfig
                path = str(Path(credentials_dir) / path / "kubeconfig")
            if not path:
                raise KubernetesConfigError(f"cluster {ref.name!r} has no kubeconfig reference")
            k8s_config.load_kube_config(config_file=path, client_configuration=configuration)
    except (ConfigException, OSError) as e:
        raise KubernetesConfigError(f"cannot load credentials of cluster {ref.name!r}: {e}") from e
    configuration.retries = False  # `_call` retries, with backoff and Retry-After, in one place
    return k8s.ApiClient(configuration)


# ---------------------------------------------------------------- retries


@dataclasses.dataclass(frozen=True)
class RetryPolicy:
    attempts: int = 6
    base_delay: float = 0.2
    max_delay: float = 5.0
    max_retry_after: float = 10.0
    request_timeout: tuple[float, float] = (5.0, 30.0)  # connect, read


TEMPORARY_STATUSES = frozenset({0, 408, 429, 500, 502, 503, 504})
NETWORK_ERRORS = (urllib3.exceptions.HTTPError, ConnectionError, TimeoutError)


def _retry_after(error: ApiException) -> float | None:
    headers = error.headers or {}
    value = headers.get("Retry-After") if hasattr(headers, "get") else None
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


def call_with_retries(
    operation: str,
    fn: Callable[[], T],
    *,
    policy: RetryPolicy,
    sleep: Callable[[float], None] = time.sleep,
) -> T:
    """Run one API call; retry 429/5xx/network errors with jittered exponential backoff."""
    for attempt in range(1, policy.attempts + 1):
        started = time.perf_counter()
        try:
            result = fn()
        except ApiException as e:
            metrics.observe_k8s_call(operation, str(e.status), time.perf_counter() - started)
            if e.status not in TEMPORARY_STATUSES:
                raise KubernetesPermanentError(
                    f"{operation}: {e.status} {e.reason}", status=e.status
                ) from e
            if attempt == policy.attempts:
                raise KubernetesTemporaryError(
                    f"{operation}: {e.status} {e.reason} after {attempt} tries", status=e.status
                ) from e
            delay = _backoff(attempt, policy)
            hinted = _retry_after(e)
            if hinted is not None:
                delay = max(delay, min(hinted, policy.max_retry_after))
            logger.warning(
                "%s: %s, retrying in %.2fs",
                operation,
                e.status,
                delay,
                extra={"k8s_status": e.status},
            )
        except NETWORK_ERRORS as e:
            metrics.observe_k8s_call(operation, "error", time.perf_counter() - started)
            if attempt == policy.attempts:
                raise KubernetesTemporaryError(f"{operation}: {e} after {attempt} tries") from e
            delay = _backoff(attempt, policy)
            logger.warning("%s: %s, retrying in %.2fs", operation, type(e).__name__, delay)
        else:
            metrics.observe_k8s_call(operation, "ok", time.perf_counter() - started)
            return result
        sleep(delay)
    raise AssertionError("unreachable")


def _backoff(attempt: int, policy: RetryPolicy) -> float:
    ceiling = min(policy.max_delay, policy.base_delay * 2 ** (attempt - 1))
    return random.uniform(ceiling / 2, ceiling)  # noqa: S311 - jitter, not cryptography


# ---------------------------------------------------------------- the executor


class KubernetesExecutor:
    name = "kubernetes"

    def __init__(
        self, *, retry: RetryPolicy | None = None, config: JobConfig | None = None
    ) -> None:
        self.retry = retry or RetryPolicy()
        self._config = config
        self.connections = Connections()

    # -- plumbing

    def config(self) -> JobConfig:
        return self._config or JobConfig.from_settings()

    def _api(self, spec: LaunchSpec) -> k8s.ApiClient:
        return self.connections.get(ClusterRef.for_spec(spec), self.config().credentials_dir)

    def _call(self, operation: str, fn: Callable[[], T]) -> T:
        return call_with_retries(operation, fn, policy=self.retry)

    def _timeout(self) -> tuple[float, float]:
        return self.retry.request_timeout

    def handle(self, spec: LaunchSpec) -> str:
        return f"{ClusterRef.for_spec(spec).name}/{_namespace(spec, self.config())}/{spec.name}"

    # -- Executor protocol

    def launch(self, spec: LaunchSpec) -> str:
        config = self.config()
        body = job_manifest(spec, config)
        namespace = body["metadata"]["namespace"]
        batch = k8s.BatchV1Api(self._api(spec))
        log_extra = {"job_id": spec.job_id, "org_id": spec.org_id, "k8s_job": spec.name}

        def create() -> Any:
            try:
                return batch.create_namespaced_job(
                    namespace,
                    cast(Any, body),  # the client serializes wire-format dicts as they are
                    _request_timeout=self._timeout(),
                )
            except ApiException as e:
                if e.status == 409:
                    return None  # already there: maybe ours from a lost response; checked below
                raise

        started = time.perf_counter()
        created = self._call("create_job", create)
        if created is None:
            existing = self._call(
                "read_job",
                lambda: batch.read_namespaced_job(
                    spec.name, namespace, _request_timeout=self._timeout()
                ),
            )
            if not _identity_matches(_labels(existing), spec):
                raise KubernetesPermanentError(
                    f"Job {namespace}/{spec.name} exists but is not attempt {spec.attempt} of {spec.job_id}",
                    status=409,
                )
            logger.info("adopted existing Job %s", spec.name, extra=log_extra)
            metrics.K8S_JOBS_ADOPTED.inc()
            job = existing
        else:
            logger.info("created Job %s", spec.name, extra=log_extra)
            metrics.K8S_JOBS_CREATED.inc()
            job = created
        # The pod waits for its token Secret (the kubelet retries), which can only be owned by
        # a Job that exists; an adopted Job keeps the Secret (and token) it was given first.
        self._token_secret_ensure(spec, config, namespace, _uid(job))
        metrics.DISPATCH_API_SECONDS.observe(time.perf_counter() - started)
        return self.handle(spec)

    def _token_secret_ensure(
        self, spec: LaunchSpec, config: JobConfig, namespace: str, job_uid: str
    ) -> None:
        core = k8s.CoreV1Api(self._api(spec))
        body = token_secret_manifest(spec, config, job_uid=job_uid)

        def create() -> Any:
            try:
                return core.create_namespaced_secret(
                    namespace, cast(Any, body), _request_timeout=self._timeout()
                )
            except ApiException as e:
                if e.status == 409:
                    return None
                raise

        if self._call("create_secret", create) is not None:
            return
        existing = self._call(
            "read_secret",
            lambda: core.read_namespaced_secret(
                body["metadata"]["name"], namespace, _request_timeout=self._timeout()
            ),
        )
        name = body["metadata"]["name"]
        if not _identity_matches(_labels(existing), spec):
            raise KubernetesPermanentError(
                f"Secret {namespace}/{name} exists but is not the token of attempt "
                f"{spec.attempt} of {spec.job_id}",
                status=409,
            )
        owners = existing.metadata.owner_references if existing.metadata else None
        if job_uid not in {ref.uid for ref in owners or []}:
            # Left by an earlier Job of the same name; the garbage collector is deleting it.
            raise KubernetesTemporaryError(
                f"Secret {namespace}/{name} still belongs to a deleted Job; retry shortly",
                status=409,
            )

    def status(self, spec: LaunchSpec) -> AttemptStatus:
        namespace = _namespace(spec, self.config())
        api = self._api(spec)
        batch, core = k8s.BatchV1Api(api), k8s.CoreV1Api(api)
        try:
            job = self._call(
                "read_job",
                lambda: batch.read_namespaced_job(
                    spec.name, namespace, _request_timeout=self._timeout()
                ),
            )
        except KubernetesPermanentError as e:
            if e.status == 404:
                return AttemptStatus(
                    Phase.MISSING,
                    reason="the Job vanished from the cluster",
                    handle=self.handle(spec),
                )
            raise
        if not _identity_matches(_labels(job), spec):
            return AttemptStatus(
                Phase.MISSING, reason="a Job with this name belongs to something else"
            )
        pods = self._pods(core, namespace, spec.name)
        return job_phase(job, pods, handle=self.handle(spec))

    def cancel(self, spec: LaunchSpec) -> None:
        self.delete_job(ClusterRef.for_spec(spec), _namespace(spec, self.config()), spec.name)
        logger.info(
            "deleted Job %s", spec.name, extra={"job_id": spec.job_id, "org_id": spec.org_id}
        )

    def spool_dir(self, spec: LaunchSpec) -> Path | None:
        return None  # the pod's scratch volume goes with it: its agent retries to the deadline

    def logs(self, spec: LaunchSpec) -> str:
        """Every pod's log, oldest pod first; read while the Job and its pods still exist."""
        namespace = _namespace(spec, self.config())
        core = k8s.CoreV1Api(self._api(spec))
        parts: list[str] = []
        pods = self._pods(core, namespace, spec.name)
        for pod in pods:
            name = pod.metadata.name

            def read(pod_name: str = name) -> str:
                try:
                    return str(
                        core.read_namespaced_pod_log(
                            pod_name,
                            namespace,
                            container=K.CONTAINER_NAME,
                            limit_bytes=200_000,
                            _request_timeout=self._timeout(),
                        )
                    )
                except ApiException as e:
                    if e.status in (400, 404):  # gone, or the container never started
                        return ""
                    raise

            text = self._call("read_pod_log", read)
            parts.append(f"--- pod {name} ---\n{text}" if len(pods) > 1 else text)
        return "\n".join(parts)

    def _pods(self, core: k8s.CoreV1Api, namespace: str, job_name: str) -> list[Any]:
        listed = self._call(
            "list_pods",
            lambda: core.list_namespaced_pod(
                namespace,
                label_selector=f"{K.LABEL_JOB_NAME}={job_name}",
                _request_timeout=self._timeout(),
            ),
        )
        return sorted(
            listed.items, key=lambda p: (p.metadata.creation_timestamp or 0, p.metadata.name)
        )

    # -- for the reconciler (not part of the Executor protocol)

    def list_managed(
        self, ref: ClusterRef, namespace: str, resource: str = "jobs"
    ) -> tuple[list[WatchEvent], str]:
        """Every training Job (or pod) Partage manages in the namespace, and the list's version."""
        api = self.connections.get(ref, self.config().credentials_dir)

        def list_them() -> Any:
            kwargs: dict[str, Any] = {
                "label_selector": K.MANAGED_SELECTOR,
                "_request_timeout": self._timeout(),
            }
            if resource == "jobs":
                return k8s.BatchV1Api(api).list_namespaced_job(namespace, **kwargs)
            return k8s.CoreV1Api(api).list_namespaced_pod(namespace, **kwargs)

        listed = self._call(f"list_{resource}", list_them)
        raw = api.sanitize_for_serialization(listed)
        version = str((raw.get("metadata") or {}).get("resourceVersion", ""))
        return [_event("LISTED", resource, item) for item in raw.get("items") or []], version

    def delete_job(self, ref: ClusterRef, namespace: str, name: str) -> None:
        """Delete a Job and, in the background, its pods. Absent already is fine."""
        batch = k8s.BatchV1Api(self.connections.get(ref, self.config().credentials_dir))

        def delete() -> None:
            try:
                batch.delete_namespaced_job(
                    name,
                    namespace,
                    propagation_policy="Background",
                    _request_timeout=self._timeout(),
                )
            except ApiException as e:
                if e.status != 404:
                    raise

        self._call("delete_job", delete)

    def watch(
        self,
        ref: ClusterRef,
        namespace: str,
        resource: str,
        resource_version: str,
        *,
        timeout_seconds: int,
    ) -> Iterator[WatchEvent]:
        """Events after `resource_version`; raises ResourceVersionExpired on 410 (relist)."""
        api = self.connections.get(ref, self.config().credentials_dir)
        if resource == "jobs":
            list_fn: Callable[..., Any] = k8s.BatchV1Api(api).list_namespaced_job
        else:
            list_fn = k8s.CoreV1Api(api).list_namespaced_pod
        watcher = k8s_watch.Watch()
        try:
            for event in watcher.stream(
                list_fn,
                namespace,
                label_selector=K.MANAGED_SELECTOR,
                resource_version=resource_version,
                timeout_seconds=timeout_seconds,  # the server ends the watch
                _request_timeout=(
                    self.retry.request_timeout[0],
                    timeout_seconds + 10,
                ),  # and the client
                allow_watch_bookmarks=True,
            ):
                yield _event(event["type"], resource, event["raw_object"])
        except ApiException as e:
            if e.status == 410:
                raise ResourceVersionExpired(str(e.reason)) from e
            if e.status in TEMPORARY_STATUSES:
                raise KubernetesTemporaryError(
                    f"watch {resource}: {e.status}", status=e.status
                ) from e
            raise KubernetesPermanentError(
                f"watch {resource}: {e.status} {e.reason}", status=e.status
            ) from e
        except NETWORK_ERRORS as e:
            raise KubernetesTemporaryError(f"watch {resource}: {type(e).__name__}: {e}") from e
        finally:
            watcher.stop()


class ResourceVersionExpired(KubernetesError):
    """410 Gone: the watch's resourceVersion was compacted; relist and watch from the new one."""


@dataclasses.dataclass(frozen=True)
class WatchEvent:
    type: str  # ADDED | MODIFIED | DELETED | BOOKMARK, or LISTED from a relist
    resource: str  # jobs | pods
    name: str
    labels: dict[str, str]
    resource_version: str
    terminal: bool  # a Job with Complete/Failed, or a pod that Succeeded/Failed
    disrupted: bool  # a pod with the DisruptionTarget condition

    @property
    def job_id(self) -> str:
        return self.labels.get(K.LABEL_JOB, "")

    @property
    def attempt(self) -> int:
        value = self.labels.get(K.LABEL_ATTEMPT, "")
        return int(value) if value.isdigit() else 0


def _event(type_: str, resource: str, obj: dict[str, Any]) -> WatchEvent:
    metadata = obj.get("metadata") or {}
    return WatchEvent(
        type=type_,
        resource=resource,
        labels=dict(metadata.get("labels") or {}),
        name=metadata.get("name", ""),
        resource_version=str(metadata.get("resourceVersion", "")),
        terminal=_raw_terminal(resource, obj),
        disrupted=_raw_disrupted(obj) if resource == "pods" else False,
    )


def _raw_terminal(resource: str, obj: dict[str, Any]) -> bool:
    status = obj.get("status") or {}
    if resource == "pods":
        return status.get("phase") in ("Succeeded", "Failed")
    return any(
        c.get("type") in ("Complete", "Failed") and c.get("status") == "True"
        for c in status.get("conditions") or []
    )


def _raw_disrupted(obj: dict[str, Any]) -> bool:
    return any(
        c.get("type") == "DisruptionTarget" and c.get("status") == "True"
        for c in (obj.get("status") or {}).get("conditions") or []
    )


# ---------------------------------------------------------------- Job status → Phase


def _condition(job: Any, type_: str) -> Any:
    for cond in (job.status.conditions if job.status else None) or []:
        if cond.type == type_ and cond.status == "True":
            return cond
    return None


def _terminated(pod: Any) -> Any:
    for status in (pod.status.container_statuses if pod.status else None) or []:
        if status.name == K.CONTAINER_NAME and status.state and status.state.terminated:
            return status.state.terminated
    return None


def _disrupted(pod: Any) -> bool:
    return any(
        c.type == "DisruptionTarget" and c.status == "True"
        for c in (pod.status.conditions if pod.status else None) or []
    )


def job_phase(job: Any, pods: list[Any], *, handle: str = "") -> AttemptStatus:
    """Map a Job and its pods (oldest first) to the executor's Phase."""
    if _condition(job, "Complete"):
        return AttemptStatus(Phase.SUCCEEDED, exit_code=0, handle=handle)
    failed = _condition(job, "Failed") or _condition(job, "FailureTarget")
    if failed:
        ended = [p for p in pods if _terminated(p) is not None]
        last = ended[-1] if ended else None
        code = _terminated(last).exit_code if last is not None else None
        why = f"Job failed ({failed.reason}): {failed.message}"
        if failed.reason == "DeadlineExceeded":
            return AttemptStatus(
                Phase.FAILED,
                exit_code=code,
                reason=f"ran past its time limit: {failed.message}",
                handle=handle,
            )
        if code == EXIT_PREEMPTED or (
            last is not None and _disrupted(last) and code != EXIT_USER_ERROR
        ):
            return AttemptStatus(Phase.DISRUPTED, exit_code=code, reason=why, handle=handle)
        return AttemptStatus(Phase.FAILED, exit_code=code, reason=why, handle=handle)
    if any(p.status and p.status.phase == "Running" for p in pods):
        return AttemptStatus(Phase.RUNNING, handle=handle)
    return AttemptStatus(Phase.PENDING, reason=_pending_reason(pods), handle=handle)


def _pending_reason(pods: list[Any]) -> str:
    for pod in reversed(pods):
        for cond in (pod.status.conditions if pod.status else None) or []:
            if cond.type == "PodScheduled" and cond.status == "False":
                return f"pod not scheduled: {cond.reason or ''} {cond.message or ''}".strip()
    return "waiting for the pod to start" if pods else "waiting for the Job controller"


def dump(obj: Any) -> str:
    """A Job or Pod model as JSON (for logs and debugging)."""
    return json.dumps(k8s.ApiClient().sanitize_for_serialization(obj), sort_keys=True)
