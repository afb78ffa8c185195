"""Checkpoints under output_dir/checkpoints/step-NNNNNN: everything needed to resume exactly.

Each holds the PEFT adapter (usable on its own), the exact trainable tensors, the optimizer and
scheduler states, the RNG states and the training position. Written to a temp dir then renamed,
so a checkpoint dir that exists is complete. Only the newest `keep` are kept: older ones are
deleted after the newer one is complete (renamed into place).
"""

from __future__ import annotations

import json
import pathlib
import random
import shutil
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from workers.lora.adapter import save_adapter

STATE_FILE = "trainer_state.pt"
TENSORS_FILE = "trainable.safetensors"


def checkpoint_dir(output_dir: pathlib.Path, step: int) -> pathlib.Path:
    return output_dir / "checkpoints" / f"step-{step:06d}"


def save_checkpoint(
    output_dir: pathlib.Path,
    step: int,
    *,
    peft_model: Any,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    progress: dict[str, Any],
    keep: int | None = None,
) -> pathlib.Path:
    final = checkpoint_dir(output_dir, step)
    tmp = final.with_name(final.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_adapter(peft_model, tmp / "adapter")
    tensors = {
        n: p.detach().cpu().contiguous()
        for n, p in peft_model.named_parameters()
        if p.requires_grad
    }
    save_file(tensors, str(tmp / TENSORS_FILE))
    state = {
        "step": step,
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "torch_rng": torch.get_rng_state(),
        "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
        "python_rng": random.getstate(),
        "progress": progress,
    }
    torch.save(state, tmp / STATE_FILE)
    (tmp / "progress.json").write_text(json.dumps({"step": step, **progress}, indent=2))
    shutil.rmtree(final, ignore_errors=True)
    tmp.rename(final)
    if keep is not None:
        prune_checkpoints(output_dir, keep)
    return final


def _complete(root: pathlib.Path) -> list[pathlib.Path]:
    return sorted(
        p
        for p in root.glob("step-*")
        if p.is_dir() and not p.name.endswith(".tmp") and (p / STATE_FILE).exists()
    )


def prune_checkpoints(output_dir: pathlib.Path, keep: int) -> list[pathlib.Path]:
    """Delete all complete checkpoints but the newest `keep` (>= 1); return the deleted ones."""
    if keep < 1:
        raise ValueError("keep must be >= 1")
    root = output_dir / "checkpoints"
    if not root.is_dir():
        return []
    old = _complete(root)[:-keep]
    for path in old:
        shutil.rmtree(path)
    return old


def latest_checkpoint(output_dir: pathlib.Path) -> pathlib.Path | None:
    root = output_dir / "checkpoints"
    if not root.is_dir():
        return None
    done = _complete(root)
    return done[-1] if done else None


def load_checkpoint(
    path: pathlib.Path, *, peft_model: Any, optimizer: torch.optim.Optimizer, scheduler: Any
) -> dict[str, Any]:
    tensors = load_file(str(path / TENSORS_FILE))
    params = {n: p for n, p in peft_model.named_parameters() if p.requires_grad}
    if set(tensors) != set(params):
        raise RuntimeError(f"checkpoint {path} does not match the model's LoRA parameters")
    with torch.no_grad():
        for name, param in params.items():
            param.copy_(tensors[name].to(param.device, param.dtype))
    state = torch.load(path / STATE_FILE, weights_only=False)
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    torch.set_rng_state(state["torch_rng"])
    if state["cuda_rng"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda_rng"])
    random.setstate(state["python_rng"])
    return {"step": state["step"], **state["progress"]}
