"""Start the local inference worker (`python -m workers.inference`) as its own process."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def start_worker(*extra: str, env: dict[str, str] | None = None) -> tuple[subprocess.Popen, str]:
    """The process and its URL, once it listens (it prints `listening on <url>`)."""
    process = subprocess.Popen(
        [sys.executable, "-m", "workers.inference", "--bind", "127.0.0.1:0", *extra],
        stdout=subprocess.PIPE,
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO), **(env or {})},
        text=True,
    )
    assert process.stdout is not None
    line = process.stdout.readline()
    if not line.startswith("listening on "):
        process.kill()
        raise RuntimeError(f"the inference worker did not start: {line!r}")
    return process, line.split()[-1]
