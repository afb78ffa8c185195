"""Text generation for a (PEFT-wrapped) causal LM: one decode loop for the trainer's evaluation
and the inference worker, so both answer the same way at the same settings.

The loop is explicit (prefill, then one token at a time on the KV cache) rather than
`model.generate`, so it can stream text deltas, cut at stop strings and count tokens exactly,
and so sampling draws from its own seeded generator: the same seed gives the same answer.
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Iterator
from typing import Any

import torch


@dataclasses.dataclass(frozen=True)
class Decoding:
    max_new_tokens: int = 64
    temperature: float = 0.0  # 0: greedy
    top_p: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()


@dataclasses.dataclass
class Delta:
    """A piece of the answer; the last one has `finish_reason` and the token counts."""

    text: str
    finish_reason: str | None = None  # "stop" | "length"
    prompt_tokens: int = 0
    completion_tokens: int = 0


def stop_token_ids(tokenizer: Any, model: Any) -> set[int]:
    """End-of-sequence ids: the tokenizer's, the generation config's, and a chat end-of-turn."""
    ids: set[int] = set()
    if tokenizer.eos_token_id is not None:
        ids.add(int(tokenizer.eos_token_id))
    configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    if isinstance(configured, int):
        ids.add(configured)
    elif isinstance(configured, list):
        ids.update(int(i) for i in configured)
    for marker in ("<|im_end|>", "<|eot_id|>", "<|end|>"):
        token_id = tokenizer.convert_tokens_to_ids(marker)
        if isinstance(token_id, int) and token_id != tokenizer.unk_token_id and token_id >= 0:
            ids.add(token_id)
    return ids


def chat_prompt_ids(tokenizer: Any, messages: list[dict[str, str]]) -> list[int]:
    """The conversation rendered by the model's chat template, ready for the assistant's turn."""
    if tokenizer.chat_template is None:
        text = "\n".join(f"{m['role']}: {m['content']}" for m in messages) + "\nassistant: "
        head = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
        return head + list(tokenizer(text, add_special_tokens=False)["input_ids"])
    rendered = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return list(tokenizer(rendered, add_special_tokens=False)["input_ids"])


def _pick(logits: torch.Tensor, decoding: Decoding, generator: torch.Generator | None) -> int:
    if decoding.temperature <= 0:
        return int(torch.argmax(logits))
    probs = torch.softmax(logits.float() / decoding.temperature, dim=-1)
    if decoding.top_p < 1.0:
        sorted_probs, order = torch.sort(probs, descending=True)
        keep = torch.cumsum(sorted_probs, dim=-1) - sorted_probs < decoding.top_p
        keep[0] = True
        probs = torch.zeros_like(probs).scatter(0, order[keep], sorted_probs[keep])
    return int(torch.multinomial(probs.cpu(), 1, generator=generator))


def _stop_cut(text: str, stops: tuple[str, ...]) -> int | None:
    positions = [text.find(s) for s in stops if s and s in text]
    return min(positions) if positions else None


def _held_back(text: str, stops: tuple[str, ...]) -> int:
    """How many trailing characters could still become a stop string (or a split character)."""
    hold = 1 if text.endswith("\ufffd") else 0
    for stop in stops:
        for size in range(min(len(stop) - 1, len(text)), 0, -1):
            if text.endswith(stop[:size]):
                hold = max(hold, size)
                break
    return hold


def _cache_of(output: Any) -> Any:
    cache = getattr(output, "cache", None)
    return cache if cache is not None else output.past_key_values


def _accepts(model: Any, name: str) -> bool:
    return name in inspect.signature(model.forward).parameters


def _cache_argument(model: Any) -> str:
    """transformers 5.x names the KV cache `cache` (`past_key_values` is deprecated there)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return "cache" if _accepts(base, "cache") else "past_key_values"


class _IncrementalText:
    """Detokenize as tokens arrive without re-decoding the whole answer each step (the
    prefix/read offsets of TGI and vLLM): a multi-byte character split across tokens is held
    until it is complete."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self.tokens: list[int] = []
        self.prefix_offset = 0
        self.read_offset = 0
        self.text = ""

    def add(self, token: int) -> None:
        self.tokens.append(token)
        decode = self.tokenizer.decode
        before = decode(
            self.tokens[self.prefix_offset : self.read_offset], skip_special_tokens=True
        )
        after = decode(self.tokens[self.prefix_offset :], skip_special_tokens=True)
        if len(after) > len(before) and not after.endswith("\ufffd"):
            self.text += after[len(before) :]
            self.prefix_offset = self.read_offset
            self.read_offset = len(self.tokens)

    def flush(self) -> None:
        """The end: whatever is left, even an incomplete character."""
        rest = self.tokenizer.decode(self.tokens[self.prefix_offset :], skip_special_tokens=True)
        done = self.tokenizer.decode(
            self.tokens[self.prefix_offset : self.read_offset], skip_special_tokens=True
        )
        self.text += rest[len(done) :]


@torch.no_grad()
def generate_stream(
    model: Any, tokenizer: Any, prompt_ids: list[int], decoding: Decoding
) -> Iterator[Delta]:
    """Yield the answer as text deltas; the last Delta carries finish_reason and token counts."""
    device = next(model.parameters()).device
    # The LoRA layers live inside the base model's modules: calling it directly skips the PEFT
    # wrapper's per-call work (and `disable_adapter()` still applies).
    runner = model.get_base_model() if hasattr(model, "get_base_model") else model
    cache_argument = _cache_argument(model)
    extra = {"logits_to_keep": 1} if _accepts(runner, "logits_to_keep") else {}
    generator = None
    if decoding.temperature > 0:
        generator = torch.Generator().manual_seed(
            decoding.seed if decoding.seed is not None else torch.seed() % (1 << 63)
        )
    eos = stop_token_ids(tokenizer, model)
    output = runner(input_ids=torch.tensor([prompt_ids], device=device), use_cache=True, **extra)
    past = _cache_of(output)
    logits = output.logits[0, -1]
    answer = _IncrementalText(tokenizer)
    emitted = 0
    finish = "length"
    while len(answer.tokens) < decoding.max_new_tokens:
        token = _pick(logits, decoding, generator)
        if token in eos:
            finish = "stop"
            break
        answer.add(token)
        text = answer.text
        cut = _stop_cut(text, decoding.stop)
        if cut is not None:
            if cut > emitted:
                yield Delta(text[emitted:cut])
            emitted = cut
            finish = "stop"
            break
        safe = len(text) - _held_back(text, decoding.stop)
        if safe > emitted:
            yield Delta(text[emitted:safe])
            emitted = safe
        if len(answer.tokens) == decoding.max_new_tokens:
            break
        step = torch.tensor([[token]], device=device)
        output = runner(input_ids=step, use_cache=True, **{cache_argument: past}, **extra)
        past = _cache_of(output)
        logits = output.logits[0, -1]
    if finish == "length":
        answer.flush()
        if len(answer.text) > emitted:
            yield Delta(answer.text[emitted:])
    yield Delta(
        "",
        finish_reason=finish,
        prompt_tokens=len(prompt_ids),
        completion_tokens=len(answer.tokens),
    )


def generate_text(
    model: Any, tokenizer: Any, prompt_ids: list[int], decoding: Decoding
) -> tuple[str, Delta]:
    """The whole answer and the final Delta (finish_reason, token counts)."""
    parts: list[str] = []
    last = Delta("")
    for delta in generate_stream(model, tokenizer, prompt_ids, decoding):
        parts.append(delta.text)
        last = delta
    return "".join(parts), last
