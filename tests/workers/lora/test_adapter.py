"""Strict adapter verification: anything PEFT would only warn about is an error here."""

from __future__ import annotations

import json
import pathlib
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from workers.lora.adapter import AdapterVerificationError, save_adapter, verify_adapter
from workers.lora.config import LoraSettings
from workers.lora.modeling import load_base, wrap_lora

BASE_ID = "partage/tiny-llama"


@pytest.fixture(scope="module")
def saved_adapter(tmp_path_factory, tiny_llama_dir) -> pathlib.Path:
    torch.manual_seed(0)
    model = wrap_lora(
        load_base(tiny_llama_dir, torch.device("cpu"), False),
        LoraSettings(r=4, alpha=8, target_modules="all-linear", use_rslora=True),
        BASE_ID,
    )
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.02)
    out = tmp_path_factory.mktemp("adapter") / "adapter"
    save_adapter(model, out)
    return out


def _copy(saved: pathlib.Path, tmp_path: pathlib.Path) -> pathlib.Path:
    target = tmp_path / "adapter"
    shutil.copytree(saved, target)
    return target


def test_a_good_adapter_verifies_and_is_servable(saved_adapter, tiny_llama_dir):
    verify_adapter(saved_adapter, tiny_llama_dir, base_model_id=BASE_ID, max_rank=16)
    config = json.loads((saved_adapter / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == BASE_ID
    assert config["use_rslora"] is True and config["bias"] == "none"
    assert not config.get("modules_to_save")
    assert sorted(config["target_modules"]) == sorted(
        ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    )
    keys = load_file(str(saved_adapter / "adapter_model.safetensors"))
    assert all(k.startswith("base_model.model.") for k in keys)
    a = keys["base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"]
    b = keys["base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight"]
    assert a.shape == (4, 64) and b.shape == (64, 4)


def _drop_key(tensors):
    tensors.pop(sorted(tensors)[0])


def _extra_key(tensors):
    tensors["base_model.model.model.layers.0.mlp.nope.lora_A.weight"] = torch.zeros(4, 64)


def _zero_b(tensors):
    for key in tensors:
        if "lora_B" in key:
            tensors[key] = torch.zeros_like(tensors[key])


@pytest.mark.parametrize(
    ("tamper", "expected"),
    [
        (_drop_key, "missing keys"),
        (_extra_key, "unexpected keys"),
        (_zero_b, "every lora_B matrix is zero"),
    ],
)
def test_tampered_weights_fail_verification(
    saved_adapter, tiny_llama_dir, tmp_path, tamper, expected
):
    adapter = _copy(saved_adapter, tmp_path)
    tensors = load_file(str(adapter / "adapter_model.safetensors"))
    tamper(tensors)
    save_file(tensors, str(adapter / "adapter_model.safetensors"))
    with pytest.raises(AdapterVerificationError, match=expected):
        verify_adapter(adapter, tiny_llama_dir, base_model_id=BASE_ID, max_rank=16)


@pytest.mark.parametrize(
    ("key", "value", "expected"),
    [
        ("r", 4, "exceeds max_rank=2"),
        ("base_model_name_or_path", "/tmp/some/local/dir", "base_model_name_or_path"),
        ("modules_to_save", ["lm_head"], "modules_to_save"),
        ("bias", "all", "bias="),
    ],
)
def test_unservable_configs_fail_verification(
    saved_adapter, tiny_llama_dir, tmp_path, key, value, expected
):
    adapter = _copy(saved_adapter, tmp_path)
    config = json.loads((adapter / "adapter_config.json").read_text())
    config[key] = value
    (adapter / "adapter_config.json").write_text(json.dumps(config))
    max_rank = 2 if key == "r" else 16
    with pytest.raises(AdapterVerificationError, match=expected):
        verify_adapter(adapter, tiny_llama_dir, base_model_id=BASE_ID, max_rank=max_rank)
