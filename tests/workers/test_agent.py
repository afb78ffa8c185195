"""The pod agent with a real trainer and real signals, calling back into a small stand-in for
Partage's per-job HTTP API (spec, training file, events, checkpoints, adapter, exit).

The stops come as they do in production: SIGTERM to the agent alone (the kubelet signals the
container's main process), SIGTERM to its whole process group (the local executor's cancel), or
the `stop` / `finish_now` flags the API returns to a batch of events."""

from __future__ import annotations

import email
import email.policy
import io
import json
import os
import pathlib
import signal
import subprocess
import sys
import tarfile
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from workers import catalog
from workers.executors.base import EXIT_OK, EXIT_PREEMPTED
from workers.lora import adapter as adapter_io

pytestmark = pytest.mark.slow

REPO = pathlib.Path(__file__).resolve().parents[2]
JOB = "ftjob-agent"
MODEL = "partage/tiny-llama"
TOKEN = "test-token"


@pytest.fixture(scope="module")
def model_cache(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    cache = tmp_path_factory.mktemp("models")
    catalog.resolve(MODEL, cache)
    return cache


def training_file(n: int) -> bytes:
    rows = [
        {
            "messages": [
                {"role": "user", "content": f"What is {i} plus {i}?"},
                {"role": "assistant", "content": f"{i} plus {i} is {2 * i}."},
            ]
        }
        for i in range(n)
    ]
    return "".join(json.dumps(r) + "\n" for r in rows).encode()


def form_parts(content_type: str, body: bytes) -> dict[str, bytes]:
    message = email.message_from_bytes(
        f"Content-Type: {content_type}\r\n\r\n".encode() + body, policy=email.policy.HTTP
    )
    parts = {}
    for part in message.walk():
        name = part.get_param("name", header="content-disposition")
        if name is not None:
            payload = part.get_payload(decode=True)
            assert isinstance(payload, bytes)
            parts[str(name)] = payload
    return parts


class Partage:
    """The callback API for one job. `on_events(events)` may return flags (or act) before the
    agent gets its answer; `on_adapter()` runs while the agent waits on its adapter upload."""

    def __init__(self, hyperparameters: dict[str, Any], rows: int) -> None:
        self.spec = {
            "job_id": JOB,
            "base_model": MODEL,
            "training_file_url": "/files/train",
            "validation_file_url": None,
            "checkpoint_url": None,
            "seed": 7,
            "hyperparameters": {"learning_rate": 1e-3, **hyperparameters},
            "lora": {"r": 4, "alpha": 8, "dropout": 0.0, "target_modules": "all-linear"},
            "max_rank": 64,
        }
        self.train = training_file(rows)
        self.events: list[dict[str, Any]] = []
        self.checkpoints: list[dict[str, bytes]] = []
        self.adapters: list[dict[str, bytes]] = []
        self.exits: list[dict[str, Any]] = []
        self.on_events: Callable[[list[dict[str, Any]]], dict[str, bool] | None] = lambda e: None
        self.on_adapter: Callable[[], None] = lambda: None
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        partage = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                if self.path == f"/jobs/{JOB}/spec":
                    self.reply(json.dumps(partage.spec).encode())
                elif self.path == f"/jobs/{JOB}/files/train":
                    self.reply(partage.train)
                else:
                    self.send_error(404)

            def do_POST(self) -> None:
                assert self.headers["Authorization"] == f"Bearer {TOKEN}"
                body = self.rfile.read(int(self.headers["Content-Length"]))
                path = self.path.removeprefix(f"/jobs/{JOB}")
                flags: dict[str, bool] = {"stop": False, "finish_now": False}
                if path == "/events":
                    events = json.loads(body)["events"]
                    partage.events.extend(events)
                    flags.update(partage.on_events(events) or {})
                elif path == "/checkpoints":
                    partage.checkpoints.append(form_parts(self.headers["Content-Type"], body))
                elif path == "/adapter":
                    partage.adapters.append(form_parts(self.headers["Content-Type"], body))
                    partage.on_adapter()
                elif path == "/exit":
                    partage.exits.append(json.loads(body))
                else:
                    self.send_error(404)
                    return
                self.reply(json.dumps(flags).encode())

            def reply(self, payload: bytes) -> None:
                self.send_response(200)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

        return Handler

    def __enter__(self) -> Partage:
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def partage() -> Iterator[Callable[..., Partage]]:
    started: list[Partage] = []

    def start(hyperparameters: dict[str, Any], rows: int = 16) -> Partage:
        started.append(Partage(hyperparameters, rows).__enter__())
        return started[-1]

    yield start
    for server in started:
        server.__exit__()


def launch(partage: Partage, run_dir: pathlib.Path, model_cache: pathlib.Path) -> Any:
    """Like the local executor: `python -m workers.agent` in a session of its own."""
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "PYTHONPATH": str(REPO),
        "PARTAGE_CALLBACK_URL": partage.url,
        "PARTAGE_JOB_TOKEN": TOKEN,
        "PARTAGE_JOB_ID": JOB,
        "PARTAGE_ATTEMPT": "1",
        "PARTAGE_RUN_DIR": str(run_dir),
        "PARTAGE_MODEL_CACHE": str(model_cache),
    }
    return subprocess.Popen(
        [sys.executable, "-m", "workers.agent"],
        cwd=REPO,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=(run_dir.parent / "agent.log").open("wb"),
        start_new_session=True,
    )


