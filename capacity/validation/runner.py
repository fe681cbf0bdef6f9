"""Run a validation in a child process: `python -m capacity validate ... --json --progress json`.

The child has its own process group, so a time limit or a cancel ends it and whatever it
started, and nothing else. It ends by itself, within a second, when this process dies
(host.end_with_parent). Its progress events (JSON lines on stderr) are handed to a callback
as they come; the result is the JSON object on the last line of its stdout. Out of memory
is a result (exit code 5, "oom": true), not a crash; max_memory_bytes caps the child's host
memory (`--max-memory`: a CPU run predicted to need more is refused before it starts).

    run = ValidationRun(["--preset", "gpt2", "--method", "mezo"], time_limit_s=600,
                        on_event=print, max_memory_bytes=8 * 2**30)
    result = run.wait()          # or run.cancel() from another thread
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

from .host import PARENT_ENV, engine_environment

ROOT = Path(__file__).resolve().parent.parent.parent   # the repository (holds capacity/)
GRACE_SECONDS = 3.0   # after SIGTERM, before SIGKILL
STDERR_LINES_KEPT = 50


def _json_object(line: str):
    line = line.strip()
    if not line.startswith("{"):
        return None
    try:
        obj = json.loads(line)
    except json.JSONDecodeError:
        return None
    return obj if isinstance(obj, dict) else None


class ValidationRun:
    """One validation in a child process. `status`: running, done, oom, failed, cancelled,
    timed out. `result`: the child's JSON result (or a dict with a message)."""

    def __init__(self, args: list[str], time_limit_s: float | None = None, on_event=None,
                 max_memory_bytes: int | None = None):
        memory = ["--max-memory", str(int(max_memory_bytes))] if max_memory_bytes is not None else []
        self.command = [sys.executable, "-m", "capacity", "validate", *args, *memory, "--json",
                        "--progress", "json"]
        self.time_limit_s = time_limit_s
        self.max_memory_bytes = max_memory_bytes
        self.on_event = on_event or (lambda event: None)
        self.status = "running"
        self.result: dict | None = None
        self.returncode: int | None = None
        self._stdout: list[str] = []
        self._stderr: list[str] = []
        self._stopped_as: str | None = None
        env = engine_environment(dict(os.environ, PYTHONUNBUFFERED="1"))
        env[PARENT_ENV] = str(os.getpid())   # the child ends when this process does
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
        self._proc = subprocess.Popen(self.command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                      stdin=subprocess.DEVNULL, text=True, errors="replace", bufsize=1,
                                      env=env, start_new_session=True)
        self._readers = [threading.Thread(target=self._read_stdout, daemon=True),
                         threading.Thread(target=self._read_stderr, daemon=True)]
        for t in self._readers:
            t.start()

    def _read_stdout(self) -> None:
        for line in self._proc.stdout:
            self._stdout.append(line.rstrip("\n"))

    def _read_stderr(self) -> None:
        for line in self._proc.stderr:
            event = _json_object(line)
            if event is not None and event.get("event") == "progress":
                self.on_event(event)
            else:
                self._stderr = (self._stderr + [line.rstrip("\n")])[-STDERR_LINES_KEPT:]

    def cancel(self) -> None:
        """Stop the run: SIGTERM to its process group, SIGKILL after a grace period."""
        self._stop("cancelled")

    def _stop(self, how: str) -> None:
        if self._proc.poll() is not None:
            return
        self._stopped_as = how
        try:
            os.killpg(self._proc.pid, signal.SIGTERM)
            self._proc.wait(timeout=GRACE_SECONDS)
        except subprocess.TimeoutExpired:
            os.killpg(self._proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    def wait(self) -> dict:
        """Wait for the end (enforcing the time limit) and return the result."""
        try:
            self._proc.wait(timeout=self.time_limit_s)
        except subprocess.TimeoutExpired:
            self._stop("timed out")
            self._proc.wait()
        for t in self._readers:
            t.join(timeout=5)
        self.returncode = code = self._proc.returncode
        result = next((obj for obj in map(_json_object, reversed(self._stdout)) if obj), None)
        if self._stopped_as is not None:
            self.status = self._stopped_as
            message = (f"stopped after the time limit of {self.time_limit_s:g} s"
                       if self._stopped_as == "timed out" else "cancelled")
            self.result = {**(result or {}), "message": message}
        elif code == 0 and result is not None:
            self.status, self.result = "done", result
        elif code == 5 and result is not None:
            self.status, self.result = "oom", result
        elif code == -signal.SIGKILL:
            # Killed from outside with no time limit hit: on Linux, most likely the OOM killer.
            self.status = "oom"
            self.result = {"oom": True, "message": "the run was killed (SIGKILL), most likely out of host memory"}
        elif code == -signal.SIGABRT and self.max_memory_bytes is not None:
            # Native code that cannot report a failed allocation aborts (std::bad_alloc).
            self.status = "oom"
            self.result = {"oom": True, "message": "the run aborted, most likely out of memory under its cap of "
                                                   f"{self.max_memory_bytes:,} bytes"}
        else:
            self.status = "failed"
            last = next((line for line in reversed(self._stderr) if line.strip()), "")
            self.result = result or {"message": last or f"exit code {code}"}
        self.result.setdefault("exit_code", code)
        return self.result


def run_validation(args: list[str], time_limit_s: float | None = None, on_event=None,
                   max_memory_bytes: int | None = None) -> dict:
    """Run one validation in a child process and return its result (see ValidationRun)."""
    return ValidationRun(args, time_limit_s, on_event, max_memory_bytes).wait()
