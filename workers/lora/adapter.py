"""Write the final adapter (PEFT format + manifest.json, REFERENCE §3) and verify it strictly."""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import pathlib
import platform
import shutil
from typing import Any

import torch

ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")


class AdapterVerificationError(Exception):
    """The saved adapter does not load back exactly: an internal error."""


def sha256_file(path: pathlib.Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def library_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for package in ("torch", "transformers", "peft", "safetensors", "accelerate", "tokenizers"):
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            versions[package] = "absent"
    return versions


def tokenizer_hashes(model_dir: pathlib.Path, tokenizer: Any) -> dict[str, str]:
    digest = hashlib.sha256()
    for name in (
        "tokenizer.json",
        "tokenizer_config.json",
        "tokenizer.model",
        "special_tokens_map.json",
    ):
        if (model_dir / name).exists():
            digest.update(name.encode())
            digest.update((model_dir / name).read_bytes())
    template = tokenizer.chat_template or ""
    return {
        "tokenizer_sha256": digest.hexdigest(),
        "chat_template_sha256": hashlib.sha256(str(template).encode()).hexdigest(),
    }


def save_adapter(peft_model: Any, out_dir: pathlib.Path) -> None:
    """Save only adapter_config.json + adapter_model.safetensors (atomically replace out_dir)."""
    tmp = out_dir.with_name(out_dir.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    peft_model.save_pretrained(str(tmp), safe_serialization=True, save_embedding_layers=False)
    for extra in tmp.iterdir():
        if extra.name not in ADAPTER_FILES:
            extra.unlink() if extra.is_file() else shutil.rmtree(extra)
    _short_target_modules(tmp / "adapter_config.json")
    shutil.rmtree(out_dir, ignore_errors=True)
    tmp.rename(out_dir)


def _short_target_modules(config_path: pathlib.Path) -> None:
    """peft expands "all-linear" to full module paths; servers expect leaf names (q_proj…).

    Equivalent here because every module with a targeted leaf name was targeted; the strict
    reload in verify_adapter proves it.
    """
    config = json.loads(config_path.read_text())
    targets = config.get("target_modules")
    if isinstance(targets, list):
        config["target_modules"] = sorted({t.rsplit(".", 1)[-1] for t in targets})
        config_path.write_text(json.dumps(config, indent=2, sort_keys=True))


def write_manifest(out_dir: pathlib.Path, fields: dict[str, Any]) -> dict[str, Any]:
    manifest = {
        "format": "partage-lora-adapter/1",
        "files": {
            name: {"sha256": sha256_file(out_dir / name), "bytes": (out_dir / name).stat().st_size}
            for name in ADAPTER_FILES
        },
        **fields,
        "library_versions": library_versions(),
    }
    (out_dir / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True))
    return manifest


def verify_adapter(
    adapter_dir: pathlib.Path, model_dir: pathlib.Path, *, base_model_id: str, max_rank: int
) -> None:
    """Reload with PeftModel.from_pretrained on a fresh base; fail on any key/value mismatch."""
    from peft import PeftModel
    from peft.utils import get_peft_model_state_dict
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    config = json.loads((adapter_dir / "adapter_config.json").read_text())
    problems = []
    if config.get("base_model_name_or_path") != base_model_id:
        problems.append(f"base_model_name_or_path={config.get('base_model_name_or_path')!r}")
    if config.get("modules_to_save"):
        problems.append("modules_to_save is set")
    if config.get("use_dora"):
        problems.append("DoRA is set")
    if config.get("bias", "none") != "none":
        problems.append(f"bias={config.get('bias')!r}")
    if not isinstance(config.get("r"), int) or config["r"] > max_rank:
        problems.append(f"r={config.get('r')!r} exceeds max_rank={max_rank}")
    if problems:  # not servable, whatever the weights
        raise AdapterVerificationError("adapter verification failed: " + "; ".join(problems))
    saved = load_file(str(adapter_dir / "adapter_model.safetensors"))
    base = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32)
    try:
        loaded = PeftModel.from_pretrained(base, str(adapter_dir))
    except Exception as e:
        raise AdapterVerificationError(
            f"adapter verification failed: PeftModel.from_pretrained raised {e!r}"
        ) from e
    expected = get_peft_model_state_dict(loaded)
    missing = sorted(set(expected) - set(saved))
    unexpected = sorted(set(saved) - set(expected))
    if missing:
        problems.append(f"missing keys {missing[:3]} (+{max(0, len(missing) - 3)})")
    if unexpected:
        problems.append(f"unexpected keys {unexpected[:3]} (+{max(0, len(unexpected) - 3)})")
    for key in set(saved) & set(expected):
        if not torch.equal(saved[key].float(), expected[key].detach().float().cpu()):
            problems.append(f"{key} did not load back identically")
            break
    lora_b = [v for k, v in saved.items() if "lora_B" in k]
    if not lora_b or all(not bool(v.abs().sum() > 0) for v in lora_b):
        problems.append("every lora_B matrix is zero: the adapter does nothing")
    if problems:
        raise AdapterVerificationError("adapter verification failed: " + "; ".join(problems))