def trainer_of(agent_pid: int) -> int:
    for stat in pathlib.Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == agent_pid:
            return int(stat.parent.name)
    raise AssertionError(f"agent {agent_pid} has no trainer")


def catches_sigterm(pid: int) -> bool:
    try:
        status = pathlib.Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    caught = next(line for line in status.splitlines() if line.startswith("SigCgt:"))
    return bool(int(caught.split()[1], 16) & (1 << (signal.SIGTERM - 1)))


def until_shutting_down(pid: int) -> None:
    """Wait for the trainer to drop its run's SIGTERM handler: the run has returned and the
    interpreter shuts down (the window where a stop used to kill a completed run)."""
    deadline = time.monotonic() + 30
    while catches_sigterm(pid):
        assert time.monotonic() < deadline, f"trainer {pid} kept its SIGTERM handler"
        time.sleep(0.001)


def unpack(archive: bytes, target: pathlib.Path) -> pathlib.Path:
    with tarfile.open(fileobj=io.BytesIO(archive), mode="r:gz") as tar:
        tar.extractall(target, filter="data")
    return target


@pytest.mark.parametrize("stop", ["kubelet", "cancel", "stop flag", "finish_now flag"])
def test_a_stop_after_the_trainer_completed_is_reported_as_success(
    stop: str, partage: Callable[..., Partage], tmp_path: pathlib.Path, model_cache: pathlib.Path
) -> None:
    api = partage({"n_epochs": 1, "batch_size": 4, "checkpoint_every_steps": 100})
    run_dir = tmp_path / "run"
    agent = launch(api, run_dir, model_cache)
    signalled = threading.Event()

    def on_adapter() -> None:  # the trainer has emitted `completed`; the upload is under way
        until_shutting_down(trainer_of(agent.pid))
        if stop == "kubelet":
            os.kill(agent.pid, signal.SIGTERM)
        else:
            os.killpg(agent.pid, signal.SIGTERM)
        signalled.set()

    def on_events(events: list[dict[str, Any]]) -> dict[str, bool] | None:
        if not any(e.get("event") == "completed" for e in events):
            return None
        until_shutting_down(trainer_of(agent.pid))
        signalled.set()
        return {"stop": True} if stop == "stop flag" else {"finish_now": True}

    if stop.endswith("flag"):
        api.on_events = on_events
    else:
        api.on_adapter = on_adapter
    code = agent.wait(timeout=300)
    log = (tmp_path / "agent.log").read_text(errors="replace")

    assert signalled.is_set(), log[-3000:]
    assert code == EXIT_OK, log[-3000:]
    assert [e["exit_code"] for e in api.exits] == [EXIT_OK]
    assert (run_dir / "exit_code").read_text() == "0"
    kinds = [e["event"] for e in api.events]
    assert kinds[-1] == "completed" and "preempted" not in kinds
    (upload,) = api.adapters
    adapter_dir = unpack(upload["archive"], tmp_path / "adapter")
    assert json.loads(upload["manifest"]) == json.loads((adapter_dir / "manifest.json").read_text())
    adapter_io.verify_adapter(
        adapter_dir, catalog.resolve(MODEL, model_cache), base_model_id=MODEL, max_rank=64
    )


def test_a_stop_mid_training_checkpoints_and_is_reported_as_preempted(
    partage: Callable[..., Partage], tmp_path: pathlib.Path, model_cache: pathlib.Path
) -> None:
    api = partage({"n_epochs": 50, "batch_size": 4, "checkpoint_every_steps": 1000})
    agent = launch(api, tmp_path / "run", model_cache)

    def on_events(events: list[dict[str, Any]]) -> None:
        if any(e.get("event") == "progress" for e in events):
            os.kill(agent.pid, signal.SIGTERM)  # the kubelet: the agent relays it

    api.on_events = on_events
    code = agent.wait(timeout=300)
    log = (tmp_path / "agent.log").read_text(errors="replace")

    assert code == EXIT_PREEMPTED, log[-3000:]
    assert [e["exit_code"] for e in api.exits] == [EXIT_PREEMPTED]
    preempted = api.events[-1]
    assert preempted["event"] == "preempted" and 1 <= preempted["step"] < 200
    assert not api.adapters and "completed" not in [e["event"] for e in api.events]
    (checkpoint,) = api.checkpoints
    assert checkpoint["step"] == str(preempted["step"]).encode()
    progress = json.loads(
        (unpack(checkpoint["archive"], tmp_path / "ckpt") / "progress.json").read_text()
    )
    assert progress["step"] == preempted["step"]
