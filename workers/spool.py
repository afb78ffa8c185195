"""A durable, ordered outbox of the trainer's reports to Partage, on disk in the run directory.

Every report that must not be lost (event batches, checkpoints, the adapter, the exit code) is
written here first, atomically (temporary file, fsync, rename), then sent; it is removed only
once Partage has acknowledged it. If Partage cannot be reached until the job's deadline, or the
agent dies, what was produced stays on disk: the worker's resync delivers it
(workers/dispatch.py, `spool_replay`) instead of failing the job. Django-free: the
agent runs alone in a pod.
"""

from __future__ import annotations

import io
import json
import os
import threading
from pathlib import Path
from typing import Any

KINDS = ("events", "log", "checkpoint", "adapter", "exit")


class Spool:
    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.directory.mkdir(parents=True, exist_ok=True)
        self.lock = threading.Lock()
        self.added = threading.Event()
        existing = [int(p.name.split("-", 1)[0]) for p in self.pending()]
        self.next_seq = max(existing, default=0) + 1

    def put(self, kind: str, body: dict[str, Any], archive: io.BytesIO | None = None) -> Path:
        """Keep one report; it survives this process. Returns its entry."""
        assert kind in KINDS, kind
        with self.lock:
            name = f"{self.next_seq:08d}-{kind}"
            self.next_seq += 1
            archive_name = None
            if archive is not None:
                archive_name = f"{name}.tar.gz"
                _write_atomically(self.directory / archive_name, archive.getvalue())
            record = {"kind": kind, "body": body, "archive": archive_name}
            entry = self.directory / f"{name}.json"
            _write_atomically(entry, json.dumps(record).encode())
        self.added.set()
        return entry

    def pending(self) -> list[Path]:
        """Entries not yet acknowledged, oldest first."""
        return sorted(self.directory.glob("[0-9]*.json"))

    def read(self, entry: Path) -> tuple[str, dict[str, Any], Path | None]:
        record = json.loads(entry.read_text(encoding="utf-8"))
        archive = self.directory / record["archive"] if record.get("archive") else None
        return record["kind"], record["body"], archive

    def remove(self, entry: Path) -> None:
        _kind, _body, archive = self.read(entry)
        entry.unlink(missing_ok=True)  # the entry first: an archive alone is never replayed
        if archive is not None:
            archive.unlink(missing_ok=True)

    def reject(self, entry: Path, reason: str) -> None:
        """Partage refused it for good (4xx): keep it aside for the logs, never resend it."""
        rejected = self.directory / "rejected"
        rejected.mkdir(exist_ok=True)
        (rejected / f"{entry.stem}.reason").write_text(reason, encoding="utf-8")
        entry.replace(rejected / entry.name)


def _write_atomically(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as out:
        out.write(data)
        out.flush()
        os.fsync(out.fileno())
    tmp.replace(path)
