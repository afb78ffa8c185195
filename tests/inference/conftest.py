"""Fine-tuned models to chat with: succeeded jobs whose adapter archive is a real result file,
and a fake vLLM (tests/fakes/vllm_server.py) behind the vLLM backend."""

from __future__ import annotations

import io
import json
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from marketplace.finetuning.models import FineTuningJob
from marketplace.finetuning.services import result_file_create
from tests.api.factories import job_for
from tests.fakes.vllm_server import FakeVllm


def adapter_archive(adapter_dir: Path | None = None, *, rank: int = 4) -> bytes:
    """The adapter archive a job delivers: a real one from `adapter_dir`, or a stand-in."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        if adapter_dir is not None:
            for path in sorted(adapter_dir.iterdir()):
                tar.add(path, arcname=path.name)
        else:
            for name, data in {
                "adapter_config.json": json.dumps(
                    {"r": rank, "lora_alpha": 8, "base_model_name_or_path": "partage/tiny-llama"}
                ).encode(),
                "adapter_model.safetensors": b"weights",
                "manifest.json": b"{}",
            }.items():
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def fine_tuned(
    org: Any, *, status: str = "succeeded", archive: bytes | None = None
) -> FineTuningJob:
    job = job_for(org, status=status, events=0, checkpoints=0)
    if status == "succeeded":
        job.result_file = result_file_create(
            job=job,
            stream=io.BytesIO(archive or adapter_archive()),
            filename=f"{job.id}-adapter.tar.gz",
        )
        job.save(update_fields=["result_file"])
    else:  # the name it will have once it succeeds
        job.fine_tuned_model = ""
        job.save(update_fields=["fine_tuned_model"])
    return job


def model_name(job: FineTuningJob) -> str:
    return job.fine_tuned_model or f"ft:{job.model}:{job.organization.slug}:{job.id[6:14]}"


@pytest.fixture
def vllm(settings: Any, tmp_path: Path) -> Iterator[FakeVllm]:
    fake = FakeVllm("partage/tiny-llama").start()
    settings.PARTAGE_INFERENCE_BACKEND = "vllm"
    settings.PARTAGE_VLLM_ROUTES = {"partage/tiny-llama": fake.url}
    settings.PARTAGE_ADAPTER_DIR = tmp_path / "adapters"
    settings.PARTAGE_VLLM_ADAPTER_DIR = tmp_path / "adapters"  # the shared volume
    yield fake
    fake.stop()


@pytest.fixture
def local_inference(settings: Any, tmp_path: Path) -> Iterator[str]:
    """The embedded default's backend: the local inference worker, a process of its own."""
    from tests.inference.workers import start_worker

    process, url = start_worker(
        "--max-adapters", "2", env={"PARTAGE_MODEL_CACHE": str(settings.PARTAGE_MODEL_CACHE)}
    )
    settings.PARTAGE_INFERENCE_BACKEND = "local"
    settings.PARTAGE_INFERENCE_URL = url
    settings.PARTAGE_ADAPTER_DIR = tmp_path / "adapters"
    yield url
    process.terminate()
    process.wait(timeout=30)
