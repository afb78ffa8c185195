"""Structured events: one JSON object per line on stdout. Human logs go to stderr."""

from __future__ import annotations

import json
import math
import sys
import time
from typing import Any


def _clean(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None if math.isnan(value) else str(value)
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    return value


def emit(event: str, **fields: Any) -> None:
    record = {"event": event, "time": time.time(), **fields}
    sys.stdout.write(json.dumps(_clean(record), allow_nan=False) + "\n")
    sys.stdout.flush()


def log(message: str) -> None:
    sys.stderr.write(message.rstrip("\n") + "\n")
    sys.stderr.flush()
