"""Checks a JSONL training file before any GPU time is spent.

Every bad line is reported with its 1-based number and a reason code (REFERENCE §1), the way
OpenAI's checker does. The checker streams the file and bounds every line (its size, its nesting)
before parsing it, so neither a huge line nor a deeply nested one can exhaust memory or the stack.
The file's format is the majority's: only the lines in another format are flagged as mixed.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections import Counter
from collections.abc import Iterable, Iterator
from typing import IO, Any

VALID_ROLES = {"system", "user", "assistant", "tool", "developer"}
MAX_REPORTED_ERRORS = 100
# Real examples nest a handful of levels (messages → message → content parts); json's parser
# recurses once per level, so an unbounded nesting is a RecursionError, not a bad line.
MAX_JSON_DEPTH = 64
_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"')
_BRACKET = re.compile(rb"[\[\]{}]")


@dataclasses.dataclass
class LineError:
    line: int
    code: str
    message: str

    def as_dict(self) -> dict[str, Any]:
        return {"line": self.line, "code": self.code, "message": self.message}


@dataclasses.dataclass
class Report:
    data_format: str = ""
    line_count: int = 0
    errors: list[LineError] = dataclasses.field(default_factory=list)
    error_count: int = 0

    @property
    def ok(self) -> bool:
        return self.error_count == 0

    def add(self, line: int, code: str, message: str) -> None:
        self.error_count += 1
        if len(self.errors) < MAX_REPORTED_ERRORS:
            self.errors.append(LineError(line, code, message))

    def as_dict(self) -> dict[str, Any]:
        return {
            "format": self.data_format,
            "line_count": self.line_count,
            "error_count": self.error_count,
            "errors": [e.as_dict() for e in self.errors],
            "errors_truncated": self.error_count > len(self.errors),
        }


def _example_format(obj: dict[str, Any]) -> str | None:
    if "messages" in obj:
        return "chat"
    if "prompt" in obj or "completion" in obj:
        return "prompt_completion"
    if "text" in obj:
        return "text"
    return None


def _check_chat(obj: dict[str, Any], line: int, report: Report) -> None:
    messages = obj["messages"]
    if not isinstance(messages, list) or not messages:
        report.add(line, "missing_messages", "'messages' must be a non-empty list of messages.")
        return
    has_assistant = False
    for index, message in enumerate(messages):
        where = f"messages[{index}]"
        if not isinstance(message, dict) or "role" not in message:
            report.add(line, "message_missing_key", f"{where} needs a 'role' and a 'content'.")
            return
        role = message["role"]
        if role not in VALID_ROLES:
            report.add(
                line,
                "unrecognized_role",
                f"{where} has role {role!r}; use system, user or assistant.",
            )
            return
        content = message.get("content")
        if "content" not in message:
            report.add(line, "message_missing_key", f"{where} has no 'content'.")
            return
        if not isinstance(content, str) or not content.strip():
            report.add(line, "missing_content", f"{where} has empty or non-text content.")
            return
        has_assistant = has_assistant or role == "assistant"
    if not has_assistant:
        report.add(line, "no_assistant_message", "The example has no assistant message to learn.")


def _check_prompt_completion(obj: dict[str, Any], line: int, report: Report) -> None:
    for key in ("prompt", "completion"):
        if key not in obj:
            report.add(line, "message_missing_key", f"A prompt/completion example needs '{key}'.")
            return
        if not isinstance(obj[key], str):
            report.add(line, "missing_content", f"'{key}' must be a string.")
            return
    if not obj["completion"].strip():
        report.add(line, "missing_content", "'completion' is empty: there is nothing to learn.")


def _check_text(obj: dict[str, Any], line: int, report: Report) -> None:
    if not isinstance(obj["text"], str) or not obj["text"].strip():
        report.add(line, "missing_content", "'text' must be a non-empty string.")


CHECKS = {"chat": _check_chat, "prompt_completion": _check_prompt_completion, "text": _check_text}


@dataclasses.dataclass(frozen=True)
class OversizedLine:
    """A line longer than the per-line limit: skipped unread, reported with its size."""

    size: int


def read_lines(stream: IO[bytes], *, max_line_bytes: int) -> Iterator[bytes | OversizedLine]:
    """The stream's lines without their line ending, each read at most `max_line_bytes` (+1)
    at a time: a longer line is yielded as OversizedLine, the rest of it skipped in chunks."""
    stream.seek(0)
    while raw := stream.readline(max_line_bytes + 1):
        if len(raw) <= max_line_bytes or raw.endswith(b"\n"):
            yield raw.rstrip(b"\r\n")
            continue
        size = len(raw)
        while rest := stream.readline(1 << 20):
            size += len(rest)
            if rest.endswith(b"\n"):
                break
        yield OversizedLine(size=size - (1 if rest.endswith(b"\n") else 0))


def _too_deep(raw: bytes) -> bool:
    """Nesting beyond MAX_JSON_DEPTH, counted outside strings (cheap: most lines have few
    brackets, and those are counted in C before any scan)."""
    if raw.count(b"[") + raw.count(b"{") <= MAX_JSON_DEPTH:
        return False
    depth = 0
    for bracket in _BRACKET.findall(_STRING.sub(b'""', raw)):
        depth += 1 if bracket in (b"[", b"{") else -1
        if depth > MAX_JSON_DEPTH:
            return True
    return False


def _parse(number: int, raw: bytes, report: Report) -> Any:
    """The line's JSON value, or None after reporting why it has none."""
    if b"\x00" in raw:
        report.add(number, "binary_content", "The line contains NUL bytes: this is not text.")
        return None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        report.add(
            number,
            "invalid_encoding",
            f"The line is not valid UTF-8 (byte {e.start}); save the file as UTF-8.",
        )
        return None
    if not text.strip():
        report.add(number, "empty_example", "The line is empty; remove blank lines.")
        return None
    if _too_deep(raw):
        report.add(
            number,
            "too_deeply_nested",
            f"The line nests arrays or objects more than {MAX_JSON_DEPTH} levels deep; an "
            "example is an object of messages, a few levels at most.",
        )
        return None
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        report.add(number, "invalid_json", f"Invalid JSON: {e.msg} at column {e.colno}.")
    except RecursionError:  # belt and braces: the depth check above should have caught it
        report.add(number, "too_deeply_nested", "The line nests too deeply to be parsed.")
    return None


