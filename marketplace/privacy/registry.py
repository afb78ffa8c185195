"""What other apps contribute to an export or an erasure, without this app importing them.

The partner API owns the webhook tables; it registers how to export and how to erase them
(marketplace/api/apps.py), as the e-mail and webhook consumers register with the events app.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from marketplace.accounts.models import Organization


class ArchiveWriter(Protocol):
    def add_json(self, path: str, value: Any, *, kind: str, object_id: str = "") -> None: ...

    def add_jsonl(self, path: str, rows: Any, *, kind: str) -> None: ...


ExportSection = Callable[[Organization, ArchiveWriter], None]
# An eraser deletes what it owns for the organization and returns counts for the report.
Eraser = Callable[[Organization], dict[str, int]]

_export_sections: dict[str, ExportSection] = {}
_erasers: dict[str, Eraser] = {}


def export_section_register(name: str, section: ExportSection) -> None:
    _export_sections[name] = section


def eraser_register(name: str, eraser: Eraser) -> None:
    _erasers[name] = eraser


def export_sections() -> dict[str, ExportSection]:
    return dict(_export_sections)


def erasers() -> dict[str, Eraser]:
    return dict(_erasers)
