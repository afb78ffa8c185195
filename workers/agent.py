"""The pod agent: runs one training attempt and reports back to Partage over HTTP.

It is the container command of every training pod and of every local-executor process:

1. fetch the job spec, training files and (on a resumed attempt) the latest checkpoint;
2. run `python -m workers.lora --config job.json [--resume]`;
3. relay the trainer's JSON events, upload checkpoints and the final adapter;
4. report the exit code and exit with it.

It needs only a callback URL and a short-lived token scoped to this one job. It knows nothing
about Django. Environment: PARTAGE_CALLBACK_URL, PARTAGE_JOB_TOKEN, PARTAGE_JOB_ID,
PARTAGE_ATTEMPT, PARTAGE_MODEL_CACHE, and PARTAGE_RUN_DIR (a scratch directory).
"""

from __future__ import annotations

import io
import json
import logging
import os
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

from workers.protocol import EXIT_OK, EXIT_PREEMPTED, TrainerEvent

log = logging.getLogger("partage.agent")

RETRY_FOR_SECONDS = 300


class _Stopped(Exception):
    pass


FLUSH_EVERY_SECONDS = 1.0


class Callback:
    """Partage's internal API for one job, with retries on connection errors and 5xx/429."""

    def __init__(self, base_url: str, token: str, job_id: str, attempt: int) -> None:
        self.base = f"{base_url.rstrip('/')}/jobs/{job_id}"
        self.attempt = attempt
        self.session = requests.Session()
        self.session.headers["Authorization"] = f"Bearer {token}"

    def request(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        deadline = time.monotonic() + RETRY_FOR_SECONDS
        delay = 0.5
        files = kwargs.get("files")
        while True:
            if files:
                for _name, value in files.items():
                    value[1].seek(0)
            try:
                response = self.session.request(method, self.base + path, timeout=60, **kwargs)
            except requests.ConnectionError as e:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"Partage unreachable at {self.base}: {e}") from e
            else:
                if response.status_code < 500 and response.status_code != 429:
                    response.raise_for_status()
                    return response
                if time.monotonic() > deadline:
                    response.raise_for_status()
            time.sleep(delay)
            delay = min(delay * 2, 10)

    def spec(self) -> dict[str, Any]:
        return self.request("GET", "/spec").json()

    def download(self, url_path: str, target: Path) -> None:
        response = self.request("GET", url_path, stream=True)
        with open(target, "wb") as out:
            for chunk in response.iter_content(1 << 20):
                out.write(chunk)

    def events(self, events: list[dict[str, Any]]) -> dict[str, Any]:
        return self.request(
            "POST", "/events", json={"attempt": self.attempt, "events": events}
        ).json()

    def upload(self, path: str, archive: io.BytesIO, fields: dict[str, str]) -> None:
        self.request(
            "POST",
            path,
            data={"attempt": str(self.attempt), **fields},
            files={"archive": ("archive.tar.gz", archive, "application/gzip")},
        )

    def exit(self, code: int, logs: str) -> None:
        self.request(
            "POST", "/exit", json={"attempt": self.attempt, "exit_code": code, "logs": logs}
        )


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
    """Reads the trainer's stdout and forwards events in small batches.

    Once the trainer reports `completed` (its adapter is written), it sends it no more signals:
    a stop or an early finish asked for after that has nothing left to do, and the trainer is
    only shutting down."""

    def __init__(self, callback: Callback, process: subprocess.Popen[bytes]) -> None:
        self.callback = callback
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
                self.upload_checkpoint(event)
            with self.lock:
                self.pending.append(event)
            if kind == TrainerEvent.COMPLETED:
                self.flush()
                self.upload_adapter(event)
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
        if not batch:
            return
        flags = self.callback.events(batch)
        if flags.get("stop"):
            self.send(signal.SIGTERM)
        elif flags.get("finish_now"):
            self.send(signal.SIGUSR1)

    def send(self, signum: int) -> None:
        if self.completed or signum in self.signalled or self.process.poll() is not None:
            return
        self.signalled.add(signum)
        self.process.send_signal(signum)

    def upload_checkpoint(self, event: dict[str, Any]) -> None:
        path = Path(event["path"])
        self.callback.upload(
            "/checkpoints",
            tar_dir(path),
            {"step": str(event["step"]), "metrics": json.dumps(event.get("metrics") or {})},
        )

    def upload_adapter(self, event: dict[str, Any]) -> None:
        adapter_dir = Path(event["adapter_dir"])
        manifest = (adapter_dir / "manifest.json").read_text(encoding="utf-8")
        self.callback.upload("/adapter", tar_dir(adapter_dir), {"manifest": manifest})


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
    )
    run_dir = Path(env.get("PARTAGE_RUN_DIR") or tempfile.mkdtemp(prefix="partage-"))
    exit_file = run_dir / "exit_code"
    stderr_tail = run_dir / "trainer.stderr"
    code = 1
    try:
        config_path, resume = prepare(callback, run_dir)
        if stop.requested:
            log.info("stopped before training started")
            raise _Stopped
        command = [sys.executable, "-m", "workers.lora", "--config", str(config_path)]
        if resume:
            command.append("--resume")
        with open(stderr_tail, "ab") as err:
            process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=err)
        relay = Relay(callback, process)
        stop.attach(relay)
        relay.run()
        code = process.wait()
        if code == -signal.SIGTERM and stop.requested:
            # After `completed` (the adapter is uploaded by now) the stop only cut the trainer's
            # shutdown short, which it guards against (workers.lora.__main__.exit_with): the
            # attempt completed. Before it, the stop reached the trainer (same process group)
            # before its own handler was in place: it saved nothing new, so the attempt
            # resumes from its last checkpoint.
            code = EXIT_OK if relay.completed else EXIT_PREEMPTED
    except _Stopped:
        code = EXIT_PREEMPTED  # nothing new to save: the attempt resumes from its last checkpoint
    except Exception as e:  # report anything, then fail the attempt as an internal error
        log.exception("agent failed: %s", e)
        code = 1
    logs = (
        stderr_tail.read_text(encoding="utf-8", errors="replace")[-100_000:]
        if stderr_tail.exists()
        else ""
    )
    sys.stderr.write(logs)
    try:
        callback.exit(code, logs)
    except Exception as e:
        log.error("could not report exit code %s: %s", code, e)
    exit_file.write_text(str(code))
    return code


if __name__ == "__main__":
    code = main()
    # Reported: a stop landing while the interpreter shuts down (its handlers are back to the
    # default action by then) would otherwise end the container with 143 instead of `code`.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    sys.exit(code)
