"""A validation run in a child process: `python -m capacity validate ... --json --progress json`.

No Streamlit here: the Validate page keeps an `EngineRun` in the session state and reads it
on every rerun. The child runs in its own process group, so that cancelling it (or its time
limit) ends it and whatever it started, and nothing else. Two reader threads drain its
stdout and stderr (a full pipe would stall it); a watchdog thread enforces the time limit
even when no page is looking. When the app's server stops, every run still going is ended
(an exit handler), and the files a run was given (an uploaded config) are removed when it
ends.

Contract of the engine: progress lines on stderr such as
{"event": "progress", "step": 2, "total": 5, "message": "..."}; the last line of stdout is
one JSON object (the result); a non-zero exit code with a one-line message on stderr means
failure.
"""

from __future__ import annotations

import atexit
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from pathlib import Path

from capacity.validation.host import engine_environment

ROOT = Path(__file__).resolve().parent.parent
# The engine's two entry points: the `capacity` command's subcommand, and the validation
# package run directly (the same parser); the first that answers --help is used.
ENGINES = ([sys.executable, "-m", "capacity", "validate"], [sys.executable, "-m", "capacity.validation"])
ENGINE = list(ENGINES[0])
GRACE_SECONDS = 3        # after SIGTERM, before SIGKILL
EXTRA_SECONDS = 10       # the engine gets --timeout; the watchdog kills it this much later
STDERR_LINES_KEPT = 200

_LIVE: set = set()               # the runs still going, ended when the server stops
_LIVE_LOCK = threading.Lock()


def engine_help(timeout_s: float = 30) -> tuple[bool, str]:
    """(available, help text or the reason it is not). Sets ENGINE to the entry point found."""
    global ENGINE
    reason = "not found"
    for candidate in ([ENGINE] + [list(e) for e in ENGINES if list(e) != ENGINE]):
        try:
            done = subprocess.run([*candidate, "--help"], cwd=ROOT, capture_output=True, text=True,
                                  timeout=timeout_s)
        except (OSError, subprocess.TimeoutExpired) as err:
            reason = f"the engine did not answer ({err.__class__.__name__})"
            continue
        if done.returncode == 0:
            ENGINE = candidate
            return True, done.stdout
        reason = (done.stderr.strip().splitlines() or ["no message"])[-1]
    return False, reason


