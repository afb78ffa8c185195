"""Training files (REFERENCE §1) to token ids + loss masks.

Chat examples are rendered with the model's own chat template. The assistant spans are found
by rendering prefixes of the conversation (works with any template whose rendering of a prefix
is a prefix of the full rendering), so no template needs special markers. A token carries loss
when the character it starts at lies inside an assistant span (or everywhere with loss_on=all).
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
from typing import Any

from workers.lora.config import UserError

ROLES = {"system", "user", "assistant", "developer", "tool"}


@dataclasses.dataclass(frozen=True)
class Example:
    line: int  # 1-based line number in the file
    input_ids: list[int]
    loss_mask: list[bool]  # loss_mask[t]: token t is a prediction target

    @property
    def loss_tokens(self) -> int:
        return sum(self.loss_mask[1:])  # the first token is never predicted


@dataclasses.dataclass
class DataReport:
    examples: int = 0
    truncated: int = 0
    dropped: int = 0
    no_loss_tokens: list[int] = dataclasses.field(default_factory=list)
    tokens: int = 0
    loss_tokens: int = 0

    def as_event(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _check_line(line_no: int, text: str) -> tuple[str | None, str | None, Any]:
    """Return (format, reason_code_or_None, object)."""
    try:
        obj = json.loads(text)
    except json.JSONDecodeError:
        return None, "invalid_json", None
    if not isinstance(obj, dict):
        return None, "not_an_object", None
    present = [k for k in ("messages", "prompt", "text") if k in obj]
    if len(present) > 1:
        return None, "mixed_formats", None
    if not present:
        return None, "missing_messages", None
    kind = present[0]
    if kind == "messages":
        messages = obj["messages"]
        if not isinstance(messages, list) or not messages:
            return kind, "missing_messages", None
        for message in messages:
            if not isinstance(message, dict) or "role" not in message:
                return kind, "message_missing_key", None
            if message["role"] not in ROLES:
                return kind, "unrecognized_role", None
            if not isinstance(message.get("content"), str):
                return kind, "missing_content", None
        if not any(m["role"] == "assistant" for m in messages):
            return kind, "no_assistant_message", None
        if not any(m["content"].strip() for m in messages):
            return kind, "empty_example", None
        return "chat", None, messages
    if kind == "prompt":
        prompt, completion = obj.get("prompt"), obj.get("completion")
        if not isinstance(prompt, str) or not isinstance(completion, str):
            return kind, "missing_content", None
        if not completion.strip():
            return kind, "empty_example", None
        return "prompt_completion", None, (prompt, completion)
    text = obj["text"]
    if not isinstance(text, str):
        return kind, "missing_content", None
    if not text.strip():
        return kind, "empty_example", None
    return "text", None, text


def read_jsonl(path: pathlib.Path) -> list[tuple[int, str, Any]]:
    """Parse and validate every line; raise one UserError listing every bad line."""
    rows: list[tuple[int, str, Any]] = []
    errors: list[dict[str, Any]] = []
    formats: set[str] = set()
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as e:
        raise UserError(f"{path.name} is not UTF-8: {e}", code="user_error") from e
    for number, text in enumerate(lines, start=1):
        if not text.strip():
            continue
        kind, reason, obj = _check_line(number, text)
        if reason:
            errors.append({"line": number, "reason": reason})
            continue
        assert kind is not None
        formats.add(kind)
        rows.append((number, kind, obj))
    if len(formats) > 1:
        errors.append({"line": None, "reason": "mixed_formats", "formats": sorted(formats)})
    if errors:
        shown = ", ".join(f"line {e['line']}: {e['reason']}" for e in errors[:10])
        raise UserError(f"{path.name} has {len(errors)} bad line(s): {shown}", bad_lines=errors)
    if not rows:
        raise UserError(f"{path.name} holds no examples")
    return rows


def _render(tokenizer: Any, messages: list[dict[str, str]], *, generation_prompt: bool) -> str:
    if not messages:
        try:
            return str(
                tokenizer.apply_chat_template([], tokenize=False, add_generation_prompt=True)
            )
        except Exception:  # some templates refuse an empty conversation
            return ""
    return str(
        tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=generation_prompt
        )
    )


def _assistant_spans(
    tokenizer: Any, messages: list[dict[str, str]], full: str
) -> list[tuple[int, int]]:
    spans = []
    for index, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        before = _render(tokenizer, messages[:index], generation_prompt=True)
        through = _render(tokenizer, messages[: index + 1], generation_prompt=False)
        if not (
            full.startswith(before) and full.startswith(through) and len(through) > len(before)
        ):
            raise UserError(
                "the model's chat template does not render conversations incrementally; "
                "loss_on='assistant' cannot locate the assistant turns",
                param="loss_on",
            )
        # trailing whitespace after the end-of-turn marker is template layout, not the answer
        end = len(before) + len(full[len(before) : len(through)].rstrip())
        spans.append((len(before), end))
    return spans


def _tokenize_chat(
    tokenizer: Any, messages: list[dict[str, str]], loss_on: str
) -> tuple[list[int], list[bool]]:
    clean = [{"role": m["role"], "content": m["content"]} for m in messages]
    full = tokenizer.apply_chat_template(clean, tokenize=False)
    encoded = tokenizer(full, add_special_tokens=False, return_offsets_mapping=True)
    ids = list(encoded["input_ids"])
    if loss_on == "all":
        return ids, [True] * len(ids)
    spans = _assistant_spans(tokenizer, clean, full)
    mask = [any(s <= start < e for s, e in spans) for start, _ in encoded["offset_mapping"]]
    return ids, mask


def _tokenize_prompt_completion(
    tokenizer: Any, prompt: str, completion: str, loss_on: str
) -> tuple[list[int], list[bool]]:
    head = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    prompt_ids = head + tokenizer(prompt, add_special_tokens=False)["input_ids"]
    completion_ids = tokenizer(completion, add_special_tokens=False)["input_ids"]
    tail = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    ids = prompt_ids + completion_ids + tail
    mask = [loss_on == "all"] * len(prompt_ids) + [True] * (len(completion_ids) + len(tail))
    return ids, mask


def _tokenize_text(tokenizer: Any, text: str) -> tuple[list[int], list[bool]]:
    head = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    tail = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    ids = head + tokenizer(text, add_special_tokens=False)["input_ids"] + tail
    return ids, [True] * len(ids)


def tokenize_example(
    tokenizer: Any, kind: str, obj: Any, loss_on: str
) -> tuple[list[int], list[bool]]:
    if kind == "chat":
        return _tokenize_chat(tokenizer, obj, loss_on)
    if kind == "prompt_completion":
        return _tokenize_prompt_completion(tokenizer, obj[0], obj[1], loss_on)
    return _tokenize_text(tokenizer, obj)


def load_examples(
    path: pathlib.Path, tokenizer: Any, *, max_seq_length: int, loss_on: str, truncation: str
) -> tuple[list[Example], DataReport]:
    """Tokenize a file. Truncated/dropped/no-loss examples are counted; no-loss ones are excluded."""
    report = DataReport()
    examples: list[Example] = []
    for line, kind, obj in read_jsonl(path):
        ids, mask = tokenize_example(tokenizer, kind, obj, loss_on)
        if len(ids) > max_seq_length:
            if truncation == "drop":
                report.dropped += 1
                continue
            report.truncated += 1
            ids, mask = ids[:max_seq_length], mask[:max_seq_length]
        example = Example(line=line, input_ids=ids, loss_mask=mask)
        if example.loss_tokens == 0:
            report.no_loss_tokens.append(line)
            continue
        examples.append(example)
        report.tokens += len(ids)
        report.loss_tokens += example.loss_tokens
    report.examples = len(examples)
    if not examples:
        raise UserError(
            f"{path.name}: no example is left with loss-bearing tokens "
            f"(dropped={report.dropped}, no_loss_tokens={len(report.no_loss_tokens)})",
            report=report.as_event(),
        )
    return examples, report
