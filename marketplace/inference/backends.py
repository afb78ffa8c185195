"""Inference backends behind one interface: `backend_for(base_model).stream(...)`.

Both speak the OpenAI-compatible HTTP API with vLLM's dynamic LoRA routes: the adapter is named
by its job id, a chat request names it as the `model`, and an unknown name (404) is answered by
`POST /v1/load_lora_adapter` then one retry. So a server that restarted, or evicted the adapter,
is refilled on demand, and Partage keeps no state about what each server holds.

- LocalBackend: the embedded default. `python -m workers.inference` (a dedicated process, see
  `manage.py partage_up`) at PARTAGE_INFERENCE_URL; adapters are unpacked under
  PARTAGE_ADAPTER_DIR, which that process reads.
- VllmBackend: production. One vLLM per base model and pool (k8s/base/inference/), routed by
  PARTAGE_VLLM_ROUTES {base model: URL}; the adapter directory is a volume shared with vLLM,
  mounted there at PARTAGE_VLLM_ADAPTER_DIR.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol

import requests
from django.conf import settings

from marketplace.errors import InvalidInput
from marketplace.finetuning.models import FineTuningJob
from marketplace.inference.errors import InferenceUnavailable


@dataclasses.dataclass(frozen=True)
class ChatRequest:
    messages: list[dict[str, str]]
    max_tokens: int = 256
    temperature: float | None = None
    top_p: float | None = None
    seed: int | None = None
    stop: tuple[str, ...] = ()

    def body(self, model: str) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": model,
            "messages": self.messages,
            "max_tokens": self.max_tokens,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        for key in ("temperature", "top_p", "seed"):
            if getattr(self, key) is not None:
                body[key] = getattr(self, key)
        if self.stop:
            body["stop"] = list(self.stop)
        return body


@dataclasses.dataclass
class Delta:
    text: str = ""
    finish_reason: str | None = None
    prompt_tokens: int | None = None  # set on the last delta, from the server's usage
    completion_tokens: int | None = None


class InferenceBackend(Protocol):
    def stream(self, *, job: FineTuningJob, request: ChatRequest) -> Iterator[Delta]: ...


def adapter_unpack(job: FineTuningJob, root: Path) -> Path:
    """The job's adapter archive unpacked under root/<job id> (once; atomic rename)."""
    target = root / job.id
    if (target / "adapter_config.json").is_file():
        return target
    if job.result_file is None:
        raise InvalidInput(f"Job {job.id} has no adapter.", param="model")
    root.mkdir(parents=True, exist_ok=True)
    tmp = root / f".{job.id}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    with (
        job.result_file.content.open("rb") as handle,
        tarfile.open(fileobj=handle, mode="r:gz") as tar,
    ):
        tar.extractall(tmp, filter="data")
    try:
        tmp.rename(target)
    except OSError:  # another request unpacked it meanwhile
        shutil.rmtree(tmp, ignore_errors=True)
    return target


class OpenAICompatibleServer:
    """One server with dynamic LoRA loading (vLLM, or the local inference worker)."""

    def __init__(self, url: str, *, adapter_dir: Path, served_adapter_dir: Path) -> None:
        self.url = url.rstrip("/")
        self.adapter_dir = adapter_dir  # where this web process unpacks adapters
        self.served_adapter_dir = served_adapter_dir  # the same directory, as the server sees it
        self.timeout = settings.PARTAGE_INFERENCE_TIMEOUT_SECONDS

    def _post(self, path: str, body: dict[str, Any], *, stream: bool = False) -> requests.Response:
        try:
            return requests.post(
                f"{self.url}{path}", json=body, stream=stream, timeout=(5, self.timeout)
            )
        except requests.RequestException as e:
            raise InferenceUnavailable(
                f"The inference server for this model is unreachable ({type(e).__name__}). "
                "Retry in a moment; if it persists, contact support.",
            ) from e

    def _load(self, job: FineTuningJob) -> None:
        adapter_unpack(job, self.adapter_dir)
        response = self._post(
            "/v1/load_lora_adapter",
            {"lora_name": job.id, "lora_path": str(self.served_adapter_dir / job.id)},
        )
        if response.status_code >= 400 and "already" not in response.text:
            raise InferenceUnavailable(
                f"The inference server refused to load the adapter of {job.id}: "
                f"{response.text[:300]}"
            )

    def stream(self, *, job: FineTuningJob, request: ChatRequest) -> Iterator[Delta]:
        response = self._post("/v1/chat/completions", request.body(job.id), stream=True)
        if response.status_code == 404:
            response.close()
            self._load(job)
            response = self._post("/v1/chat/completions", request.body(job.id), stream=True)
        if response.status_code >= 400:
            text = response.text[:500]
            response.close()
            if response.status_code == 400:
                raise InvalidInput(f"The inference server rejected the request: {text}")
            raise InferenceUnavailable(f"The inference server answered {response.status_code}.")
        return _deltas(response)


def _deltas(response: requests.Response) -> Iterator[Delta]:
    """Parse the server's SSE stream; the last Delta carries finish_reason and usage."""
    final = Delta()
    try:
        for raw in response.iter_lines(decode_unicode=True):
            if not raw or not raw.startswith("data:"):
                continue
            data = raw.removeprefix("data:").strip()
            if data == "[DONE]":
                break
            chunk = json.loads(data)
            usage = chunk.get("usage")
            if usage:
                final.prompt_tokens = int(usage.get("prompt_tokens") or 0)
                final.completion_tokens = int(usage.get("completion_tokens") or 0)
            for choice in chunk.get("choices") or []:
                text = (choice.get("delta") or {}).get("content") or ""
                if text:
                    yield Delta(text=text)
                if choice.get("finish_reason"):
                    final.finish_reason = choice["finish_reason"]
    finally:
        response.close()
    yield final


def backend_for(base_model: str) -> InferenceBackend:
    adapter_dir = Path(settings.PARTAGE_ADAPTER_DIR)
    if settings.PARTAGE_INFERENCE_BACKEND == "vllm":
        url = settings.PARTAGE_VLLM_ROUTES.get(base_model)
        if not url:
            raise InferenceUnavailable(
                f"No inference server serves the base model {base_model!r} yet.", param="model"
            )
        return OpenAICompatibleServer(
            url, adapter_dir=adapter_dir, served_adapter_dir=Path(settings.PARTAGE_VLLM_ADAPTER_DIR)
        )
    return OpenAICompatibleServer(
        settings.PARTAGE_INFERENCE_URL, adapter_dir=adapter_dir, served_adapter_dir=adapter_dir
    )
