"""A fake Kubernetes API server that speaks the REST wire format the official client uses.

It serves batch/v1 Jobs, v1 Pods and v1 Secrets (create/get/list/watch/delete, pod log), keeps a
resourceVersion on every object and list, answers 404/409/410 with real Status objects, and
can inject 429 (with Retry-After) and 500 faults. In kubelet mode it also plays the Job
controller and the kubelet: a created Job gets a Pod whose container command runs as a local
subprocess, and the Pod and Job statuses move as Kubernetes moves them (podFailurePolicy,
activeDeadlineSeconds, DisruptionTarget on eviction), resolving `secretKeyRef` env values as
the kubelet does (the container waits until the Secret exists). Deleting a Job with Background or
Foreground propagation deletes what it owns (ownerReferences), pods and Secrets alike.
"""

from __future__ import annotations

import base64
import bisect
import contextlib
import copy
import dataclasses
import json
import os
import secrets
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

KINDS = {
    # resource -> (apiVersion, kind, list prefix)
    "jobs": ("batch/v1", "Job", "/apis/batch/v1"),
    "pods": ("v1", "Pod", "/api/v1"),
    "secrets": ("v1", "Secret", "/api/v1"),
}


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def status_object(code: int, reason: str, message: str, details: dict | None = None) -> dict:
    return {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Success" if code < 400 else "Failure",
        "message": message,
        "reason": reason,
        "details": details or {},
        "code": code,
    }


class ApiError(Exception):
    def __init__(self, code: int, reason: str, message: str, details: dict | None = None):
        super().__init__(message)
        self.code = code
        self.body = status_object(code, reason, message, details)


@dataclasses.dataclass
class Fault:
    status: int
    remaining: int | None  # None: until `until`
    until: float | None
    retry_after: int | None
    after_apply: bool  # perform the write, then answer with the error (a lost response)
    methods: frozenset[str] | None
    path_contains: str = ""  # only requests whose path contains this, e.g. "/secrets"


@dataclasses.dataclass
class PodProcess:
    proc: subprocess.Popen
    log: bytearray = dataclasses.field(default_factory=bytearray)
    reader: threading.Thread | None = None


def _selector_matches(labels: dict[str, str], selector: str | None) -> bool:
    if not selector:
        return True
    for term in selector.split(","):
        term = term.strip()
        if not term:
            continue
        if "!=" in term:
            key, value = term.split("!=", 1)
            if labels.get(key) == value:
                return False
        elif "=" in term:
            key, value = term.replace("==", "=").split("=", 1)
            if labels.get(key) != value:
                return False
        elif labels.get(term) is None:
            return False
    return True


