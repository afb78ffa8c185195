"""A stop (SIGTERM) or an early finish (SIGUSR1) that lands after the run completed: the adapter
is written and `completed` emitted, so the outcome stays exit 0, including while the interpreter
shuts down (when Python has put its signal handlers back to the default action)."""

from __future__ import annotations

import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import pytest

from tests.conftest import catches_signal
from tests.workers.lora.conftest import job_config
from workers.executors.base import EXIT_OK
from workers.lora import adapter as adapter_io

REPO = pathlib.Path(__file__).resolve().parents[3]


@pytest.mark.slow
def test_stop_after_completion_keeps_exit_0_and_the_adapter(tmp_path, tiny_llama_dir):
    config_path = tmp_path / "job.json"
    config_path.write_text(json.dumps(job_config(tmp_path, hyperparameters={"n_epochs": 1})))
    proc = subprocess.Popen(
        [sys.executable, "-m", "workers.lora", "--config", str(config_path)],
        cwd=REPO,
        env={**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)},
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    assert proc.stdout is not None
    events = []
    for line in proc.stdout:
        events.append(json.loads(line))
        if events[-1]["event"] == "completed":
            proc.send_signal(signal.SIGTERM)  # the run is returning: its handler notes it
            break
    # Then the interpreter shuts down: once the run's own handler is gone, stop it again.
    deadline = time.monotonic() + 30
    while proc.poll() is None and catches_signal(proc.pid, signal.SIGTERM):
        assert time.monotonic() < deadline, "the trainer kept its SIGTERM handler"
        time.sleep(0.001)
    assert proc.poll() is None, "the trainer exited before its shutdown could be signalled"
    proc.send_signal(signal.SIGTERM)
    proc.send_signal(signal.SIGUSR1)
    rest = proc.stdout.read()
    proc.wait(timeout=120)

    assert proc.returncode == EXIT_OK
    assert rest == ""  # nothing after `completed`: no checkpoint, no "preempted"
    done = events[-1]
    assert done["event"] == "completed" and "stopped_early" not in done
    adapter_dir = pathlib.Path(done["adapter_dir"])
    manifest = json.loads((adapter_dir / "manifest.json").read_text())
    assert manifest["steps"] == done["steps"] == 4
    adapter_io.verify_adapter(
        adapter_dir, tiny_llama_dir, base_model_id="partage/tiny-llama", max_rank=64
    )