@dataclasses.dataclass
class _FormatTally:
    """Per format: how many lines use it, the first of them, and their own check errors (kept
    apart until the majority format is known, so a minority line is only flagged once)."""

    lines: int = 0
    first_lines: list[int] = dataclasses.field(default_factory=list)
    report: Report = dataclasses.field(default_factory=Report)


def _merge_formats(report: Report, tallies: dict[str, _FormatTally]) -> None:
    if not tallies:
        return
    order = list(tallies)  # first seen first: it wins a tie
    counts = Counter({name: tallies[name].lines for name in order})
    majority = max(order, key=lambda name: counts[name])
    report.data_format = majority
    own = tallies[majority].report
    report.error_count += own.error_count
    merged = list(own.errors)
    for name in order:
        if name == majority:
            continue
        tally = tallies[name]
        report.error_count += tally.lines
        merged += [
            LineError(
                line,
                "mixed_formats",
                f"This line is {name} but the file is {majority} ({counts[majority]} of "
                f"{sum(counts.values())} examples); use one format per file.",
            )
            for line in tally.first_lines
        ]
    merged += report.errors
    merged.sort(key=lambda e: e.line)
    report.errors = merged[:MAX_REPORTED_ERRORS]


def validate_lines(
    lines: Iterable[bytes | OversizedLine], *, max_lines: int, max_line_bytes: int | None = None
) -> Report:
    """Validate JSONL lines (bytes without their line ending, or OversizedLine markers)."""
    report = Report()
    tallies: dict[str, _FormatTally] = {}
    line_limit = max_line_bytes or 0
    number = 0
    for number, raw in enumerate(lines, start=1):
        if number > max_lines:
            report.add(
                number,
                "too_many_lines",
                f"The file has more than {max_lines} lines; split it into smaller files.",
            )
            break
        if isinstance(raw, OversizedLine) or (line_limit and len(raw) > line_limit):
            size = raw.size if isinstance(raw, OversizedLine) else len(raw)
            report.add(
                number,
                "line_too_large",
                f"The line is {size} bytes; the limit is {line_limit} bytes per example. "
                "Shorten or split it.",
            )
            continue
        obj = _parse(number, raw, report)
        if obj is None:
            continue
        if not isinstance(obj, dict):
            report.add(number, "not_an_object", "Each line must be a JSON object.")
            continue
        example_format = _example_format(obj)
        if example_format is None:
            report.add(
                number,
                "missing_messages",
                "The object has none of 'messages', 'prompt'/'completion' or 'text'.",
            )
            continue
        tally = tallies.setdefault(example_format, _FormatTally())
        tally.lines += 1
        if len(tally.first_lines) < MAX_REPORTED_ERRORS:
            tally.first_lines.append(number)
        CHECKS[example_format](obj, number, tally.report)
    report.line_count = min(number, max_lines)
    if report.line_count == 0:
        report.add(0, "empty_file", "The file is empty: upload at least one example.")
    _merge_formats(report, tallies)
    return report
