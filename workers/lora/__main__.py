"""`python -m workers.lora --config job.json [--resume]`: one LoRA fine-tuning run.

Exit codes: 0 ok, 3 user error (incl. NaN/inf loss, zero LoRA gradient), 4 preempted after a
checkpoint, 6 out of memory (host or GPU), 1 internal error. Events go to stdout as JSON lines; logs go to stderr. Once the run
has returned its code, a stop signal no longer changes it (see `exit_with`).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import signal
import sys
import traceback

from workers.lora.config import UserError, job_file_help, load_config
from workers.lora.events import emit, log
from workers.protocol import EXIT_INTERNAL_ERROR, EXIT_OUT_OF_MEMORY, EXIT_USER_ERROR


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m workers.lora",
        description="One LoRA fine-tuning run, described by a job file (job.json). Events go to "
        "stdout as JSON lines, logs to stderr. Exit codes: 0 ok, 1 internal error, 3 user error, "
        "4 preempted after a checkpoint, 6 out of memory.",
        epilog=job_file_help(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--config", required=True, help="path to job.json (keys below)")
    parser.add_argument("--resume", action="store_true", help="continue from the latest checkpoint")
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        metavar="N",
        help="CPU threads for torch; overrides the job file's num_threads",
    )
    args = parser.parse_args(argv)
    if args.threads is not None and args.threads < 1:
        parser.error("--threads must be an integer >= 1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        config = load_config(args.config)
        if args.threads is not None:
            config = dataclasses.replace(config, num_threads=args.threads)
        from workers.lora.trainer import Trainer  # heavy imports after the config is valid

        return Trainer(config).run(resume=args.resume)
    except UserError as e:
        emit("error", code=e.code, message=e.message, **e.details)
        log(f"user error: {e.message}")
        return EXIT_USER_ERROR
    except Exception as e:
        log(traceback.format_exc())
        if isinstance(e, MemoryError) or type(e).__name__ == "OutOfMemoryError":  # torch's
            emit("error", code="out_of_memory", message=f"{type(e).__name__}: {e}")
            return EXIT_OUT_OF_MEMORY
        emit("error", code="internal_error", message=f"{type(e).__name__}: {e}")
        return EXIT_INTERNAL_ERROR


def exit_with(code: int) -> None:
    """Exit with the run's code, whatever signal lands while the interpreter shuts down.

    Shutting down puts every Python signal handler back to the default action before it tears
    the modules down (about a second with torch loaded): a SIGTERM in that window (eviction,
    cancel, or the agent relaying one) killed a run that had already completed, and the agent
    read its -15 as a preemption. The outcome is decided and reported by now: the stop has
    nothing left to stop, so both signals are ignored from here on (SIGKILL still ends it)."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGUSR1, signal.SIG_IGN)
    sys.exit(code)


if __name__ == "__main__":
    exit_with(main())
