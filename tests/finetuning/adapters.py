"""Helpers to open a downloaded adapter archive and prove it really changes the model."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import torch


def extract(archive: bytes, target: Path) -> Path:
    target.mkdir(parents=True, exist_ok=True)
    with tarfile.open(fileobj=io.BytesIO(archive), mode="r:gz") as tar:
        tar.extractall(target, filter="data")
    return target


def assert_adapter_changes_logits(adapter_dir: Path, base_model_id: str, cache_dir: Path) -> None:
    """Loads with peft, with no missing or unexpected keys, and the logits move."""
    from peft import PeftModel, set_peft_model_state_dict
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from workers import catalog

    names = {p.name for p in adapter_dir.iterdir()}
    assert {"adapter_config.json", "adapter_model.safetensors", "manifest.json"} <= names
    base_path = catalog.resolve(base_model_id, cache_dir=cache_dir)
    tokenizer = AutoTokenizer.from_pretrained(base_path)
    inputs = tokenizer("What colour is item 3?", return_tensors="pt")
    base = AutoModelForCausalLM.from_pretrained(base_path)
    base.eval()
    with torch.no_grad():
        before = base(**inputs).logits
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_path), adapter_dir)
    model.eval()
    # Strict: re-apply the saved weights and check that every key matched.
    result = set_peft_model_state_dict(model, load_file(adapter_dir / "adapter_model.safetensors"))
    assert not result.unexpected_keys, result.unexpected_keys
    lora_missing = [k for k in result.missing_keys if "lora_" in k]
    assert not lora_missing, lora_missing
    with torch.no_grad():
        after = model(**inputs).logits
    assert not torch.allclose(before, after), "the adapter does not change the logits"


def assert_eval_report(raw: bytes, *, job_id: str, base_model: str = "partage/tiny-llama") -> dict:
    """eval.json, as every succeeded job delivers it: base and adapter answers side by side."""
    import json

    report = json.loads(raw)
    assert report["format"] == "partage-eval/1" and "error" not in report, report.get("error")
    assert report["job_id"] == job_id and report["base_model"] == base_model
    assert report["source"] in {"validation_file", "training_holdout", "training_file"}
    assert report["samples"], "the evaluation answered no prompt"
    for sample in report["samples"]:
        assert {"prompt", "reference", "base_answer", "adapter_answer"} <= set(sample)
        assert isinstance(sample["base_loss"], float) and isinstance(sample["adapter_loss"], float)
    return report
