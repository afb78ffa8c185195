"""A .tar.gz written member by member, with an index of every object (path, size, sha256).

Nothing is held whole in memory: a member of unknown size is spooled to a temporary file (at
most a few MiB in memory) while it is hashed, then copied into the archive; stored files are
copied from storage in chunks. The archive itself goes to a temporary file on local disk, which
is then streamed to storage in chunks.
"""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
import tempfile
from collections.abc import Iterable, Iterator
from datetime import datetime
from decimal import Decimal
from typing import IO, Any

from django.utils import timezone

SPOOL_BYTES = 4 << 20
CHUNK = 1 << 20


def _default(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, Decimal):
        return str(value)
    raise TypeError(f"not JSON serializable: {type(value).__name__}")


def json_bytes(value: Any) -> bytes:
    return json.dumps(value, default=_default, indent=2, sort_keys=True).encode()


class _Hashing:
    def __init__(self, stream: IO[bytes]) -> None:
        self.stream = stream
        self.digest = hashlib.sha256()
        self.size = 0

    def read(self, size: int = -1) -> bytes:
        chunk = self.stream.read(size)
        self.digest.update(chunk)
        self.size += len(chunk)
        return chunk


class ArchiveWriter:
    def __init__(self, target: IO[bytes]) -> None:
        self._tar = tarfile.open(fileobj=target, mode="w:gz")  # noqa: SIM115 - closed in close()
        self._now = timezone.now().timestamp()
        self.index: list[dict[str, Any]] = []
        self._paths: set[str] = set()

    def _member(self, path: str, size: int) -> tarfile.TarInfo:
        if path in self._paths:
            raise ValueError(f"{path} is already in the archive")
        self._paths.add(path)
        info = tarfile.TarInfo(path)
        info.size = size
        info.mode = 0o644
        info.mtime = int(self._now)
        return info

    def add_stream(
        self, path: str, stream: IO[bytes], size: int, *, kind: str, object_id: str = ""
    ) -> str:
        """Copy `size` bytes of a stored file into the archive; returns their sha256."""
        hashing = _Hashing(stream)
        self._tar.addfile(self._member(path, size), hashing)
        if hashing.size != size:
            raise OSError(f"{path}: expected {size} bytes, read {hashing.size}")
        sha256 = hashing.digest.hexdigest()
        self.index.append(
            {"path": path, "size": size, "sha256": sha256, "kind": kind, "id": object_id}
        )
        return sha256

    def add_chunks(
        self, path: str, chunks: Iterable[bytes], *, kind: str, object_id: str = ""
    ) -> str:
        with tempfile.SpooledTemporaryFile(max_size=SPOOL_BYTES) as spool:
            size = 0
            for chunk in chunks:
                spool.write(chunk)
                size += len(chunk)
            spool.seek(0)
            return self.add_stream(path, spool, size, kind=kind, object_id=object_id)

    def add_bytes(self, path: str, data: bytes, *, kind: str, object_id: str = "") -> str:
        return self.add_chunks(path, [data], kind=kind, object_id=object_id)

    def add_json(self, path: str, value: Any, *, kind: str, object_id: str = "") -> None:
        self.add_bytes(path, json_bytes(value), kind=kind, object_id=object_id)

    def add_jsonl(self, path: str, rows: Iterable[Any], *, kind: str) -> None:
        def lines() -> Iterator[bytes]:
            for row in rows:
                yield json.dumps(row, default=_default, sort_keys=True).encode() + b"\n"

        self.add_chunks(path, lines(), kind=kind)

    def close(self, *, description: dict[str, Any]) -> int:
        """Write index.json and SHA256SUMS last; returns the number of objects indexed."""
        count = len(self.index)
        sums = "".join(f"{item['sha256']}  {item['path']}\n" for item in self.index)
        index = {**description, "objects": self.index, "object_count": count}
        data = json_bytes(index)
        self._tar.addfile(self._member("index.json", len(data)), io.BytesIO(data))
        sums_data = sums.encode()
        self._tar.addfile(self._member("SHA256SUMS", len(sums_data)), io.BytesIO(sums_data))
        self._tar.close()
        return count
