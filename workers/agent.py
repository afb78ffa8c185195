"""The pod agent: runs one training attempt and reports back to Partage over HTTP.

It is the container command of every training pod and of every local-executor process:

1. fetch the job spec, training files and (on a resumed attempt) the latest checkpoint;
2. run `python -m workers.lora --config job.json [--resume]`;
3. relay the trainer's JSON events, upload checkpoints and the final adapter;
4. report the exit code and exit with it.

It needs only a callback URL and a short-lived token scoped to this one job. It knows nothing
about Django. Environment: PARTAGE_CALLBACK_URL, PARTAGE_JOB_TOKEN, PARTAGE_JOB_ID,
PARTAGE_ATTEMPT, PARTAGE_MODEL_CACHE, PARTAGE_RUN_DIR (a scratch directory) and
PARTAGE_JOB_DEADLINE (Unix seconds).

Partage may be unreachable for a while (a deploy, an outage): every call is retried with
exponential backoff and jitter until the job's deadline, and the reports go through a durable
spool (workers/spool.py) sent by a thread of their own, so the trainer never waits on the
network and nothing it produced is lost: what is still unsent at the deadline stays on disk
for the worker's resync to deliver.
"""

from __future__ import annotations

import io
import json
import logging
import os
import random
import signal
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import requests

from workers.protocol import (
    EXIT_KILLED,
    EXIT_OK,
    EXIT_OUT_OF_MEMORY,
    EXIT_PREEMPTED,
    TrainerEvent,
)
from workers.spool import Spool

log = logging.getLogger("partage.agent")

# Without PARTAGE_JOB_DEADLINE (an older dispatcher), retry this long.
DEFAULT_DEADLINE_SECONDS = 24 * 3600
BACKOFF_FIRST_SECONDS = 0.5
BACKOFF_MAX_SECONDS = 30.0


class _Stopped(Exception):
    pass


FLUSH_EVERY_SECONDS = 1.0
# How often the trainer's log, when it grew, is sent while it runs (the job page shows it live).
LOG_EVERY_SECONDS = 5.0
LOG_TAIL_BYTES = 100_000


