"""The evaluation every job ends with: `eval.json`, the base model's and the adapter's answers to
held-out prompts side by side, with the reference and each example's loss under both.

Samples come from the validation file when one is given; otherwise a held-out slice of the
training file (chosen by the seed, never trained on) when it has at least HOLDOUT_MIN_EXAMPLES
examples, else the first training examples, flagged `held_out: false`. Answers use fixed
decoding settings (greedy, a set token budget, the job's seed), so two runs agree.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import pathlib
import random
import time
from typing import Any

import torch

from workers.lora.batching import Batch
from workers.lora.data import Example, read_jsonl
from workers.lora.evaluation_settings import EvalSettings
from workers.lora.events import _clean
from workers.lora.generation import Decoding, chat_prompt_ids, generate_text

HOLDOUT_MIN_EXAMPLES = 10  # below this, holding examples out would starve training
HOLDOUT_FRACTION = 10  # at most one example in ten is held out
EVAL_FORMAT = "partage-eval/1"


def holdout_lines(lines: list[int], *, seed: int, max_samples: int) -> set[int]:
    """The training lines kept out of training for the evaluation (none for small files)."""
    count = min(max_samples, len(lines) // HOLDOUT_FRACTION)
    if len(lines) < HOLDOUT_MIN_EXAMPLES or count <= 0:
        return set()
    return set(random.Random(seed).sample(sorted(lines), count))  # noqa: S311 - not secrets


@dataclasses.dataclass(frozen=True)
class Prompt:
    messages: list[dict[str, str]] | None  # chat
    text: str  # what is shown as the prompt
    reference: str


def prompt_of(kind: str, obj: Any) -> Prompt:
    """Split a training example into what the model is asked and the expected answer."""
    if kind == "chat":
        last = max(i for i, m in enumerate(obj) if m["role"] == "assistant")
        asked = [{"role": m["role"], "content": m["content"]} for m in obj[:last]]
        users = [m["content"] for m in asked if m["role"] == "user"]
        return Prompt(asked, users[-1] if users else "", obj[last]["content"])
    if kind == "prompt_completion":
        return Prompt(None, obj[0], obj[1])
    words = obj.split(" ")
    half = max(1, len(words) // 2)
    return Prompt(None, " ".join(words[:half]), " ".join(words[half:]))


def prompt_ids(tokenizer: Any, prompt: Prompt) -> list[int]:
    if prompt.messages is not None:
        return chat_prompt_ids(tokenizer, prompt.messages)
    head = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    return head + list(tokenizer(prompt.text, add_special_tokens=False)["input_ids"])


class Evaluator:
    """Runs on the trainer's final PEFT model; `batch_of` collates one example for the loss."""

    def __init__(
        self,
        *,
        model: Any,
        tokenizer: Any,
        batch_of: Any,
        loss_sum: Any,
        settings: EvalSettings,
        seed: int,
        autocast: Any = contextlib.nullcontext,
    ) -> None:
        self.autocast = autocast
        self.model = model
        self.tokenizer = tokenizer
        self.batch_of = batch_of
        self.loss_sum = loss_sum
        self.settings = settings
        self.decoding = Decoding(max_new_tokens=settings.max_new_tokens, temperature=0.0, seed=seed)

    def _loss(self, example: Example) -> float:
        batch: Batch = self.batch_of(example)
        return float(self.loss_sum(self.model, batch)) / max(batch.loss_tokens, 1)

    def _answer(self, ids: list[int]) -> str:
        with self.autocast():
            text, _ = generate_text(self.model, self.tokenizer, ids, self.decoding)
        return text

    @torch.no_grad()
    def sample(self, example: Example, kind: str, obj: Any) -> dict[str, Any]:
        prompt = prompt_of(kind, obj)
        ids = prompt_ids(self.tokenizer, prompt)
        with self.model.disable_adapter():
            base_answer = self._answer(ids)
            base_loss = self._loss(example)
        return {
            "line": example.line,
            "prompt": prompt.text,
            "messages": prompt.messages,
            "reference": prompt.reference,
            "base_answer": base_answer,
            "adapter_answer": self._answer(ids),
            "base_loss": base_loss,
            "adapter_loss": self._loss(example),
        }


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def choose(examples: list[Example], count: int, seed: int) -> list[Example]:
    if len(examples) <= count:
        return list(examples)
    picked = set(random.Random(seed).sample(range(len(examples)), count))  # noqa: S311
    return [e for i, e in enumerate(examples) if i in picked]


def run_eval(
    evaluator: Evaluator,
    *,
    examples: list[Example],
    path: pathlib.Path,
    source: str,
    held_out: bool,
    validation_loss: float | None,
) -> dict[str, Any]:
    """Answer each example's prompt with the base and the adapter; the report of eval.json."""
    started = time.time()
    rows = {line: (kind, obj) for line, kind, obj in read_jsonl(path)}
    evaluator.model.eval()
    samples = [evaluator.sample(e, *rows[e.line]) for e in examples if e.line in rows]
    return {
        "format": EVAL_FORMAT,
        "source": source,
        "file": path.name,
        "held_out": held_out,
        "decoding": {
            "greedy": True,
            "temperature": 0.0,
            "max_new_tokens": evaluator.settings.max_new_tokens,
            "seed": evaluator.decoding.seed,
        },
        "validation_loss": validation_loss,
        "mean_loss": {
            "base": _mean([s["base_loss"] for s in samples]),
            "adapter": _mean([s["adapter_loss"] for s in samples]),
        },
        "samples": samples,
        "seconds": round(time.time() - started, 3),
    }


def write_eval(output_dir: pathlib.Path, report: dict[str, Any]) -> pathlib.Path:
    path = output_dir / "eval.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(
        json.dumps(_clean(report), indent=2, ensure_ascii=False, allow_nan=False), encoding="utf-8"
    )
    tmp.rename(path)
    return path
