"""Variable-length ("varlen") attention for packed rows: each example attends only to itself.

Registered as a transformers attention implementation ("partage_varlen"). For a packed row the
loss code passes `partage_bounds` (the (start, end) of each example in the single row) through
the model's attention kwargs, and opens `varlen_row()` so that no [L, L] mask is built. Each
example then runs a plain causal kernel on its own slice:

* on CUDA, torch's flash `varlen_attn` over all examples at once (cumulative boundaries);
* elsewhere, one causal `scaled_dot_product_attention` per example.

Without boundaries (padded batches, generation, plain calls) it is transformers' SDPA path,
mask included (padding masks, or the block-diagonal mask of packed rows from position ids).
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator
from typing import Any

import torch
import torch.nn.functional as F

IMPLEMENTATION = "partage_varlen"

_VARLEN_ROW: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "partage_varlen_row", default=False
)


@contextlib.contextmanager
def varlen_row() -> Iterator[None]:
    """While open, mask creation is skipped: the attention function keeps examples apart."""
    token = _VARLEN_ROW.set(True)
    try:
        yield
    finally:
        _VARLEN_ROW.reset(token)


def _cuda_varlen(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    bounds: list[tuple[int, int]],
    scaling: float | None,
) -> torch.Tensor | None:
    """Flash varlen kernel on CUDA (bf16/fp16), or None where it does not apply."""
    if query.device.type != "cuda" or query.dtype not in (torch.bfloat16, torch.float16):
        return None
    try:
        from torch.nn.attention.varlen import varlen_attn
    except ImportError:
        return None
    cu = torch.tensor([0] + [end for _, end in bounds], dtype=torch.int32, device=query.device)
    longest = max(end - start for start, end in bounds)
    # [1, heads, tokens, dim] -> [tokens, heads, dim]
    q, k, v = (t[0].transpose(0, 1).contiguous() for t in (query, key, value))
    out = varlen_attn(
        q,
        k,
        v,
        cu,
        cu,
        longest,
        longest,
        scale=scaling,
        window_size=(-1, 0),  # causal
        enable_gqa=q.shape[1] != k.shape[1],
    )
    assert isinstance(out, torch.Tensor)
    return out.unsqueeze(0)  # [1, tokens, heads, dim]


def varlen_attention_forward(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    bounds = kwargs.get("partage_bounds")
    if bounds is None:
        from transformers.integrations.sdpa_attention import sdpa_attention_forward

        output, _ = sdpa_attention_forward(
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs
        )
        return output, None
    if query.shape[0] != 1:
        raise ValueError("partage_bounds describe one packed row; the batch has several rows")
    if dropout == 0.0:
        fused = _cuda_varlen(query, key, value, bounds, scaling)
        if fused is not None:
            return fused, None
    # query: [1, heads, tokens, dim]; key/value: [1, kv_heads, tokens, dim]
    gqa = query.shape[1] != key.shape[1]
    outputs = [
        F.scaled_dot_product_attention(
            query[:, :, start:end],
            key[:, :, start:end],
            value[:, :, start:end],
            is_causal=True,
            dropout_p=dropout,
            scale=scaling,
            enable_gqa=gqa,
        )
        for start, end in bounds
    ]
    output = outputs[0] if len(outputs) == 1 else torch.cat(outputs, dim=2)
    return output.transpose(1, 2).contiguous(), None


def varlen_mask(*args: Any, **kwargs: Any) -> torch.Tensor | None:
    """No mask inside `varlen_row()`; otherwise exactly transformers' SDPA mask."""
    from transformers.masking_utils import sdpa_mask

    if _VARLEN_ROW.get():
        return None
    return sdpa_mask(*args, **kwargs)


def register() -> None:
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    AttentionInterface.register(IMPLEMENTATION, varlen_attention_forward)
    AttentionMaskInterface.register(IMPLEMENTATION, varlen_mask)
