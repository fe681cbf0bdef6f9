"""Slow answers computed off the page, one worker process per browser session.

A page hands `compute()` the calls it needs (each a capacity function and its arguments).
Answers already known (from any session: they are pure functions of frozen arguments)
come at once from a process-wide cache; the rest go to this session's worker process,
which computes them in order and sends each answer back. The page waits a moment for them
(most land within it), then shows what it has and polls for the rest.

Each session has its own worker, so one user's long search never delays another's. A new
question that no longer needs what the worker is computing ends the worker (a process can
be stopped mid-computation, a thread cannot) and starts a fresh one. Workers are daemonic
children of a fork server (forked from a small clean process, not from the server and its
threads): they end with the server, when their session is dropped, after IDLE_EXIT_S
without work, or when their parent disappears; a server stop never waits for one.
"""

from __future__ import annotations

import collections
import contextlib
import multiprocessing
import sys
import threading
import time
import types
import weakref

import streamlit as st

from ui import _worker as _worker_loop

CALL_TIMEOUT_S = 120      # a single call running longer than this is stopped and reported
CACHE_SIZE = 4096

_CONTEXT = multiprocessing.get_context("forkserver")
_CONTEXT.set_forkserver_preload(["capacity", "ui._worker"])

# Answers by call, shared by every session: ("ok", value) or ("error", message).
_ANSWERS: collections.OrderedDict = collections.OrderedDict()
_ANSWERS_LOCK = threading.Lock()


def call_key(fn, args: tuple) -> tuple:
    return (fn.__module__, fn.__qualname__, args)


def _remember(key, answer) -> None:
    with _ANSWERS_LOCK:
        _ANSWERS[key] = answer
        _ANSWERS.move_to_end(key)
        while len(_ANSWERS) > CACHE_SIZE:
            _ANSWERS.popitem(last=False)


def _known(key):
    with _ANSWERS_LOCK:
        return _ANSWERS.get(key)


class Worker:
    """A session's worker process and the calls it was given."""

    def __init__(self):
        self._proc = None
        self._conn = None
        self._pending: list = []          # keys sent and not answered yet, in order
        self._started_call = 0.0          # when the call now running started
        self._lock = threading.Lock()     # a session's fragment and full runs may overlap
        weakref.finalize(self, Worker._end_process, self.__dict__)

    def ask(self, calls: dict) -> None:
        """Make sure the worker computes these calls (key -> (fn, args)) and nothing else."""
        with self._lock:
            self._collect()
            if self._pending:
                overdue = time.time() - self._started_call > CALL_TIMEOUT_S
                if overdue:               # report it; it is not tried again
                    _remember(self._pending[0], ("error", f"stopped after {CALL_TIMEOUT_S} s"))
                if overdue or any(key not in calls for key in self._pending):
                    self._stop()          # it computes what is no longer asked for
            wanted = [key for key in calls if _known(key) is None]
            new = [key for key in wanted if key not in self._pending]
            if not new:
                return
            if self._proc is None or not self._proc.is_alive():
                self._start()
            if not self._pending:
                self._started_call = time.time()
            self._conn.send([(key, calls[key][0], calls[key][1]) for key in new])
            self._pending.extend(new)

    def wait(self, keys, timeout_s: float) -> None:
        """Wait up to timeout_s for these calls' answers."""
        deadline = time.time() + timeout_s
        while True:
            with self._lock:
                self._collect()
                if not any(_known(key) is None for key in keys) or self._conn is None:
                    return
                conn = self._conn
            left = deadline - time.time()
            if left <= 0:
                return
            try:
                conn.poll(min(left, 0.05))
            except (OSError, EOFError):
                return

    def _collect(self) -> None:
        """Store the answers that have arrived (the lock is held)."""
        if self._conn is None:
            return
        try:
            while self._conn.poll():
                key, answer = self._conn.recv()
                _remember(key, answer)
                if key in self._pending:
                    self._pending.remove(key)
                    self._started_call = time.time()
        except (EOFError, OSError):
            self._stop()                      # the worker died: what it had is lost
        if self._proc is not None and not self._proc.is_alive() and self._pending:
            self._stop()

    def _start(self) -> None:
        parent, child = _CONTEXT.Pipe()
        self._proc = _CONTEXT.Process(target=_worker_loop.serve, args=(child,), daemon=True, name="capacity-worker")
        with _no_main_script():
            self._proc.start()
        child.close()
        self._conn = parent
        self._pending = []

    def _stop(self) -> None:
        Worker._end_process(self.__dict__)
        self._proc, self._conn, self._pending = None, None, []

    @staticmethod
    def _end_process(state: dict) -> None:
        proc, conn = state.get("_proc"), state.get("_conn")
        if conn is not None:
            conn.close()
        if proc is not None and proc.is_alive():
            proc.kill()
            proc.join(timeout=1)


_START_LOCK = threading.Lock()


@contextlib.contextmanager
def _no_main_script():
    """multiprocessing re-runs the parent's __main__ in a new child (found by its file);
    under `streamlit run`, __main__ is the page script itself, which must not run in a
    worker. Hide it while a worker (and the fork server) starts."""
    with _START_LOCK:
        saved = sys.modules.get("__main__")
        sys.modules["__main__"] = types.ModuleType("__main__")
        try:
            yield
        finally:
            sys.modules["__main__"] = saved


_FORK_SERVER = {"asked": False}
FORK_SERVER_DELAY_S = 5.0


def start_fork_server() -> None:
    """Start the fork server a few seconds from now, in the background (once per app), so
    that the first page with background work does not wait for it and the app's first page
    does not share the CPU with it."""
    with _START_LOCK:
        if _FORK_SERVER["asked"]:
            return
        _FORK_SERVER["asked"] = True
    timer = threading.Timer(FORK_SERVER_DELAY_S, _ensure_fork_server)
    timer.daemon = True
    timer.start()


def _ensure_fork_server() -> None:
    from multiprocessing import forkserver
    with _no_main_script():
        forkserver.ensure_running()


def _worker() -> Worker:
    if "_worker" not in st.session_state:
        st.session_state["_worker"] = Worker()
    return st.session_state["_worker"]


class Answers:
    """What compute() returns: the answers known so far, by the page's own keys."""

    def __init__(self, values: dict, errors: dict, missing: int, total: int):
        self.values, self.errors, self.missing, self.total = values, errors, missing, total

    @property
    def done(self) -> bool:
        return self.missing == 0


def compute(jobs: dict, wait_s: float = 0.5) -> Answers:
    """jobs: the page's key -> (fn, args). Starts what is not known yet in this session's
    worker, waits up to wait_s for it, and returns what is known."""
    calls = {call_key(fn, args): (fn, args) for fn, args in jobs.values()}
    worker = _worker()
    worker.ask(calls)
    if wait_s > 0:
        worker.wait(list(calls), wait_s)
    values, errors, missing = {}, {}, 0
    for name, (fn, args) in jobs.items():
        answer = _known(call_key(fn, args))
        if answer is None:
            missing += 1
        elif answer[0] == "ok":
            values[name] = answer[1]
        else:
            errors[name] = answer[1]
    return Answers(values, errors, missing, len(jobs))