class Callback:
    """Partage's internal API for one job, with retries on connection errors and 5xx/429 until
    the job's deadline (wall clock, Unix seconds)."""

    def __init__(
        self, base_url: str, token: str, job_id: str, attempt: int, *, deadline: float
    ) -> None:
        self.base = f"{base_url.rstrip('/')}/jobs/{job_id}"
        self.attempt = attempt
        self.deadline = deadline
        self.session = requests.Session()
        self.session.headers["Authorization"] = f"Bearer {token}"

    def request(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        failures = 0
        files = kwargs.get("files")
        while True:
            if files:
                for _name, value in files.items():
                    value[1].seek(0)
            try:
                response = self.session.request(method, self.base + path, timeout=60, **kwargs)
            except requests.RequestException as e:
                if time.time() >= self.deadline:
                    raise RuntimeError(f"Partage unreachable at {self.base}: {e}") from e
                why = str(e)
            else:
                if response.status_code < 500 and response.status_code != 429:
                    response.raise_for_status()
                    return response
                if time.time() >= self.deadline:
                    response.raise_for_status()
                why = f"HTTP {response.status_code}"
            failures += 1
            delay = min(backoff_delay(failures), max(self.deadline - time.time(), 0))
            if failures == 1 or failures % 10 == 0:
                log.warning("%s %s failed (%s); retry %d in %.1f s", method, path, why,
                            failures, delay)  # fmt: skip
            time.sleep(delay)

    def spec(self) -> dict[str, Any]:
        return self.request("GET", "/spec").json()

    def download(self, url_path: str, target: Path) -> None:
        response = self.request("GET", url_path, stream=True)
        with open(target, "wb") as out:
            for chunk in response.iter_content(1 << 20):
                out.write(chunk)

    def send(self, kind: str, body: dict[str, Any], archive: Path | None) -> dict[str, Any]:
        """Deliver one spooled report; returns Partage's answer (flags for event batches)."""
        if kind == "events":
            return self.request("POST", "/events", json=body).json()
        if kind == "exit":
            self.request("POST", "/exit", json=body)
            return {}
        if kind == "log":
            self.request("POST", "/log", json=body)
            return {}
        assert archive is not None, kind
        with open(archive, "rb") as handle:
            self.request(
                "POST",
                f"/{'checkpoints' if kind == 'checkpoint' else 'adapter'}",
                data=body,
                files={"archive": ("archive.tar.gz", handle, "application/gzip")},
            )
        return {}


def backoff_delay(failures: int) -> float:
    """Exponential backoff with equal jitter: agents that lost Partage together spread out."""
    ceiling = min(BACKOFF_FIRST_SECONDS * 2 ** (failures - 1), BACKOFF_MAX_SECONDS)
    return ceiling / 2 + random.uniform(0, ceiling / 2)  # noqa: S311 - not for security


class Sender(threading.Thread):
    """Sends the spool's reports in order; each is removed once Partage acknowledged it.

    A refusal (4xx: a stale attempt, a bad report) sets that report aside; an unreachable
    Partage past the deadline stops the sender with the rest left on disk."""

    def __init__(self, spool: Spool, callback: Callback) -> None:
        super().__init__(name="partage-spool-sender", daemon=True)
        self.spool = spool
        self.callback = callback
        self.on_flags: Any = None
        self.gave_up = False

    def run(self) -> None:
        while True:
            entries = self.spool.pending()
            if not entries:
                self.spool.added.wait(0.5)
                self.spool.added.clear()
                continue
            entry = entries[0]
            kind, body, archive = self.spool.read(entry)
            try:
                answer = self.callback.send(kind, body, archive)
            except requests.HTTPError as e:
                status = e.response.status_code if e.response is not None else 0
                if 400 <= status < 500:
                    log.error("Partage refused %s (%s): set aside", entry.name, e)
                    self.spool.reject(entry, str(e))
                    continue
                self.gave_up = True
                log.error("Partage unavailable until the deadline; %d report(s) left in %s",
                          len(entries), self.spool.directory)  # fmt: skip
                return
            except Exception as e:
                self.gave_up = True
                log.error("cannot deliver %s: %s; %d report(s) left in %s", entry.name, e,
                          len(entries), self.spool.directory)  # fmt: skip
                return
            self.spool.remove(entry)
            if self.on_flags is not None and answer:
                self.on_flags(answer)

    def drain(self) -> bool:
        """Wait until every report is delivered (True) or the sender gave up (False)."""
        while self.spool.pending():
            if not self.is_alive():
                return False
            time.sleep(0.2)
        return True


def tar_dir(directory: Path) -> io.BytesIO:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for path in sorted(directory.rglob("*")):
            if path.is_file():
                tar.add(path, arcname=str(path.relative_to(directory)))
    buffer.seek(0)
    return buffer


def untar(archive: Path, target: Path) -> None:
    target.mkdir(parents=True, exist_ok=True)
    with tarfile.open(archive, mode="r:gz") as tar:
        tar.extractall(target, filter="data")


class Relay:
    """Reads the trainer's stdout and spools its events in small batches, never waiting on the
    network (a blocked relay would stall the trainer on a full pipe).

    Once the trainer reports `completed` (its adapter is written), it sends it no more signals:
    a stop or an early finish asked for after that has nothing left to do, and the trainer is
    only shutting down."""

    def __init__(self, spool: Spool, attempt: int, process: subprocess.Popen[bytes]) -> None:
        self.spool = spool
        self.attempt = attempt
        self.process = process
        self.pending: list[dict[str, Any]] = []
        self.lock = threading.Lock()
        self.signalled: set[int] = set()
        self.completed = False

    def run(self) -> None:
        assert self.process.stdout is not None
        last_flush = time.monotonic()
        for raw in self.process.stdout:
            try:
                event = json.loads(raw)
            except ValueError:
                event = {
                    "event": TrainerEvent.LOG.value,
                    "message": raw.decode("utf-8", "replace").rstrip(),
                }
            if not isinstance(event, dict):
                continue
            kind = event.get("event")
            if kind == TrainerEvent.COMPLETED:
                self.completed = True
            if kind == TrainerEvent.CHECKPOINT:
                self.flush()
                self.spool_checkpoint(event)
            with self.lock:
                self.pending.append(event)
            if kind == TrainerEvent.COMPLETED:
                self.flush()
                self.spool_adapter(event)
                continue
            if kind in {TrainerEvent.ERROR, TrainerEvent.PREEMPTED, TrainerEvent.DATA_REPORT} or (
                time.monotonic() - last_flush > FLUSH_EVERY_SECONDS
            ):
                self.flush()
                last_flush = time.monotonic()
        self.flush()

    def flush(self) -> None:
        with self.lock:
            batch, self.pending = self.pending, []
        if batch:
            self.spool.put("events", {"attempt": self.attempt, "events": batch})

    def on_flags(self, flags: dict[str, Any]) -> None:
        """Partage's answer to an event batch (from the sender's thread)."""
        if flags.get("stop"):
            self.send(signal.SIGTERM)
        elif flags.get("finish_now"):
            self.send(signal.SIGUSR1)

    def send(self, signum: int) -> None:
        if self.completed or signum in self.signalled or self.process.poll() is not None:
            return
        self.signalled.add(signum)
        self.process.send_signal(signum)

    def spool_checkpoint(self, event: dict[str, Any]) -> None:
        # Archived now: the trainer may rotate the directory away before it is sent.
        fields = {"step": str(event["step"]), "metrics": json.dumps(event.get("metrics") or {})}
        self.spool.put(
            "checkpoint", {"attempt": str(self.attempt), **fields}, tar_dir(Path(event["path"]))
        )

    def spool_adapter(self, event: dict[str, Any]) -> None:
        adapter_dir = Path(event["adapter_dir"])
        manifest = (adapter_dir / "manifest.json").read_text(encoding="utf-8")
        fields = {"attempt": str(self.attempt), "manifest": manifest}
        eval_file = event.get("eval_file")
        if eval_file and Path(eval_file).is_file():  # the evaluation: a result file beside it
            fields["eval"] = Path(eval_file).read_text(encoding="utf-8")
        self.spool.put("adapter", fields, tar_dir(adapter_dir))


class LogShipper(threading.Thread):
    """Sends the trainer's log while it runs: every few seconds, when it grew, its latest
    LOG_TAIL_BYTES as one report (each replaces the one before). At most one waits in the spool:
    while Partage is unreachable the log is not queued again and again, and the next report
    after the outage carries the newest. Stopped before the exit report, which carries the
    final log and is the last word."""

    def __init__(self, spool: Spool, attempt: int, path: Path, every: float) -> None:
        super().__init__(name="partage-log-shipper", daemon=True)
        self.spool = spool
        self.attempt = attempt
        self.path = path
        self.every = every
        self.shipped_size = 0
        self.stopped = threading.Event()

    def run(self) -> None:
        while not self.stopped.wait(self.every):
            self.ship()

    def ship(self) -> None:
        try:
            size = self.path.stat().st_size
        except OSError:
            return
        if size == self.shipped_size:
            return
        if any(entry.name.endswith("-log.json") for entry in self.spool.pending()):
            return  # the previous one is still on its way: the next tick sends the newest
        with open(self.path, "rb") as handle:
            handle.seek(max(size - LOG_TAIL_BYTES, 0))
            text = handle.read(LOG_TAIL_BYTES).decode("utf-8", errors="replace")
        self.shipped_size = size
        self.spool.put("log", {"attempt": self.attempt, "logs": text})

    def stop(self) -> None:
        self.stopped.set()
        if self.is_alive():
            self.join()


def prepare(callback: Callback, run_dir: Path) -> tuple[Path, bool]:
    spec = callback.spec()
    data_dir = run_dir / "data"
    data_dir.mkdir(parents=True, exist_ok=True)
    training = data_dir / "train.jsonl"
    callback.download(spec["training_file_url"], training)
    validation = None
    if spec.get("validation_file_url"):
        validation = data_dir / "valid.jsonl"
        callback.download(spec["validation_file_url"], validation)
    output_dir = run_dir / "output"
    resume = False
    if spec.get("checkpoint_url"):
        archive = data_dir / "checkpoint.tar.gz"
        callback.download(spec["checkpoint_url"], archive)
        untar(archive, output_dir / "checkpoints" / f"step-{int(spec['checkpoint_step']):06d}")
        resume = True
    config = {
        "job_id": spec["job_id"],
        "base_model": spec["base_model"],
        "training_file": str(training),
        "validation_file": str(validation) if validation else None,
        "output_dir": str(output_dir),
        "seed": spec["seed"],
        "hyperparameters": spec["hyperparameters"],
        "lora": spec["lora"],
        "max_rank": spec.get("max_rank", 64),
    }
    config_path = run_dir / "job.json"
    config_path.write_text(json.dumps(config, indent=2), encoding="utf-8")
    return config_path, resume


class StopRequest:
    """SIGTERM handling from the agent's first instruction: a stop (pause, cancel, preemption,
    eviction) that lands before the trainer exists is kept and honoured once it does, or spares
    starting it at all; the attempt is always reported."""

    def __init__(self) -> None:
        self.requested = False
        self.relay: Relay | None = None

    def __call__(self, signum: int, frame: Any) -> None:
        self.requested = True
        if self.relay is not None:
            self.relay.send(signal.SIGTERM)

    def attach(self, relay: Relay) -> None:
        self.relay = relay
        if self.requested:  # the signal came between the start of the trainer and now
            relay.send(signal.SIGTERM)


CGROUP_MEMORY_EVENTS = (
    Path("/sys/fs/cgroup/memory.events"),  # cgroup v2: this container's (or session's) group
    Path("/sys/fs/cgroup/memory/memory.oom_control"),  # cgroup v1
)


def oom_kill_count(paths: tuple[Path, ...] = CGROUP_MEMORY_EVENTS) -> int | None:
    """How many processes the OOM killer has killed in this cgroup, if the kernel says."""
    for path in paths:
        try:
            lines = path.read_text().splitlines()
        except OSError:
            continue
        for line in lines:
            key, _, value = line.partition(" ")
            if key == "oom_kill" and value.strip().isdigit():
                return int(value)
    return None


def trainer_death(code: int, oom_kills_before: int | None, **kwargs: Any) -> int:
    """Classify a trainer that a signal ended when nobody asked it to stop: out of memory when
    the cgroup's OOM kill count rose meanwhile, else killed. Either way it did not fail on its
    own: the attempt is retried from the latest checkpoint (marketplace attempt_exit_report)."""
    after = oom_kill_count(**kwargs)
    if oom_kills_before is not None and after is not None and after > oom_kills_before:
        log.error("the trainer was killed by the OOM killer (signal %d)", -code)
        return EXIT_OUT_OF_MEMORY
    log.error("the trainer was killed by signal %d", -code)
    return EXIT_KILLED


def trainer_outcome(
    code: int, *, stop_requested: bool, completed: bool, oom_kills_before: int | None, **kwargs: Any
) -> int:
    """The attempt's exit code from the trainer's: a signal that ended it after `completed` (the
    adapter is spooled by then) only cut its shutdown short, so the attempt completed, whatever
    the signal. Before `completed`, our own stop (SIGTERM reaching the trainer, same process
    group, before its handler was in place) saved nothing new: the attempt resumes from its last
    checkpoint. Any other signal killed it (trainer_death)."""
    if code >= 0:
        return code
    if completed:
        log.warning("the trainer ended by signal %d after it completed: the attempt stands", -code)
        return EXIT_OK
    if code == -signal.SIGTERM and stop_requested:
        return EXIT_PREEMPTED
    return trainer_death(code, oom_kills_before, **kwargs)


def main() -> int:
    stop = StopRequest()
    signal.signal(signal.SIGTERM, stop)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s agent %(message)s", stream=sys.stderr
    )
    env = os.environ
    callback = Callback(
        env["PARTAGE_CALLBACK_URL"],
        env["PARTAGE_JOB_TOKEN"],
        env["PARTAGE_JOB_ID"],
        int(env["PARTAGE_ATTEMPT"]),
        deadline=float(env.get("PARTAGE_JOB_DEADLINE") or time.time() + DEFAULT_DEADLINE_SECONDS),
    )
    run_dir = Path(env.get("PARTAGE_RUN_DIR") or tempfile.mkdtemp(prefix="partage-"))
    exit_file = run_dir / "exit_code"
    stderr_tail = run_dir / "trainer.stderr"
    spool = Spool(run_dir / "spool")
    sender = Sender(spool, callback)
    sender.start()
    code = 1
    shipper: LogShipper | None = None
    try:
        config_path, resume = prepare(callback, run_dir)
        if stop.requested:
            log.info("stopped before training started")
            raise _Stopped
        command = [sys.executable, "-m", "workers.lora", "--config", str(config_path)]
        if resume:
            command.append("--resume")
        oom_kills_before = oom_kill_count()
        with open(stderr_tail, "ab") as err:
            process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=err)
        every = float(env.get("PARTAGE_LOG_EVERY_SECONDS") or LOG_EVERY_SECONDS)
        shipper = LogShipper(spool, callback.attempt, stderr_tail, every)
        shipper.start()
        relay = Relay(spool, callback.attempt, process)
        sender.on_flags = relay.on_flags
        stop.attach(relay)
        relay.run()
        code = trainer_outcome(
            process.wait(),
            stop_requested=stop.requested,
            completed=relay.completed,
            oom_kills_before=oom_kills_before,
        )
    except _Stopped:
        code = EXIT_PREEMPTED  # nothing new to save: the attempt resumes from its last checkpoint
    except Exception as e:  # report anything, then fail the attempt as an internal error
        log.exception("agent failed: %s", e)
        code = 1
    if shipper is not None:
        shipper.stop()  # before the exit report: its log is the last word
    logs = (
        stderr_tail.read_text(encoding="utf-8", errors="replace")[-100_000:]
        if stderr_tail.exists()
        else ""
    )
    sys.stderr.write(logs)
    spool.put("exit", {"attempt": callback.attempt, "exit_code": code, "logs": logs})
    if not sender.drain():
        log.error("reports left undelivered in %s: the resync delivers them", spool.directory)
    exit_file.write_text(str(code))
    return code


if __name__ == "__main__":
    code = main()
    # Reported: a stop landing while the interpreter shuts down (its handlers are back to the
    # default action by then) would otherwise end the container with 143 instead of `code`.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    sys.exit(code)
