"""Tiny-model fixtures for the LoRA core tests. Models are built locally (no hub)."""

from __future__ import annotations

import json
import os
import pathlib
from collections.abc import Iterator
from typing import Any

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def model_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[pathlib.Path]:
    """A private catalog cache so tests never touch <repo>/var/models."""
    cache = tmp_path_factory.mktemp("models")
    previous = os.environ.get("PARTAGE_MODEL_CACHE")
    os.environ["PARTAGE_MODEL_CACHE"] = str(cache)
    yield cache
    if previous is None:
        os.environ.pop("PARTAGE_MODEL_CACHE", None)
    else:
        os.environ["PARTAGE_MODEL_CACHE"] = previous


@pytest.fixture(scope="session")
def tiny_llama_dir(model_cache: pathlib.Path) -> pathlib.Path:
    from workers.catalog import resolve

    return resolve("partage/tiny-llama")


@pytest.fixture(scope="session")
def tiny_tokenizer(tiny_llama_dir: pathlib.Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(tiny_llama_dir))


def chat_rows(n: int) -> list[dict[str, Any]]:
    return [
        {
            "messages": [
                {"role": "system", "content": "You are terse."},
                {"role": "user", "content": f"What is {i} plus {i}?" + " please" * (i % 5)},
                {"role": "assistant", "content": f"{i} plus {i} is {2 * i}." + " yes" * (i % 3)},
            ]
        }
        for i in range(n)
    ]


def write_jsonl(path: pathlib.Path, rows: list[Any]) -> pathlib.Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def job_config(tmp_path: pathlib.Path, **overrides: Any) -> dict[str, Any]:
    hyper = {
        "n_epochs": 2,
        "batch_size": 4,
        "learning_rate": 1e-3,
        "checkpoint_every_steps": 100,
    }
    hyper.update(overrides.pop("hyperparameters", {}))
    config = {
        "job_id": "ftjob-test",
        "base_model": "partage/tiny-llama",
        "training_file": str(write_jsonl(tmp_path / "train.jsonl", chat_rows(16))),
        "validation_file": None,
        "output_dir": str(tmp_path / "out"),
        "seed": 7,
        "hyperparameters": hyper,
        "lora": {"r": 4, "alpha": 8, "dropout": 0.0, "target_modules": "all-linear"},
        "max_rank": 64,
    }
    config.update(overrides)
    return config
