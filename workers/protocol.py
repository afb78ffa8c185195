"""The trainer protocol, shared by the trainer (`python -m workers.lora`), the agent that runs
beside it, the executors and the internal API: exit codes, attempt phases, and the names of the
events the trainer writes (one JSON object per line, `{"event": <name>, ...}`) and the agent
forwards to /internal/v1/jobs/<id>/events.

Standard library only: the trainer imports it inside a pod where neither Django nor the
marketplace exists.
"""

from __future__ import annotations

import enum


class Phase(enum.StrEnum):
    """Where an attempt stands, as seen by the executor."""

    PENDING = "pending"  # accepted, not yet running the trainer (pod scheduling, image pull)
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"  # see AttemptStatus.reason / exit_code
    DISRUPTED = "disrupted"  # preempted / evicted / node drained: requeue and resume
    MISSING = "missing"  # the executor has no trace of it (vanished Job, dead process)


# Exit codes of `python -m workers.lora` (see workers/lora/README.md).
EXIT_OK = 0
EXIT_INTERNAL_ERROR = 1
EXIT_USER_ERROR = 3
EXIT_PREEMPTED = 4  # stopped on SIGTERM after writing a checkpoint


class TrainerEvent(enum.StrEnum):
    """The `event` of each line the trainer writes on stdout."""

    PROGRESS = "progress"  # step, loss, learning rate, tokens/s
    VALIDATION = "validation"  # step, valid_loss
    DATA_REPORT = "data_report"  # what the data check found, before training
    CHECKPOINT = "checkpoint"  # a checkpoint written (the agent uploads it)
    PREEMPTED = "preempted"  # stopped on SIGTERM after a checkpoint
    COMPLETED = "completed"  # the adapter is written (the agent uploads it)
    ERROR = "error"  # code, message
    LOG = "log"  # a line of text (the agent wraps non-JSON output in one)


def exit_phase(exit_code: int) -> Phase:
    """The phase an attempt ends in when the trainer exits with `exit_code`."""
    if exit_code == EXIT_OK:
        return Phase.SUCCEEDED
    if exit_code == EXIT_PREEMPTED:
        return Phase.DISRUPTED
    return Phase.FAILED
