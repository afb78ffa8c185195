"""Training-file validation on hostile and large inputs (issue 14, point 4).

Times `validate_lines(read_lines(...))`, what the worker runs on a large upload, on: a single
64 MiB line (refused by the 2 MiB line limit, read in chunks), one line nested 100,000 deep
(refused by the depth limit), and a valid ~99 MiB chat file (just under the 100 MiB upload limit).

Usage:
  PARTAGE_ENV=test DJANGO_SETTINGS_MODULE=marketplace.settings python benchmarks/upload_bench.py

Not a test: it prints one line per input for docs/benchmarks.md.
"""

from __future__ import annotations

import io
import json
import time

import django


def _time(name: str, data: bytes, line_limit: int = 2 * 1024 * 1024) -> None:
    from marketplace.finetuning.validation import read_lines, validate_lines

    started = time.perf_counter()
    report = validate_lines(
        read_lines(io.BytesIO(data), max_line_bytes=line_limit),
        max_lines=200_000,
        max_line_bytes=line_limit,
    )
    elapsed = time.perf_counter() - started
    codes = sorted({e.code for e in report.errors}) or ["valid"]
    print(f"| {name} | {len(data) / 2**20:.1f} MiB | {elapsed:.3f} s | {', '.join(codes)} |")


def main() -> None:
    django.setup()
    _time("one 64 MiB line", json.dumps({"text": "x" * (64 << 20)}).encode() + b"\n")
    _time("one line nested 100,000 deep", b"[" * 100_000 + b"]" * 100_000 + b"\n")
    row = (
        json.dumps(
            {
                "messages": [
                    {"role": "user", "content": "q" * 200},
                    {"role": "assistant", "content": "a" * 300},
                ]
            }
        ).encode()
        + b"\n"
    )
    count = min((100 << 20) // len(row) - 1, 200_000)
    _time(f"{count:,} valid chat lines", row * count)


if __name__ == "__main__":
    main()
