"""Runs each attempt as a detached local process: `python -m workers.agent`.

The process gets its own session, so restarting the Celery worker neither kills nor duplicates
it. Launch is idempotent: an exclusive lock file per attempt name means a second launch adopts
the first. The agent writes its exit code to `exit_code` in the run directory when it ends.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from workers.executors.base import AttemptStatus, LaunchSpec
from workers.protocol import Phase


def _work_dir() -> Path:
    from django.conf import settings

    return Path(settings.PARTAGE_WORK_DIR)


def _process_start_time(pid: int) -> str | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # Field 22 (starttime) after the command name, which may contain spaces.
    return stat.rsplit(")", 1)[1].split()[19]


class LocalExecutor:
    name = "local"

    def run_dir(self, spec: LaunchSpec) -> Path:
        return _work_dir() / spec.name

    def launch(self, spec: LaunchSpec) -> str:
        run_dir = self.run_dir(spec)
        run_dir.mkdir(parents=True, exist_ok=True)
        lock = run_dir / "launch.lock"
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
        except FileExistsError:
            return self._wait_for_handle(run_dir)
        env = {
            **os.environ,
            **spec.env,
            "PARTAGE_CALLBACK_URL": spec.callback_url,
            "PARTAGE_JOB_TOKEN": spec.token,
            "PARTAGE_JOB_ID": spec.job_id,
            "PARTAGE_ATTEMPT": str(spec.attempt),
            "PARTAGE_RUN_DIR": str(run_dir),
        }
        env.pop("DJANGO_SETTINGS_MODULE", None)
        with open(run_dir / "agent.log", "ab") as log:
            process = subprocess.Popen(
                [sys.executable, "-m", "workers.agent"],
                cwd=Path(__file__).resolve().parents[2],
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        handle = f"{process.pid}:{_process_start_time(process.pid) or ''}"
        (run_dir / "pid").write_text(handle)
        os.write(fd, handle.encode())
        os.close(fd)
        return handle

    def _wait_for_handle(self, run_dir: Path) -> str:
        for _ in range(100):
            pid_file = run_dir / "pid"
            if pid_file.exists() and pid_file.read_text():
                return pid_file.read_text()
            time.sleep(0.05)
        return ""

    def _alive(self, handle: str) -> bool:
        pid_text, _, started = handle.partition(":")
        if not pid_text.isdigit():
            return False
        pid = int(pid_text)
        current = _process_start_time(pid)
        if current is None or (started and current != started):
            return False
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            return False
        return state != "Z"

    def status(self, spec: LaunchSpec) -> AttemptStatus:
        run_dir = self.run_dir(spec)
        exit_file = run_dir / "exit_code"
        if exit_file.exists() and exit_file.read_text().strip():
            code = int(exit_file.read_text().strip())
            if code == 0:
                return AttemptStatus(Phase.SUCCEEDED, exit_code=0)
            from workers.protocol import EXIT_PREEMPTED

            phase = Phase.DISRUPTED if code == EXIT_PREEMPTED else Phase.FAILED
            return AttemptStatus(phase, exit_code=code, reason=f"trainer exited with code {code}")
        pid_file = run_dir / "pid"
        if not pid_file.exists():
            return AttemptStatus(Phase.MISSING, reason="the trainer process was never started")
        handle = pid_file.read_text()
        self._reap(handle)
        if self._alive(handle):
            return AttemptStatus(Phase.RUNNING, handle=handle)
        if exit_file.exists() and exit_file.read_text().strip():
            return self.status(spec)
        return AttemptStatus(
            Phase.MISSING, handle=handle, reason="the trainer process died without reporting"
        )

    def _reap(self, handle: str) -> None:
        pid_text = handle.partition(":")[0]
        if pid_text.isdigit():
            with contextlib.suppress(ChildProcessError, OSError):
                os.waitpid(int(pid_text), os.WNOHANG)

    def cancel(self, spec: LaunchSpec) -> None:
        pid_file = self.run_dir(spec) / "pid"
        if not pid_file.exists():
            return
        handle = pid_file.read_text()
        if not self._alive(handle):
            return
        pid = int(handle.partition(":")[0])
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGTERM)

    def logs(self, spec: LaunchSpec) -> str:
        path = self.run_dir(spec) / "agent.log"
        if not path.exists():
            return ""
        with open(path, "rb") as handle:
            handle.seek(0, os.SEEK_END)
            size = handle.tell()
            handle.seek(max(0, size - 200_000))
            return handle.read().decode("utf-8", errors="replace")
