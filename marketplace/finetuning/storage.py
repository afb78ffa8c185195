"""Where finetuning may store an organization's data, which capacity (the owner of residency
policies) decides. Capacity imports finetuning, so finetuning asks through this hook instead;
`CapacityConfig.ready` provides the check.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

# (organization id, the job's own residency request or None) -> why storing is refused, or "".
StorageRefusal = Callable[[int, dict[str, Any] | None], str]

_refusal: StorageRefusal | None = None


def storage_residency_provide(check: StorageRefusal) -> None:
    global _refusal
    _refusal = check


def storage_refusal(organization_id: int, job_residency: dict[str, Any] | None = None) -> str:
    return _refusal(organization_id, job_residency) if _refusal is not None else ""
