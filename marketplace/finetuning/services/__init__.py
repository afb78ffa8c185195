"""Writes for fine-tuning: files, jobs, the state machine, attempts, events, checkpoints, adapters.

The database is the source of truth. Every job transition is a conditional UPDATE
(`… WHERE status IN allowed`) that appends an event; a transition that is not allowed raises.
Executors are driven from Celery tasks enqueued with `transaction.on_commit`.

files        - training uploads (validated, then stored), their deletion, result files.
options      - a new job's hyperparameters and LoRA settings, checked and given defaults.
transitions  - job events and the state machine's transitions (one job or a batch).
jobs         - create, admit, cancel, pause, preempt, resume, fail; the queue hooks.
attempts     - dispatch, launch, logs, the start of training and the end of an attempt.
reports      - what the trainer reports: events, checkpoints, the adapter.
"""

from marketplace.finetuning.services.attempts import (
    MAX_ATTEMPTS,
    attempt_ended,
    attempt_exit_report,
    attempt_for_dispatch,
    attempt_launched,
    attempt_log_report,
    attempt_logs_capture,
    attempt_training_started,
)
from marketplace.finetuning.services.files import (
    checkpoint_delete,
    file_create,
    file_delete,
    result_file_create,
)
from marketplace.finetuning.services.jobs import (
    _enqueue,
    _enqueue_admission,
    _job_ended,
    job_admit,
    job_admit_apply,
    job_cancel,
    job_create,
    job_fail,
    job_fit_check,
    job_pause,
    job_preempt,
    job_resume,
    jobs_admit_apply,
)
from marketplace.finetuning.services.options import (
    DEFAULT_LORA,
    normalize_hyperparameters,
    normalize_lora,
)
from marketplace.finetuning.services.reports import (
    adapter_store,
    checkpoint_store,
    eval_from_json,
    manifest_from_json,
    trainer_events_record,
)
from marketplace.finetuning.services.transitions import (
    _jobs_transition_apply,
    job_event_add,
    job_transition,
)

# The private names are the ones other apps call across the package (workers.dispatch ends a
# job with _job_ended); they stay importable from here as they were from the single module.
__all__ = [
    "DEFAULT_LORA",
    "MAX_ATTEMPTS",
    "_enqueue",
    "_enqueue_admission",
    "_job_ended",
    "_jobs_transition_apply",
    "adapter_store",
    "attempt_ended",
    "attempt_exit_report",
    "attempt_for_dispatch",
    "attempt_launched",
    "attempt_log_report",
    "attempt_logs_capture",
    "attempt_training_started",
    "checkpoint_delete",
    "checkpoint_store",
    "eval_from_json",
    "file_create",
    "file_delete",
    "job_admit",
    "job_admit_apply",
    "job_cancel",
    "job_create",
    "job_event_add",
    "job_fail",
    "job_fit_check",
    "job_pause",
    "job_preempt",
    "job_resume",
    "job_transition",
    "jobs_admit_apply",
    "manifest_from_json",
    "normalize_hyperparameters",
    "normalize_lora",
    "result_file_create",
    "trainer_events_record",
]
