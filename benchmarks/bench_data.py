"""Benchmark fixtures: a ~30M-parameter Llama (random weights, built locally) and synthetic
chats with a realistic, long-tailed mix of turn lengths. Deterministic for a given seed."""

from __future__ import annotations

import json
import math
import pathlib
import random
from typing import Any

# ~30M parameters: Llama-2 vocabulary size (32000), 8 layers, hidden 320, untied embeddings.
BENCH_MODEL_SIZES = {
    "hidden_size": 320,
    "intermediate_size": 864,
    "num_hidden_layers": 8,
    "num_attention_heads": 5,
    "num_key_value_heads": 5,
    "max_position_embeddings": 2048,
}
BENCH_VOCAB = 32000

_WORDS = [
    "the",
    "model",
    "data",
    "train",
    "loss",
    "token",
    "batch",
    "GPU",
    "memory",
    "adapter",
    "rank",
    "alpha",
    "layer",
    "attention",
    "project",
    "market",
    "share",
    "compute",
    "cluster",
    "node",
    "pod",
    "job",
    "queue",
    "price",
    "invoice",
    "user",
    "assistant",
    "answer",
    "question",
    "because",
    "therefore",
    "however",
    "example",
    "result",
    "figure",
    "measure",
    "fast",
    "slow",
    "Paris",
    "France",
    "river",
    "mountain",
    "city",
    "code",
    "python",
    "function",
    "return",
    "value",
    "error",
    "list",
    "dict",
    "a",
    "an",
    "of",
    "to",
    "in",
    "on",
    "for",
    "with",
    "by",
    "from",
    "is",
    "are",
    "was",
    "be",
    "have",
    "do",
    "say",
    "get",
    "make",
    "go",
    "know",
    "take",
]


# ~1.1B parameters (TinyLlama-1.1B shapes): the GPU/MFU model of REFERENCE §7.
GPU_MODEL_SIZES = {
    "hidden_size": 2048,
    "intermediate_size": 5632,
    "num_hidden_layers": 22,
    "num_attention_heads": 32,
    "num_key_value_heads": 4,
    "max_position_embeddings": 4096,
}
MODEL_SIZES = {"30m": BENCH_MODEL_SIZES, "1b": GPU_MODEL_SIZES}


def bench_config(tokenizer: Any, size: str = "30m") -> Any:
    import transformers

    return transformers.LlamaConfig(
        vocab_size=BENCH_VOCAB,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
        **MODEL_SIZES[size],
    )


def build_bench_model(path: pathlib.Path, seed: int = 0, size: str = "30m") -> pathlib.Path:
    """Tokenizer (tiny byte-level BPE + chat template) and a random Llama (~30M or ~1.1B)."""
    import torch
    import transformers

    from workers.catalog import build_tiny_tokenizer

    if (path / "config.json").exists():
        return path
    path.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tiny_tokenizer(path)
    torch.manual_seed(seed)
    model = transformers.LlamaForCausalLM(bench_config(tokenizer, size))
    model.save_pretrained(str(path), safe_serialization=True)
    return path


def matmul_parameters(config: Any) -> int:
    """N of REFERENCE §7: parameters of every Linear layer (projections and lm_head)."""
    import torch
    import transformers

    with torch.device("meta"):
        model = transformers.LlamaForCausalLM(config)
    return sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))


def _sentence(rng: random.Random, n_words: int) -> str:
    return " ".join(rng.choice(_WORDS) for _ in range(max(1, n_words))).capitalize() + "."


def _lognormal_words(rng: random.Random, median: float, sigma: float, cap: int) -> int:
    return min(cap, max(2, int(rng.lognormvariate(math.log(median), sigma))))


def make_chats(n: int, seed: int, scale: float = 1.0) -> list[dict[str, Any]]:
    """Chats of 1-3 turns; user turns median ~8 words, answers median ~14 (3-4 tokens a word
    with the tiny tokenizer), long tails. `scale` multiplies the turn lengths (GPU runs)."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        messages = []
        if rng.random() < 0.5:
            messages.append({"role": "system", "content": _sentence(rng, rng.randint(5, 20))})
        for _turn in range(rng.choice([1, 1, 1, 2, 2, 3])):
            messages.append(
                {
                    "role": "user",
                    "content": _sentence(
                        rng, _lognormal_words(rng, 8 * scale, 0.8, int(120 * scale))
                    ),
                }
            )
            messages.append(
                {
                    "role": "assistant",
                    "content": _sentence(
                        rng, _lognormal_words(rng, 14 * scale, 0.8, int(120 * scale))
                    ),
                }
            )
        rows.append({"messages": messages})
    return rows


def write_jsonl(path: pathlib.Path, rows: list[dict[str, Any]]) -> pathlib.Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path