class EngineRun:
    """One launched run. `status`: running, done, out of memory, failed, cancelled or timed out."""

    def __init__(self, args: list[str], time_limit_s: float, label: str = "", cleanup: tuple = (),
                 max_memory_bytes: int | None = None):
        """cleanup: folders made for this run (an uploaded config), removed when it ends.
        max_memory_bytes: the child's host memory cap (`--max-memory`, RLIMIT_DATA): beyond
        it the run is out of memory, not the machine."""
        memory = ["--max-memory", f"{int(max_memory_bytes)}B"] if max_memory_bytes else []
        self.command = [*ENGINE, *args, *memory, "--timeout", f"{time_limit_s:g}", "--json", "--progress", "json"]
        self.max_memory_bytes = max_memory_bytes
        self.cleanup = tuple(cleanup)
        self.label = label
        self.time_limit_s = time_limit_s
        self.started = time.time()
        self.finished_at: float | None = None
        self.status = "running"
        self.message = ""
        self.result: dict | None = None
        self.step = 0
        self.total = 0
        self.progress_message = "starting"
        self.first_step_at: float | None = None        # when the first step ended (torch loaded, model built)
        self.recorded = False            # set by the page once the run is in the history
        self._cancelled = False
        self._stdout: list[str] = []
        self._stderr: deque[str] = deque(maxlen=STDERR_LINES_KEPT)
        self._lock = threading.Lock()
        # The engine watches this pid and ends within a second if the app's server dies
        # without its exit handler (capacity/validation/host.py, CAPACITY_PARENT_PID).
        # Its OpenMP threads sleep when idle (host.ENGINE_THREADS_ENV): the server and browser share the cores.
        env = engine_environment(dict(os.environ, PYTHONUNBUFFERED="1", CAPACITY_PARENT_PID=str(os.getpid())))
        try:
            self._proc = subprocess.Popen(self.command, cwd=ROOT, stdout=subprocess.PIPE,
                                          stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True,
                                          errors="replace", bufsize=1, env=env, start_new_session=True)
        except OSError:
            self._remove_files()
            raise
        with _LIVE_LOCK:
            _LIVE.add(self)
        self._readers = [threading.Thread(target=self._read, args=(self._proc.stdout, self._on_stdout), daemon=True),
                         threading.Thread(target=self._read, args=(self._proc.stderr, self._on_stderr), daemon=True)]
        for t in self._readers:
            t.start()
        threading.Thread(target=self._watch, daemon=True).start()

    # -- what the page reads ----------------------------------------------------------

    @property
    def running(self) -> bool:
        return self.status == "running"

    @property
    def elapsed(self) -> float:
        return (self.finished_at or time.time()) - self.started

    @property
    def fraction(self) -> float:
        return min(1.0, self.step / self.total) if self.total else 0.0

    def stderr_tail(self, n: int = 20) -> str:
        with self._lock:
            return "\n".join(list(self._stderr)[-n:])

    def cancel(self) -> None:
        """Stop the run: SIGTERM to its process group, SIGKILL after a grace period."""
        if self.running:
            self._cancelled = True
            self._kill()
            self._finish("cancelled", "cancelled by the user")

    # -- internals ------------------------------------------------------------------

    @staticmethod
    def _read(stream, sink) -> None:
        try:
            for line in stream:
                sink(line.rstrip("\n"))
        except (OSError, ValueError):
            pass                          # the pipe closed under us: the run is over

    def _on_stdout(self, line: str) -> None:
        with self._lock:
            self._stdout.append(line)

    def _on_stderr(self, line: str) -> None:
        event = _json_object(line)
        with self._lock:
            if event and event.get("event") == "progress":
                if self.first_step_at is None and _int(event.get("step"), 0) >= 1:
                    self.first_step_at = time.time()
                self.step = _int(event.get("step"), self.step)
                self.total = _int(event.get("total"), self.total)
                self.progress_message = str(event.get("message", ""))[:300]
            else:
                self._stderr.append(line)

    def _watch(self) -> None:
        try:
            code = self._proc.wait(timeout=self.time_limit_s + EXTRA_SECONDS)
        except subprocess.TimeoutExpired:
            self._kill()
            self._finish("timed out", f"stopped after the time limit of {self.time_limit_s:g} s")
            return
        for t in self._readers:
            t.join(timeout=5)
        if self._cancelled or not self.running:
            return                        # cancel() reports it
        result = next((obj for obj in map(_json_object, reversed(self._stdout)) if obj), None)
        if code == 0 and result is not None:
            self.result = result
            self._finish("done", "")
        elif code == 0:
            self._finish("failed", "the engine exited without printing a JSON result")
        elif result is not None and result.get("oom"):
            self.result = result         # the engine reports out of memory as a result
            self._finish("out of memory", str(result.get("message", "out of memory")))
        elif result is not None and result.get("timed_out"):
            self._finish("timed out", str(result.get("message", "timed out")))
        elif result is not None and result.get("message"):
            self._finish("failed", str(result["message"]))
        elif code == -signal.SIGKILL:     # not by us: on Linux most likely the OOM killer
            self._finish("out of memory", "the run was killed (SIGKILL), most likely out of host memory")
        elif code == -signal.SIGABRT and self.max_memory_bytes:
            self._finish("out of memory", f"the run aborted, most likely out of memory under its cap of "
                                          f"{self.max_memory_bytes / 1e9:,.2f} GB")
        else:
            self._finish("failed", self._failure_message(code))

    def _failure_message(self, code: int) -> str:
        with self._lock:
            lines = [line for line in self._stderr if line.strip()]
        if not lines:
            return f"the engine stopped with exit code {code} and no message"
        last = _json_object(lines[-1])
        if last and last.get("message"):
            return str(last["message"])
        return lines[-1].removeprefix("error: ")[:500]

    def _finish(self, status: str, message: str) -> None:
        with self._lock:
            if self.status == "running":
                self.status, self.message, self.finished_at = status, message, time.time()
        with _LIVE_LOCK:
            _LIVE.discard(self)
        self._remove_files()

    def _remove_files(self) -> None:
        for folder in self.cleanup:
            shutil.rmtree(folder, ignore_errors=True)

    def _kill(self) -> None:
        """End the child's process group (only the processes this run started)."""
        pgid = self._proc.pid         # start_new_session: the child leads its own group
        try:
            os.killpg(pgid, signal.SIGTERM)
        except (ProcessLookupError, PermissionError):
            return
        try:
            self._proc.wait(timeout=GRACE_SECONDS)
        except subprocess.TimeoutExpired:
            pass
        try:                          # whatever is left of the group
            os.killpg(pgid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


@atexit.register
def end_all_runs() -> None:
    """End every run still going (the app's server is stopping) and remove its files."""
    with _LIVE_LOCK:
        runs = list(_LIVE)
    for run in runs:
        run._cancelled = True
        run._kill()
        run._finish("cancelled", "the app stopped")


def _json_object(line: str) -> dict | None:
    line = line.strip()
    if not line.startswith("{"):
        return None
    try:
        obj = json.loads(line)
    except ValueError:
        return None
    return obj if isinstance(obj, dict) else None


def _int(value, default: int) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else default