class FakeKubeApiServer:
    """Start with `with FakeKubeApiServer(kubelet=True) as api:`; `api.kubeconfig` is a path."""

    def __init__(
        self,
        *,
        kubelet: bool = False,
        kubelet_env: dict[str, str] | None = None,
        kubelet_cwd: str | None = None,
        kubeconfig_dir: str | None = None,
        schedule_delay: float = 0.0,
    ) -> None:
        self.kubelet = kubelet
        self.kubelet_env = dict(os.environ if kubelet_env is None else kubelet_env)
        self.kubelet_cwd = kubelet_cwd
        self.schedule_delay = schedule_delay
        self._kubeconfig_dir = kubeconfig_dir
        self.lock = threading.RLock()
        self.changed = threading.Condition(self.lock)
        self.objects: dict[tuple[str, str, str], dict] = {}
        self.events: list[tuple[int, str, str, str, dict]] = []  # (rv, resource, ns, type, obj)
        self.resource_version = 1000
        self.compacted_rv = 0  # watches from a resourceVersion at or below this get 410
        self._watch_epoch = 0  # bumped by expire_watches(): open watches end with 410
        self.faults: list[Fault] = []
        self.requests: list[tuple[str, str, int]] = []
        self.processes: dict[tuple[str, str], PodProcess] = {}
        self._stopping = threading.Event()
        self._threads: list[threading.Thread] = []
        self._httpd: ThreadingHTTPServer | None = None
        self.kubeconfig = ""
        self.url = ""

    # -- life cycle ------------------------------------------------------------------------

    def start(self) -> FakeKubeApiServer:
        handler = type("Handler", (_Handler,), {"api": self})
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._httpd.daemon_threads = True
        port = self._httpd.server_address[1]
        self.url = f"http://127.0.0.1:{port}"
        thread = threading.Thread(target=self._httpd.serve_forever, name="fake-kube", daemon=True)
        thread.start()
        self.kubeconfig = self.write_kubeconfig()
        return self

    def stop(self) -> None:
        self._stopping.set()
        with self.changed:
            self.changed.notify_all()
        for key in list(self.processes):
            self._kill_process(key, grace=0.5)
        if self._httpd:
            self._httpd.shutdown()
            self._httpd.server_close()
        for thread in self._threads:
            thread.join(timeout=5)

    def __enter__(self) -> FakeKubeApiServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def write_kubeconfig(self, path: str | None = None) -> str:
        if path is None:
            directory = self._kubeconfig_dir or os.environ.get("TMPDIR", "/tmp")
            path = os.path.join(directory, f"fake-kubeconfig-{secrets.token_hex(4)}.yaml")
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "fake", "cluster": {"server": self.url}}],
            "users": [{"name": "fake", "user": {"token": "fake-token"}}],
            "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "fake"}}],
            "current-context": "fake",
        }
        Path(path).write_text(json.dumps(config))  # JSON is valid YAML
        return path

    # -- fault injection -------------------------------------------------------------------

    def fail_next(
        self,
        count: int,
        status: int = 500,
        *,
        retry_after: int | None = None,
        after_apply: bool = False,
        methods: tuple[str, ...] | None = None,
        path_contains: str = "",
    ) -> None:
        """Answer the next `count` matching requests with `status`."""
        with self.lock:
            self.faults.append(
                Fault(
                    status, count, None, retry_after, after_apply, _methods(methods), path_contains
                )
            )

    def fail_for(
        self,
        seconds: float,
        status: int = 500,
        *,
        retry_after: int | None = None,
        methods: tuple[str, ...] | None = None,
    ) -> None:
        """Answer every matching request with `status` for `seconds`."""
        with self.lock:
            until = time.monotonic() + seconds
            self.faults.append(Fault(status, None, until, retry_after, False, _methods(methods)))

    def _take_fault(self, method: str, path: str = "") -> Fault | None:
        with self.lock:
            now = time.monotonic()
            self.faults = [
                f
                for f in self.faults
                if (f.remaining is None or f.remaining > 0) and (f.until is None or f.until > now)
            ]
            for fault in self.faults:
                if fault.methods is not None and method not in fault.methods:
                    continue
                if fault.path_contains not in path:
                    continue
                if fault.remaining is not None:
                    fault.remaining -= 1
                return fault
        return None

    def expire_watches(self) -> None:
        """Compact history: open watches end with a 410 ERROR event; old versions are gone."""
        with self.changed:
            self.compacted_rv = self.resource_version
            self._watch_epoch += 1
            self.changed.notify_all()

    def count_requests(self, method: str, path_part: str) -> int:
        with self.lock:
            return sum(1 for m, p, _ in self.requests if m == method and path_part in p)

    # -- the store -------------------------------------------------------------------------

    def _bump(self, resource: str, namespace: str, event_type: str, obj: dict) -> None:
        self.resource_version += 1
        obj["metadata"]["resourceVersion"] = str(self.resource_version)
        self.events.append(
            (self.resource_version, resource, namespace, event_type, copy.deepcopy(obj))
        )
        self.changed.notify_all()

    def get(self, resource: str, namespace: str, name: str) -> dict | None:
        with self.lock:
            obj = self.objects.get((resource, namespace, name))
            return copy.deepcopy(obj) if obj else None

    def list(self, resource: str, namespace: str | None = None, selector: str = "") -> list[dict]:
        with self.lock:
            return [
                copy.deepcopy(o)
                for (r, ns, _), o in sorted(self.objects.items())
                if r == resource
                and (namespace is None or ns == namespace)
                and _selector_matches(o["metadata"].get("labels", {}), selector)
            ]

    def create(self, resource: str, namespace: str, body: dict) -> dict:
        api_version, kind, _ = KINDS[resource]
        with self.lock:
            meta = body.setdefault("metadata", {})
            if not meta.get("name") and meta.get("generateName"):
                meta["name"] = meta["generateName"] + secrets.token_hex(3)[:5]
            name = meta.get("name")
            if not name:
                raise ApiError(422, "Invalid", f"{kind} is invalid: metadata.name: Required value")
            if (resource, namespace, name) in self.objects:
                group = api_version.split("/")[0] if "/" in api_version else ""
                raise ApiError(
                    409,
                    "AlreadyExists",
                    f'{resource}.{group} "{name}" already exists'.replace(". ", " "),
                    {"name": name, "group": group, "kind": resource},
                )
            obj = copy.deepcopy(body)
            obj["apiVersion"], obj["kind"] = api_version, kind
            meta = obj["metadata"]
            meta.update(
                namespace=namespace,
                uid=str(uuid.uuid4()),
                creationTimestamp=_now(),
                generation=1,
            )
            meta.setdefault("labels", {})
            if resource == "jobs":
                self._default_job(obj)
            elif resource == "secrets":
                _default_secret(obj)
            else:
                obj.setdefault("status", {"phase": "Pending", "qosClass": "Guaranteed"})
            self.objects[(resource, namespace, name)] = obj
            self._bump(resource, namespace, "ADDED", obj)
            created = copy.deepcopy(obj)
        if resource == "jobs" and self.kubelet:
            self._spawn(self._run_job, namespace, name)
        return created

    def _default_job(self, job: dict) -> None:
        spec = job.setdefault("spec", {})
        spec.setdefault("parallelism", 1)
        spec.setdefault("completions", 1)
        spec.setdefault("backoffLimit", 6)
        spec.setdefault("completionMode", "NonIndexed")
        spec.setdefault("suspend", False)
        spec.setdefault("podReplacementPolicy", "TerminatingOrFailed")
        uid = job["metadata"]["uid"]
        name = job["metadata"]["name"]
        extra = {
            "batch.kubernetes.io/controller-uid": uid,
            "batch.kubernetes.io/job-name": name,
            "controller-uid": uid,
            "job-name": name,
        }
        spec.setdefault("selector", {"matchLabels": {"batch.kubernetes.io/controller-uid": uid}})
        template = spec.setdefault("template", {})
        template.setdefault("metadata", {}).setdefault("labels", {}).update(extra)
        job["metadata"]["labels"].update(
            {k: v for k, v in extra.items() if k.endswith("job-name") or "controller" in k}
        )
        job["status"] = {}

    def update(self, resource: str, namespace: str, name: str, mutate: Any) -> dict | None:
        """Apply `mutate(obj)` under the lock and emit a MODIFIED event."""
        with self.lock:
            obj = self.objects.get((resource, namespace, name))
            if obj is None:
                return None
            mutate(obj)
            self._bump(resource, namespace, "MODIFIED", obj)
            return copy.deepcopy(obj)

    def delete(self, resource: str, namespace: str, name: str, propagation: str | None) -> dict:
        with self.lock:
            obj = self.objects.pop((resource, namespace, name), None)
            if obj is None:
                raise ApiError(
                    404,
                    "NotFound",
                    f'{resource} "{name}" not found',
                    {"name": name, "kind": resource},
                )
            obj["metadata"]["deletionTimestamp"] = _now()
            self._bump(resource, namespace, "DELETED", obj)
            dependants: list[tuple[str, str]] = []
            if resource == "jobs" and propagation in ("Background", "Foreground"):
                uid = obj["metadata"]["uid"]
                dependants = [
                    (r, n)
                    for (r, ns, n), owned in self.objects.items()
                    if ns == namespace
                    and any(
                        ref.get("uid") == uid
                        for ref in owned["metadata"].get("ownerReferences", [])
                    )
                ]
            deleted = copy.deepcopy(obj)
        for dependant, dependant_name in dependants:  # the garbage collector
            with contextlib.suppress(ApiError):
                self.delete(dependant, namespace, dependant_name, None)
        if resource == "pods":  # the kubelet stops the container within the grace period
            grace = obj["spec"].get("terminationGracePeriodSeconds", 30)
            self._spawn(self._kill_process, (namespace, name), grace)
        return deleted

    # -- the kubelet and Job controller ----------------------------------------------------

    def _secret_value(self, namespace: str, pod_name: str, ref: dict) -> str | None:
        """Like the kubelet: until the Secret exists the container waits, reported as
        CreateContainerConfigError; None when the pod is deleted (or the server stops) first."""
        waiting_shown = False
        while not self._stopping.is_set():
            if self.get("pods", namespace, pod_name) is None:
                return None
            secret = self.get("secrets", namespace, ref["name"])
            if secret is not None and ref["key"] in secret.get("data", {}):
                return base64.b64decode(secret["data"][ref["key"]]).decode()
            if not waiting_shown:
                waiting_shown = True
                message = f'secret "{ref["name"]}" not found'
                self.update(
                    "pods",
                    namespace,
                    pod_name,
                    lambda p, why=message: _waiting(p, "CreateContainerConfigError", why),
                )
            with self.changed:
                self.changed.wait(0.2)
        return None

    def _spawn(self, target: Any, *args: Any) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True)
        with self.lock:
            self._threads = [t for t in self._threads if t.is_alive()]
            self._threads.append(thread)
        thread.start()

    def _run_job(self, namespace: str, name: str) -> None:
        started = time.monotonic()
        self.update("jobs", namespace, name, lambda j: j["status"].update(startTime=_now()))
        failed = 0
        while not self._stopping.is_set():
            job = self.get("jobs", namespace, name)
            if job is None:
                return
            deadline = job["spec"].get("activeDeadlineSeconds")
            remaining = None if deadline is None else deadline - (time.monotonic() - started)
            if remaining is not None and remaining <= 0:
                self._finish_job(
                    namespace,
                    name,
                    "Failed",
                    "DeadlineExceeded",
                    "Job was active longer than specified deadline",
                )
                return
            pod_name = self._create_pod(job)
            outcome = self._run_pod(namespace, pod_name, job, remaining)
            if outcome is None:  # Job or pod deleted under us
                return
            pod = outcome
            verdict = self._judge(job, pod)
            if verdict == "deadline":
                self._finish_job(
                    namespace,
                    name,
                    "Failed",
                    "DeadlineExceeded",
                    "Job was active longer than specified deadline",
                )
                return
            if verdict == "succeeded":
                self._finish_job(namespace, name, "Complete", "", "")
                return
            if verdict == "failjob":
                self._finish_job(
                    namespace,
                    name,
                    "Failed",
                    "PodFailurePolicy",
                    f"Container failed with exit code {_exit_code(pod)} matching FailJob rule",
                )
                return
            if verdict == "count":
                failed += 1
                if failed > job["spec"].get("backoffLimit", 6):
                    self._finish_job(
                        namespace,
                        name,
                        "Failed",
                        "BackoffLimitExceeded",
                        "Job has reached the specified backoff limit",
                    )
                    return
            # "ignore" (a disruption) or a counted failure within backoffLimit: replace the pod

    def _create_pod(self, job: dict) -> str:
        namespace, job_name = job["metadata"]["namespace"], job["metadata"]["name"]
        template = copy.deepcopy(job["spec"]["template"])
        pod = {
            "metadata": {
                "name": f"{job_name}-{secrets.token_hex(3)[:5]}",
                "labels": template.get("metadata", {}).get("labels", {}),
                "annotations": template.get("metadata", {}).get("annotations", {}),
                "ownerReferences": [
                    {
                        "apiVersion": "batch/v1",
                        "kind": "Job",
                        "name": job_name,
                        "uid": job["metadata"]["uid"],
                        "controller": True,
                        "blockOwnerDeletion": True,
                    }
                ],
            },
            "spec": template["spec"],
            "status": {
                "phase": "Pending",
                "conditions": [
                    {"type": "PodScheduled", "status": "True", "lastTransitionTime": _now()}
                ],
            },
        }
        created = self.create("pods", namespace, pod)
        self.update("jobs", namespace, job_name, lambda j: j["status"].update(active=1, ready=0))
        return created["metadata"]["name"]

    def _run_pod(
        self, namespace: str, pod_name: str, job: dict, remaining: float | None
    ) -> dict | None:
        if self.schedule_delay:
            time.sleep(self.schedule_delay)
        pod = self.get("pods", namespace, pod_name)
        if pod is None:
            return None
        container = pod["spec"]["containers"][0]
        env = dict(self.kubelet_env)
        for item in container.get("env", []):
            if "value" in item:
                env[item["name"]] = item["value"]
            elif "secretKeyRef" in item.get("valueFrom", {}):
                value = self._secret_value(namespace, pod_name, item["valueFrom"]["secretKeyRef"])
                if value is None:
                    return None  # the pod was deleted while it waited
                env[item["name"]] = value
        argv = list(container.get("command", [])) + list(container.get("args", []))
        proc = subprocess.Popen(
            argv,
            env=env,
            cwd=self.kubelet_cwd or container.get("workingDir") or None,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        running = PodProcess(proc)
        running.reader = threading.Thread(target=_pump, args=(proc, running.log), daemon=True)
        running.reader.start()
        with self.lock:
            self.processes[(namespace, pod_name)] = running

        def to_running(p: dict) -> None:
            p["status"].update(phase="Running", startTime=_now(), podIP="127.0.0.1")
            p["status"]["conditions"].append(
                {"type": "Ready", "status": "True", "lastTransitionTime": _now()}
            )
            p["status"]["containerStatuses"] = [
                {
                    "name": container["name"],
                    "ready": True,
                    "restartCount": 0,
                    "image": container.get("image", ""),
                    "imageID": container.get("image", ""),
                    "state": {"running": {"startedAt": _now()}},
                }
            ]

        self.update("pods", namespace, pod_name, to_running)
        self.update(
            "jobs", namespace, job["metadata"]["name"], lambda j: j["status"].update(ready=1)
        )
        deadline_hit = False
        try:
            proc.wait(timeout=remaining)
        except subprocess.TimeoutExpired:
            deadline_hit = True
            self._kill_process(
                (namespace, pod_name),
                grace=job["spec"]["template"]["spec"].get("terminationGracePeriodSeconds", 30),
            )
        running.reader.join(timeout=5)
        code = proc.returncode if proc.returncode is not None else 137
        if code < 0:
            code = 128 - code  # killed by signal N: the container runtime reports 128+N

        def to_terminated(p: dict) -> None:
            p["status"]["phase"] = "Succeeded" if code == 0 else "Failed"
            if deadline_hit:
                p["status"]["reason"] = "DeadlineExceeded"
                _set_condition(p, "DisruptionTarget", "DeadlineExceeded")
            for cond in p["status"]["conditions"]:
                if cond["type"] == "Ready":
                    cond["status"] = "False"
            p["status"]["containerStatuses"][0].update(
                ready=False,
                state={
                    "terminated": {
                        "exitCode": code,
                        "reason": "Completed" if code == 0 else "Error",
                        "startedAt": p["status"].get("startTime"),
                        "finishedAt": _now(),
                    }
                },
            )

        final = self.update("pods", namespace, pod_name, to_terminated)
        if final is not None and deadline_hit:
            final["_deadline"] = True
        return final

    def _judge(self, job: dict, pod: dict) -> str:
        if pod.pop("_deadline", False):
            return "deadline"
        if pod["status"]["phase"] == "Succeeded":
            return "succeeded"
        code = _exit_code(pod)
        pod_conditions = {
            c["type"] for c in pod["status"].get("conditions", []) if c.get("status") == "True"
        }
        for rule in job["spec"].get("podFailurePolicy", {}).get("rules", []):
            if "onPodConditions" in rule:
                if any(c["type"] in pod_conditions for c in rule["onPodConditions"]):
                    return rule["action"].lower()
            elif "onExitCodes" in rule:
                spec = rule["onExitCodes"]
                hit = code in spec["values"]
                if (spec["operator"] == "In") == hit:
                    return rule["action"].lower()
        if "DisruptionTarget" in pod_conditions and not job["spec"].get("podFailurePolicy"):
            return "count"
        return "count"

    def _finish_job(
        self, namespace: str, name: str, condition: str, reason: str, message: str
    ) -> None:
        def finish(j: dict) -> None:
            status = j["status"]
            now = _now()
            status.update(active=0, ready=0, terminating=0)
            conds = status.setdefault("conditions", [])
            if condition == "Complete":
                status["succeeded"] = 1
                status["completionTime"] = now
                conds.append(
                    {
                        "type": "SuccessCriteriaMet",
                        "status": "True",
                        "reason": "CompletionsReached",
                        "message": "Reached expected number of succeeded pods",
                        "lastProbeTime": now,
                        "lastTransitionTime": now,
                    }
                )
                conds.append(
                    {
                        "type": "Complete",
                        "status": "True",
                        "reason": "CompletionsReached",
                        "message": "Reached expected number of succeeded pods",
                        "lastProbeTime": now,
                        "lastTransitionTime": now,
                    }
                )
            else:
                status["failed"] = status.get("failed", 0) + 1
                conds.append(
                    {
                        "type": "FailureTarget",
                        "status": "True",
                        "reason": reason,
                        "message": message,
                        "lastProbeTime": now,
                        "lastTransitionTime": now,
                    }
                )
                conds.append(
                    {
                        "type": "Failed",
                        "status": "True",
                        "reason": reason,
                        "message": message,
                        "lastProbeTime": now,
                        "lastTransitionTime": now,
                    }
                )

        self.update("jobs", namespace, name, finish)

    def _kill_process(self, key: tuple[str, str], grace: float) -> None:
        """Like the kubelet: SIGTERM to the container's main process, SIGKILL after the grace."""
        with self.lock:
            running = self.processes.get(key)
        if running is None or running.proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(running.proc.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            running.proc.wait(timeout=grace if grace > 0 else 0.01)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(running.proc.pid, signal.SIGKILL)  # the whole container, children too
        with contextlib.suppress(subprocess.TimeoutExpired):
            running.proc.wait(timeout=10)

    def evict(self, namespace: str, pod_name: str, grace: float | None = None) -> None:
        """Evict like a drain: DisruptionTarget condition, SIGTERM, grace period, SIGKILL."""
        pod = self.update(
            "pods",
            namespace,
            pod_name,
            lambda p: _set_condition(p, "DisruptionTarget", "EvictionByEvictionAPI"),
        )
        if pod is None:
            raise KeyError(pod_name)
        if grace is None:
            grace = pod["spec"].get("terminationGracePeriodSeconds", 30)
        self._kill_process((namespace, pod_name), grace=grace)

    def crash(self, namespace: str, pod_name: str) -> None:
        """The container dies at once (OOM kill, node crash): SIGKILL, no condition, no grace."""
        with self.lock:
            running = self.processes.get((namespace, pod_name))
        if running is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(running.proc.pid, signal.SIGKILL)

    def pod_log(self, namespace: str, pod_name: str) -> str:
        with self.lock:
            running = self.processes.get((namespace, pod_name))
            return bytes(running.log).decode(errors="replace") if running else ""

    def pods_of_job(self, namespace: str, job_name: str) -> list[dict]:
        return self.list("pods", namespace, f"batch.kubernetes.io/job-name={job_name}")

    def wait_for(self, predicate: Any, timeout: float = 30.0) -> Any:
        """Block until predicate() is truthy (re-checked on every change); return its value.

        The predicate runs without the lock: it may call this server over HTTP.
        """
        end = time.monotonic() + timeout
        while True:
            value = predicate()
            if value:
                return value
            left = end - time.monotonic()
            if left <= 0:
                raise TimeoutError("condition not met")
            with self.changed:
                self.changed.wait(min(left, 0.2))

    # -- watch -----------------------------------------------------------------------------

    def watch_events(
        self, resource: str, namespace: str | None, selector: str, since: str | None, timeout: float
    ) -> Iterator[dict]:
        end = time.monotonic() + timeout
        with self.lock:
            epoch = self._watch_epoch
            initial: list[dict] = []
            if since in (None, "", "0"):
                start_rv = self.resource_version
                initial = [
                    {"type": "ADDED", "object": o} for o in self.list(resource, namespace, selector)
                ]
            else:
                start_rv = int(since)  # type: ignore[arg-type]
                if start_rv < self.compacted_rv:
                    initial = [_gone(start_rv, self.compacted_rv)]
        yield from initial
        if initial and initial[0]["type"] == "ERROR":
            return
        cursor = start_rv
        while not self._stopping.is_set():
            with self.changed:
                if self._watch_epoch != epoch:
                    yield _gone(cursor, self.compacted_rv)
                    return
                first = bisect.bisect_right(self.events, cursor, key=lambda e: e[0])
                batch = [
                    (rv, etype, obj)
                    for rv, r, ns, etype, obj in self.events[first:]
                    if r == resource and (namespace is None or ns == namespace)
                ]
                if not batch:
                    left = end - time.monotonic()
                    if left <= 0:
                        return
                    self.changed.wait(min(left, 0.5))
                    continue
            for rv, etype, obj in batch:
                cursor = rv
                if _selector_matches(obj["metadata"].get("labels", {}), selector):
                    yield {"type": etype, "object": obj}
            if time.monotonic() >= end:
                return


def _waiting(pod: dict, reason: str, message: str) -> None:
    container = pod["spec"]["containers"][0]
    pod["status"]["containerStatuses"] = [
        {
            "name": container["name"],
            "ready": False,
            "restartCount": 0,
            "image": container.get("image", ""),
            "imageID": "",
            "state": {"waiting": {"reason": reason, "message": message}},
        }
    ]


def _default_secret(secret: dict) -> None:
    """As the API server stores a Secret: stringData folded into base64 data."""
    data = secret.setdefault("data", {})
    for key, value in (secret.pop("stringData", None) or {}).items():
        data[key] = base64.b64encode(value.encode()).decode()
    secret.setdefault("type", "Opaque")


def _gone(since: int, compacted: int) -> dict:
    return {
        "type": "ERROR",
        "object": status_object(
            410, "Expired", f"too old resource version: {since} ({compacted + 1})"
        ),
    }


def _methods(methods: tuple[str, ...] | None) -> frozenset[str] | None:
    return frozenset(m.upper() for m in methods) if methods else None


def _exit_code(pod: dict) -> int | None:
    for status in pod["status"].get("containerStatuses", []):
        terminated = status.get("state", {}).get("terminated")
        if terminated:
            return terminated["exitCode"]
    return None


def _set_condition(pod: dict, type_: str, reason: str) -> None:
    conds = pod["status"].setdefault("conditions", [])
    conds[:] = [c for c in conds if c["type"] != type_]
    conds.append({"type": type_, "status": "True", "reason": reason, "lastTransitionTime": _now()})


def _pump(proc: subprocess.Popen, sink: bytearray) -> None:
    assert proc.stdout is not None
    for chunk in iter(lambda: proc.stdout.readline(), b""):  # type: ignore[union-attr]
        sink.extend(chunk)


Response = tuple[int, bytes, str, dict[str, str]]


class _Handler(BaseHTTPRequestHandler):
    api: FakeKubeApiServer
    protocol_version = "HTTP/1.1"
    # Headers and body go out in separate writes: without TCP_NODELAY, Nagle's algorithm and
    # the client's delayed ACK add ~40 ms to every answer on a kept-alive connection.
    disable_nagle_algorithm = True

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_DELETE(self) -> None:
        self._dispatch("DELETE")

    def _dispatch(self, method: str) -> None:
        parts = urlsplit(self.path)
        query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        body = json.loads(raw) if raw.strip() else {}
        fault = self.api._take_fault(method, parts.path)
        status = 200
        recorded = False
        try:
            try:
                if fault is not None and not fault.after_apply:
                    raise _fault_error(fault)
                response = self._route(method, parts.path, query, body)
                if fault is not None:  # the write happened; the client never hears it did
                    raise _fault_error(fault)
            except ApiError as e:
                headers = {}
                if fault is not None and fault.retry_after is not None:
                    headers["Retry-After"] = str(fault.retry_after)
                response = (e.code, json.dumps(e.body).encode(), "application/json", headers)
            if response is not None:
                status = response[0]
                # Recorded before the client can read the answer: a test that asserts on the
                # log right after its call returns sees this request.
                with self.api.lock:
                    self.api.requests.append((method, self.path, status))
                recorded = True
                self._send_bytes(*response)
        except (BrokenPipeError, ConnectionResetError):
            status = 499
        finally:
            if not recorded:
                with self.api.lock:
                    self.api.requests.append((method, self.path, status))

    def _route(self, method: str, path: str, query: dict[str, str], body: dict) -> Response | None:
        segments = [s for s in path.split("/") if s]
        if path == "/version":
            return self._send_json(200, {"major": "1", "minor": "34", "gitVersion": "v1.34.0-fake"})
        if segments[:2] == ["apis", "batch"]:
            segments = segments[3:]  # drop apis/batch/v1
        elif segments[:2] == ["api", "v1"]:
            segments = segments[2:]
        else:
            raise ApiError(
                404, "NotFound", f"the server could not find the requested resource ({path})"
            )
        namespace: str | None = None
        if segments[:1] == ["namespaces"] and len(segments) >= 3:
            namespace, segments = segments[1], segments[2:]
        if not segments or segments[0] not in KINDS:
            raise ApiError(
                404, "NotFound", f"the server could not find the requested resource ({path})"
            )
        resource = segments[0]
        name = segments[1] if len(segments) > 1 else None
        sub = segments[2] if len(segments) > 2 else None
        if name is None:
            if method == "POST" and namespace:
                return self._send_json(201, self.api.create(resource, namespace, body))
            if method == "GET" and query.get("watch") in ("true", "1"):
                return self._watch(resource, namespace, query)
            if method == "GET":
                return self._list(resource, namespace, query)
        elif namespace:
            if method == "GET" and sub is None:
                obj = self.api.get(resource, namespace, name)
                if obj is None:
                    raise ApiError(
                        404,
                        "NotFound",
                        f'{resource} "{name}" not found',
                        {"name": name, "kind": resource},
                    )
                return self._send_json(200, obj)
            if method == "GET" and sub == "log" and resource == "pods":
                if self.api.get("pods", namespace, name) is None:
                    raise ApiError(
                        404, "NotFound", f'pods "{name}" not found', {"name": name, "kind": "pods"}
                    )
                text = self.api.pod_log(namespace, name)
                if query.get("tailLines"):
                    text = "".join(text.splitlines(keepends=True)[-int(query["tailLines"]) :])
                return (200, text.encode(), "text/plain", {})
            if method == "DELETE" and sub is None:
                propagation = body.get("propagationPolicy") or query.get("propagationPolicy")
                deleted = self.api.delete(resource, namespace, name, propagation)
                if resource != "jobs":
                    return self._send_json(200, deleted)
                return self._send_json(
                    200,
                    status_object(
                        200,
                        "",
                        "",
                        {
                            "name": name,
                            "group": "batch",
                            "kind": resource,
                            "uid": deleted["metadata"]["uid"],
                        },
                    ),
                )
        raise ApiError(405, "MethodNotAllowed", f"{method} is not supported on {path}")

    def _list(self, resource: str, namespace: str | None, query: dict[str, str]) -> Response:
        api_version, kind, _ = KINDS[resource]
        with self.api.lock:
            items = self.api.list(resource, namespace, query.get("labelSelector", ""))
            rv = str(self.api.resource_version)
        return self._send_json(
            200,
            {
                "kind": f"{kind}List",
                "apiVersion": api_version,
                "metadata": {"resourceVersion": rv},
                "items": items,
            },
        )

    def _watch(self, resource: str, namespace: str | None, query: dict[str, str]) -> None:
        timeout = float(query.get("timeoutSeconds") or 1800)
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        events = self.api.watch_events(
            resource,
            namespace,
            query.get("labelSelector", ""),
            query.get("resourceVersion"),
            timeout,
        )
        for event in events:
            data = (json.dumps(event) + "\n").encode()
            self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
            self.wfile.flush()
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()
        return None

    def _send_json(self, code: int, obj: dict, headers: dict[str, str] | None = None) -> Response:
        return (code, json.dumps(obj).encode(), "application/json", headers or {})

    def _send_bytes(
        self, code: int, data: bytes, content_type: str, headers: dict[str, str] | None = None
    ) -> None:
        self.send_response(
            code, HTTPStatus(code).phrase if code in HTTPStatus._value2member_map_ else None
        )
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(data)


def _fault_error(fault: Fault) -> ApiError:
    if fault.status == 429:
        return ApiError(
            429,
            "TooManyRequests",
            "the server has received too many requests and has asked us to try again later",
            {"retryAfterSeconds": fault.retry_after or 1},
        )
    return ApiError(
        fault.status,
        "InternalError",
        'an error on the server ("fake fault") has prevented the request from succeeding',
    )


if __name__ == "__main__":  # python -m tests.fakes.kube_apiserver: serve until interrupted
    server = FakeKubeApiServer(kubelet="--kubelet" in sys.argv).start()
    print(f"fake kube-apiserver at {server.url}; kubeconfig: {server.kubeconfig}", flush=True)
    try:
        signal.pause()
    finally:
        server.stop()
