"""The engine process and its host: the memory it may use, a cap on it, and its parent.

A validation run on the CPU holds real tensors, so before it builds anything it compares
what it needs with `available_bytes()`: the smallest of the memory the kernel says is
available (/proc/meminfo MemAvailable), the room left under the process's control group
limit, and the room left under its own data limit (RLIMIT_DATA, which `cap_memory` sets for
`--max-memory`). Standard library only.

`end_with_parent` ends a run whose parent (the app's server) is gone: a thread polls the
parent's pid. (prctl(PR_SET_PDEATHSIG) is not used: on Linux it fires when the parent
*thread* that started the child ends, and the app starts runs from short-lived threads.)
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

PARENT_ENV = "CAPACITY_PARENT_PID"   # set by runner.ValidationRun: the pid the child watches
PARENT_POLL_SECONDS = 0.5

# A run started from the app or runner.ValidationRun shares the machine with the app's server
# and a browser. torch's CPU kernels run on OpenMP threads (as many as cores), and libgomp's
# idle threads spin between parallel regions by default: beside any other busy process they
# take the cores the next op needs (measured, GPT-2 BP on 2 shared cores: 4-18 s a step
# against 1-2 s with sleeping threads). With OMP_WAIT_POLICY=PASSIVE they sleep instead. The
# thread count, and so every kernel's per-thread buffers and the measured peak, is unchanged.
ENGINE_THREADS_ENV = {"OMP_WAIT_POLICY": "PASSIVE"}


def engine_environment(base: dict) -> dict:
    """`base` (an environment) with ENGINE_THREADS_ENV's settings where it sets none."""
    return {**ENGINE_THREADS_ENV, **base}


def _meminfo_available() -> int | None:
    """MemAvailable of /proc/meminfo in bytes (free memory plus what the kernel can reclaim)."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def _read_int(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None   # "max" (no limit) -> None


def _cgroup_room() -> int | None:
    """The room left under this process's control group memory limit (v2 or v1), if any."""
    candidates = [("memory.max", "memory.current"),                         # cgroup v2
                  ("memory/memory.limit_in_bytes", "memory/memory.usage_in_bytes")]   # v1
    for limit_name, usage_name in candidates:
        limit = _read_int(Path("/sys/fs/cgroup") / limit_name)
        usage = _read_int(Path("/sys/fs/cgroup") / usage_name)
        if limit is not None and usage is not None and limit < 2**62:
            return max(limit - usage, 0)
    return None


def data_bytes() -> int | None:
    """This process's data segment size (VmData of /proc/self/status): what RLIMIT_DATA caps."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmData:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def _rlimit_room() -> int | None:
    try:
        import resource
        soft, _ = resource.getrlimit(resource.RLIMIT_DATA)
    except (ImportError, OSError, ValueError, AttributeError):
        return None
    if soft == resource.RLIM_INFINITY:
        return None
    return max(soft - (data_bytes() or 0), 0)


def available_bytes(cap: int | None = None) -> int | None:
    """Host memory this process can still take, in bytes (None when nothing is known); with
    `cap`, also the room under a data cap not set yet (cap minus the data held now)."""
    room = None if cap is None else max(cap - (data_bytes() or 0), 0)
    known = [n for n in (_meminfo_available(), _cgroup_room(), _rlimit_room(), room) if n is not None]
    return min(known) if known else None


_capped_from: list = []   # the RLIMIT_DATA soft limit before cap_memory, to restore


def cap_memory(limit_bytes: int) -> None:
    """Cap this process's data (heap and private mappings, RLIMIT_DATA) at limit_bytes: an
    allocation beyond it fails (MemoryError, or torch's "can't allocate memory"), which the
    run reports as out of memory. The cap covers host memory only, not a GPU's."""
    import resource
    soft, hard = resource.getrlimit(resource.RLIMIT_DATA)
    if hard != resource.RLIM_INFINITY:
        limit_bytes = min(limit_bytes, hard)
    if not _capped_from:
        _capped_from.append(soft)
    resource.setrlimit(resource.RLIMIT_DATA, (limit_bytes, hard))


def restore_memory_cap() -> None:
    """Undo cap_memory (for a run called in-process, as the tests do)."""
    if _capped_from:
        import resource
        _, hard = resource.getrlimit(resource.RLIMIT_DATA)
        resource.setrlimit(resource.RLIMIT_DATA, (_capped_from.pop(), hard))


def parent_to_watch() -> int | None:
    """The parent pid named by CAPACITY_PARENT_PID, or None (a run started from a shell)."""
    text = os.environ.get(PARENT_ENV, "")
    return int(text) if text.isdigit() else None


def end_with_parent(parent_pid: int, exit_code: int, poll_seconds: float = PARENT_POLL_SECONDS) -> None:
    """Start a daemon thread that ends this process (os._exit(exit_code)) as soon as its parent
    is no longer parent_pid: the parent died and the child was handed to another process.
    Nobody is left to read a result, so nothing is written."""
    def watch():
        while os.getppid() == parent_pid:
            threading.Event().wait(poll_seconds)
        os._exit(exit_code)
    threading.Thread(target=watch, name="end-with-parent", daemon=True).start()
