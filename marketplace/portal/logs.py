"""A trainer's log as a customer reads it: no progress-bar redraws, no terminal escapes, no
library warnings, no paths of our servers. The raw log stays downloadable beside it."""

from __future__ import annotations

import re

_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b\][^\x07]*\x07")
# tqdm and friends: "Loading weights:  40%|████      | 8/21 [00:01<00:02, 6.1it/s]"
_PROGRESS_BAR = re.compile(r"\d{1,3}%\|.*\|\s*\d+/\d+|\|\s*\d+/\d+ \[\d")
# "/path/file.py:154: UserWarning: …" and the source line Python prints under it.
_WARNING = re.compile(r"^\S+:\d+: \w*Warning: ")
_WARNING_SOURCE = re.compile(r"^\s+warnings\.warn\(")
# An absolute path of two or more parts, not inside a URL: keep its last part only.
_PATH = re.compile(r"(?<![\w:/.~-])(?:/[\w.+-]+){2,}")


def _shorten(match: re.Match[str]) -> str:
    return "…/" + match.group(0).rsplit("/", 1)[-1]


def log_for_user(raw: str) -> str:
    lines: list[str] = []
    skip_source = False
    for physical in _ANSI.sub("", raw).split("\n"):
        line = physical.rsplit("\r", 1)[-1].rstrip()  # what a terminal would finally show
        if skip_source and _WARNING_SOURCE.match(line):
            skip_source = False
            continue
        skip_source = False
        if _PROGRESS_BAR.search(line):
            continue
        if _WARNING.match(line):
            skip_source = True
            continue
        lines.append(_PATH.sub(_shorten, line))
    return "\n".join(lines).strip("\n")
