"""Load the base model, wrap it with LoRA, and compute the loss on loss-bearing positions only.

The fast loss path runs the decoder backbone, gathers the hidden states of positions whose
next token carries loss, and only then applies the lm_head and cross-entropy, in checkpointed
chunks: the [tokens, vocab] logits of prompt/pad positions are never computed or kept.
"""

from __future__ import annotations

import pathlib
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from workers.lora import attention
from workers.lora.batching import IGNORE_INDEX, Batch
from workers.lora.config import LoraSettings, UserError

# Architectures whose logits are exactly lm_head(last_hidden_state) (no scaling or softcap).
FAST_LOSS_MODEL_TYPES = {"llama", "mistral", "qwen2", "qwen3", "gpt2", "phi3", "olmo2", "smollm3"}
# Architectures whose attention modules pass **kwargs through to the attention function, so
# the varlen implementation receives the example boundaries.
VARLEN_MODEL_TYPES = {"llama", "mistral", "qwen2", "qwen3", "gpt2", "phi3", "olmo2", "smollm3"}
CE_CHUNK_ELEMENTS = 1 << 25  # logits per chunk (128 MiB in fp32), whatever the vocabulary


def supports_varlen(model: Any) -> bool:
    return bool(model.config._attn_implementation == attention.IMPLEMENTATION)


def attention_implementation(config: Any, max_seq_length: int | None) -> str:
    """Our varlen kernel where the architecture passes attention kwargs through and no
    sliding window could bite within `max_seq_length` (the varlen path is full causal)."""
    if config.model_type not in VARLEN_MODEL_TYPES:
        return "sdpa"
    window = getattr(config, "sliding_window", None)
    if window is not None and (max_seq_length is None or window < max_seq_length):
        return "sdpa"
    return attention.IMPLEMENTATION


def load_base(
    model_dir: pathlib.Path,
    device: torch.device,
    gradient_checkpointing: bool,
    max_seq_length: int | None = None,
) -> Any:
    from transformers import AutoConfig, AutoModelForCausalLM

    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    attention.register()
    implementation = attention_implementation(
        AutoConfig.from_pretrained(str(model_dir)), max_seq_length
    )
    model: Any = AutoModelForCausalLM.from_pretrained(
        str(model_dir), dtype=dtype, attn_implementation=implementation
    )
    model.config.use_cache = False
    if gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    return model.to(device)


def lora_config(settings: LoraSettings, base_model_id: str, *, conv1d: bool = False) -> Any:
    from peft import LoraConfig

    targets = settings.target_modules
    return LoraConfig(
        r=settings.r,
        lora_alpha=settings.alpha,
        lora_dropout=settings.dropout,
        target_modules=targets if isinstance(targets, str) else list(targets),
        use_rslora=settings.use_rslora,
        bias="none",
        fan_in_fan_out=conv1d,  # GPT-2 stores its projections as Conv1D (transposed)
        task_type="CAUSAL_LM",
        base_model_name_or_path=base_model_id,
    )


def wrap_lora(model: Any, settings: LoraSettings, base_model_id: str) -> Any:
    from peft import get_peft_model

    try:
        peft_model = get_peft_model(
            model,
            lora_config(settings, base_model_id, conv1d=model.config.model_type == "gpt2"),
        )
    except ValueError as e:
        raise UserError(f"lora.target_modules: {e}", param="target_modules") from e
    # peft records the local dir it loaded from; adapters must name the real catalog id
    peft_model.peft_config["default"].base_model_name_or_path = base_model_id
    for name, param in peft_model.named_parameters():
        if param.requires_grad and "lora_" not in name:
            raise UserError(f"LoRA would train a non-LoRA parameter {name}", param="target_modules")
    return peft_model


def trainable_parameters(peft_model: Any) -> list[tuple[str, torch.nn.Parameter]]:
    return [(n, p) for n, p in peft_model.named_parameters() if p.requires_grad]


def _ce_sum(hidden: torch.Tensor, targets: torch.Tensor, head: torch.nn.Module) -> torch.Tensor:
    logits = head(hidden).float()
    return F.cross_entropy(logits, targets, reduction="sum")


def loss_sum(peft_model: Any, batch: Batch) -> torch.Tensor:
    """Sum of token cross-entropies over the batch's loss-bearing targets."""
    causal_lm = peft_model.get_base_model()
    shifted = batch.labels[:, 1:]
    if causal_lm.config.model_type not in FAST_LOSS_MODEL_TYPES:
        logits = peft_model(
            input_ids=batch.input_ids,
            attention_mask=batch.attention_mask,
            position_ids=batch.position_ids,
            use_cache=False,
        ).logits
        return F.cross_entropy(
            logits[:, :-1].float().reshape(-1, logits.shape[-1]),
            shifted.reshape(-1),
            ignore_index=IGNORE_INDEX,
            reduction="sum",
        )
    backbone = causal_lm.base_model
    if batch.bounds is None:
        hidden = backbone(
            input_ids=batch.input_ids,
            attention_mask=batch.attention_mask,
            position_ids=batch.position_ids,
            use_cache=False,
        )[0]
    else:
        if causal_lm.config._attn_implementation != attention.IMPLEMENTATION:
            raise ValueError("a varlen batch needs the partage_varlen attention implementation")
        with attention.varlen_row():
            hidden = backbone(
                input_ids=batch.input_ids,
                position_ids=batch.position_ids,
                use_cache=False,
                partage_bounds=batch.bounds,
            )[0]
    select = shifted != IGNORE_INDEX
    hidden = hidden[:, :-1][select]
    targets = shifted[select]
    head = causal_lm.get_output_embeddings()
    chunk = max(128, CE_CHUNK_ELEMENTS // head.weight.shape[0])
    total = hidden.new_zeros((), dtype=torch.float32)
    for start in range(0, targets.shape[0], chunk):
        chunk_h, chunk_t = hidden[start : start + chunk], targets[start : start + chunk]
        if torch.is_grad_enabled() and targets.shape[0] > chunk:
            total = total + checkpoint(_ce_sum, chunk_h, chunk_t, head, use_reentrant=False)
        else:
            total = total + _ce_sum(chunk_h, chunk_t, head)
    return total
