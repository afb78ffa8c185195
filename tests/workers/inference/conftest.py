"""A tiny base model, adapters made directly with peft (random non-zero LoRA weights: they change
the answers), and the inference worker run as its own process."""

from __future__ import annotations

import pathlib
from collections.abc import Iterator
from typing import Any

import pytest

from tests.inference.workers import start_worker
from tests.workers.lora.conftest import model_cache, tiny_llama_dir  # noqa: F401 - fixtures


def make_adapter(
    base_dir: pathlib.Path, out: pathlib.Path, *, seed: int, r: int = 4
) -> pathlib.Path:
    """A servable PEFT adapter for the tiny model whose lora_B is random (so it changes outputs)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    base = AutoModelForCausalLM.from_pretrained(str(base_dir))
    config = LoraConfig(
        r=r, lora_alpha=2 * r, target_modules=["q_proj", "v_proj"], bias="none",
        task_type="CAUSAL_LM",
    )  # fmt: skip
    model = get_peft_model(base, config)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.5)
    model.peft_config["default"].base_model_name_or_path = "partage/tiny-llama"
    model.save_pretrained(str(out))
    return out


@pytest.fixture(scope="session")
def adapters(tiny_llama_dir: pathlib.Path, tmp_path_factory: Any) -> list[pathlib.Path]:  # noqa: F811
    root = tmp_path_factory.mktemp("adapters")
    return [make_adapter(tiny_llama_dir, root / f"a{i}", seed=i) for i in range(3)]


@pytest.fixture(scope="session")
def inference_worker(tiny_llama_dir: pathlib.Path) -> Iterator[str]:  # noqa: F811
    process, url = start_worker("--max-adapters", "2")
    yield url
    process.terminate()
    process.wait(timeout=30)
