"""The one interface every executor implements: start, observe and stop one training attempt.

An executor knows nothing about Django models: it receives a plain `LaunchSpec` and returns plain
`AttemptStatus` values. The marketplace (finetuning services) keeps the database as the source of
truth and calls these methods from idempotent Celery tasks and the reconciler.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Protocol

# The trainer protocol lives in workers/protocol.py; re-exported for the executors.
from workers.protocol import (
    EXIT_INTERNAL_ERROR,
    EXIT_OK,
    EXIT_PREEMPTED,
    EXIT_USER_ERROR,
    Phase,
)

__all__ = [
    "EXIT_INTERNAL_ERROR",
    "EXIT_OK",
    "EXIT_PREEMPTED",
    "EXIT_USER_ERROR",
    "Phase",
]


@dataclasses.dataclass(frozen=True)
class LaunchSpec:
    """Everything needed to start one attempt of one fine-tuning job."""

    job_id: str  # "ftjob-…"
    org_id: str
    attempt: int  # 1, 2, … (a requeue after eviction is a new attempt)
    name: str  # deterministic per attempt: "ft-<jobid>-a<n>"
    callback_url: str  # Partage's internal API root, e.g. "http://127.0.0.1:8000/internal/v1"
    token: str  # short-lived token scoped to this job
    base_model: str  # catalog id, e.g. "partage/tiny-llama"
    gpu_count: int = 0
    gpu_flavor: str = ""
    active_deadline_seconds: int = 6 * 3600
    pool: dict[str, Any] = dataclasses.field(default_factory=dict)  # node selector, tolerations…
    env: dict[str, str] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class AttemptStatus:
    phase: Phase
    exit_code: int | None = None
    reason: str = ""  # human-readable, e.g. "pod evicted: node drained"
    handle: str = ""  # executor-specific id (pid, Job name)


class Executor(Protocol):
    """Start, observe and stop attempts. Every method is idempotent."""

    name: str

    def launch(self, spec: LaunchSpec) -> str:
        """Start the attempt if it is not started yet; return its handle. Safe to call twice."""
        ...

    def status(self, spec: LaunchSpec) -> AttemptStatus:
        """Level-based view of the attempt, used by the reconciler."""
        ...

    def cancel(self, spec: LaunchSpec) -> None:
        """Stop the attempt (graceful where possible). Safe on an attempt that is gone."""
        ...

    def logs(self, spec: LaunchSpec) -> str:
        """The attempt's captured output so far (stdout/stderr of the trainer)."""
        ...
