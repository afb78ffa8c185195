"""The job state machine of REFERENCE §2: allowed transitions and the public (OpenAI) status."""

from __future__ import annotations

from marketplace.finetuning.models import JobStatus as S

ALLOWED: dict[str, frozenset[str]] = {
    # to-state: the states it may be entered from
    S.QUEUED: frozenset({S.VALIDATING_FILES, S.ADMITTED, S.REQUEUEING, S.PAUSED}),
    S.ADMITTED: frozenset({S.QUEUED}),
    S.STARTING: frozenset({S.ADMITTED}),
    S.RUNNING: frozenset({S.STARTING}),
    S.FINALIZING: frozenset({S.RUNNING, S.STARTING, S.PAUSING, S.CANCELLING}),
    S.SUCCEEDED: frozenset({S.FINALIZING}),
    S.FAILED: frozenset(
        {
            S.VALIDATING_FILES,
            S.QUEUED,
            S.ADMITTED,
            S.STARTING,
            S.RUNNING,
            S.FINALIZING,
            S.PAUSING,
            S.REQUEUEING,
            S.CANCELLING,
        }
    ),
    S.CANCELLING: frozenset({S.ADMITTED, S.STARTING, S.RUNNING, S.PAUSING, S.REQUEUEING}),
    S.CANCELLED: frozenset({S.VALIDATING_FILES, S.QUEUED, S.PAUSED, S.CANCELLING, S.REQUEUEING}),
    S.PAUSING: frozenset({S.STARTING, S.RUNNING}),
    S.PAUSED: frozenset({S.PAUSING, S.QUEUED, S.ADMITTED}),
    S.REQUEUEING: frozenset({S.STARTING, S.RUNNING, S.ADMITTED}),
}

TERMINAL = frozenset({S.SUCCEEDED, S.FAILED, S.CANCELLED})
# States in which an attempt may be alive on an executor.
ACTIVE = frozenset({S.STARTING, S.RUNNING, S.FINALIZING, S.PAUSING, S.CANCELLING})
UNFINISHED = frozenset(set(S.values) - TERMINAL)

PUBLIC = {
    S.VALIDATING_FILES: "validating_files",
    S.QUEUED: "queued",
    S.ADMITTED: "queued",
    S.REQUEUEING: "queued",
    S.STARTING: "running",
    S.RUNNING: "running",
    S.FINALIZING: "running",
    S.PAUSING: "running",
    S.CANCELLING: "running",
    S.PAUSED: "paused",
    S.SUCCEEDED: "succeeded",
    S.FAILED: "failed",
    S.CANCELLED: "cancelled",
}


def public_status(status: str) -> str:
    return PUBLIC[S(status)]
