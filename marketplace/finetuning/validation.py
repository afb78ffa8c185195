"""Checks a JSONL training file before any GPU time is spent.

Every bad line is reported with its 1-based number and a reason code (REFERENCE §1), the way
OpenAI's checker does. The checker streams the file, so large uploads don't sit in memory.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterable
from typing import Any

VALID_ROLES = {"system", "user", "assistant", "tool", "developer"}
MAX_REPORTED_ERRORS = 100


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


def validate_lines(lines: Iterable[bytes], *, max_lines: int) -> Report:
    """Validate raw JSONL lines (bytes, newline included or not)."""
    report = Report()
    formats_seen: set[str] = set()
    number = 0
    for number, raw in enumerate(lines, start=1):
        if number > max_lines:
            report.add(
                number,
                "too_many_lines",
                f"The file has more than {max_lines} lines; split it into smaller files.",
            )
            break
        if b"\x00" in raw:
            report.add(number, "binary_content", "The line contains NUL bytes: this is not text.")
            continue
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            report.add(
                number,
                "invalid_encoding",
                f"The line is not valid UTF-8 (byte {e.start}); save the file as UTF-8.",
            )
            continue
        if not text.strip():
            report.add(number, "empty_example", "The line is empty; remove blank lines.")
            continue
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as e:
            report.add(number, "invalid_json", f"Invalid JSON: {e.msg} at column {e.colno}.")
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
        formats_seen.add(example_format)
        if len(formats_seen) > 1:
            report.add(
                number,
                "mixed_formats",
                f"This line is {example_format} but earlier lines use another format; "
                "use one format per file.",
            )
            continue
        CHECKS[example_format](obj, number, report)
    report.line_count = min(number, max_lines)
    if report.line_count == 0:
        report.add(0, "empty_file", "The file is empty: upload at least one example.")
    report.data_format = next(iter(formats_seen)) if len(formats_seen) == 1 else ""
    return report
