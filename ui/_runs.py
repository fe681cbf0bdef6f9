"""The Validate page's helpers: the engine's arguments, what `auto` will choose, the run's
live stage, and the history of runs kept in a small local file (it survives a reload).

The run itself (a child process, its progress, cancel and time limit) is ui/_runner.py.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
import threading
import time
from pathlib import Path

import pandas as pd
import streamlit as st

import capacity as cap
from ui import _runner, _scenario as sc
from ui._format import both_text, gb_columns, size_columns, unit_for

ENGINE_CHECK_TTL_S = 3600      # look for the engine again after this long
# The result keys the page shows itself (the rest goes into an expander).
RESULT_SHOWN = ("measured_peak_bytes", "predicted_peak_bytes", "error_pct", "breakdown", "device",
                "peak_source", "cuda")
# `auto` runs on the CPU when the predicted peak is within this share of the free RAM
# (capacity/validation/measurement.py, AUTO_RAM_SHARE; not imported: it imports torch).
AUTO_RAM_SHARE = 0.5
STARTUP_GUESS_S = 15.0         # loading torch and transformers, before any run has said
AUTO_CAP_SHARE = 0.75          # a run's host memory cap, unless set: this share of what is available

HISTORY_KEPT = 200             # runs kept in the history file
HISTORY_FILE = Path(os.environ.get("CAPACITY_APP_HISTORY")
                    or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "capacity"
                    / "validation-runs.jsonl")
_HISTORY_LOCK = threading.Lock()


_ENGINE_CHECK = {"at": 0.0, "answer": None}
_ENGINE_CHECK_LOCK = threading.Lock()
PREFETCH_DELAY_S = 5.0


def engine_available() -> tuple[bool, str]:
    """(available, its help or why not): `python -m capacity validate --help` answered,
    asked at most once per ENGINE_CHECK_TTL_S (half a second each time, a subprocess)."""
    with _ENGINE_CHECK_LOCK:
        if _ENGINE_CHECK["answer"] is None or time.time() - _ENGINE_CHECK["at"] > ENGINE_CHECK_TTL_S:
            _ENGINE_CHECK.update(answer=_runner.engine_help(), at=time.time())
        return _ENGINE_CHECK["answer"]


def forget_engine_check() -> None:
    with _ENGINE_CHECK_LOCK:
        _ENGINE_CHECK["answer"] = None


def prefetch_engine_check() -> None:
    """Ask in the background, a few seconds after the app starts, so that the Validate page
    has the answer when it opens."""
    with _ENGINE_CHECK_LOCK:
        if _ENGINE_CHECK["at"]:
            return
        _ENGINE_CHECK["at"] = -1.0          # asked
    timer = threading.Timer(PREFETCH_DELAY_S, engine_available)
    timer.daemon = True
    timer.start()


def engine_args(choice: str, device: str, steps: int) -> tuple[list[str], tuple]:
    """The engine's command-line arguments for the sidebar's scenario (choice: a key of
    VALIDATE_METHODS), and the folders made for the run (removed when it ends)."""
    s = sc.scenario()
    method, checkpointed = sc.VALIDATE_METHODS[choice]
    keep = float(s["keep"]) if checkpointed else 1.0
    cleanup: tuple = ()
    if s["model"] == sc.UPLOADED:
        # named by the upload's own name: the engine names a config.json by its folder
        folder = tempfile.mkdtemp(prefix="capacity-upload-")
        named = Path(folder) / (re.sub(r"[^A-Za-z0-9._-]+", "-", sc.model_name().split(" (")[0]).strip("-.")[:60]
                                or "uploaded")
        named.mkdir()
        (named / "config.json").write_bytes(st.session_state["uploaded_text"])
        model, cleanup = ["--config", str(named / "config.json")], (folder,)
    else:
        model = ["--preset", s["model"]]
    args = [*model, "--method", method, "--optimizer", s["opt"], "--batch", str(int(s["batch"])),
            "--seq", str(int(s["seq"])), "--dtype", s["dtype"], "--keep", f"{keep:g}",
            "--attention", s["attn"], "--steps", str(steps), "--device", device]
    if s["mixed"] and s["dtype"] != "fp32":
        args.append("--mixed-precision")
    # The sidebar's training loop (capacity/loop_args.py): the preset and what the user changed.
    args += ["--loop", s["loop"], "--grad-accum", str(int(s["accum"]))]
    if s["opt_impl"] != sc.AUTO:
        args += ["--optimizer-impl", s["opt_impl"]]
    if s["hold"] != sc.AUTO:
        args.append("--hold-outputs" if s["hold"] == "held" else "--drop-outputs")
    # What is trained and how the base is stored (capacity/peft_args.py); ValueError when invalid.
    args += sc.peft_cli_args()
    return args, cleanup


def memory_cap_bytes() -> int | None:
    """The host memory cap of a run (`validate --max-memory`, RLIMIT_DATA in the child): the
    user's figure, or AUTO_CAP_SHARE of the memory available now; None when unknown."""
    from capacity.validation import host             # standard library only
    chosen = float(sc.scenario()["v_mem_gb"])
    if chosen >= 0:
        return int(chosen * cap.GB)
    available = host.available_bytes()
    return int(AUTO_CAP_SHARE * available) if available else None


def cap_applies(device: str) -> bool:
    """RLIMIT_DATA is for host memory: a run that may use the GPU is not capped (CUDA's own
    mappings would count against it)."""
    return not (device in ("cuda", "auto") and gpu_seen())


def keep_label(choice: str) -> str:
    """" (L'/L=0.25)" for a checkpointed choice, else ""."""
    return f" (L'/L={float(sc.scenario()['keep']):g})" if sc.VALIDATE_METHODS[choice][1] else ""


def gpu_seen() -> bool:
    """Whether this machine shows an NVIDIA GPU (its driver's files), without importing torch."""
    gpus = Path("/proc/driver/nvidia/gpus")
    return (gpus.is_dir() and any(gpus.iterdir())) or bool(shutil.which("nvidia-smi"))


def free_ram_bytes() -> int | None:
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def auto_choice(choice: str) -> str:
    """What `auto` will run on here, and why (the engine decides; the result says)."""
    if gpu_seen():
        return "cuda: this machine shows an NVIDIA GPU (the CPU if torch cannot use it)"
    method, checkpointed = sc.VALIDATE_METHODS[choice]
    keep = float(sc.scenario()["keep"]) if checkpointed else 1.0
    try:
        need = cap.estimate(sc.model_shape(), sc.method_scenario(method, keep=keep, target="cpu", parallel=cap.Parallel())).peak_bytes
    except ValueError:
        return "the CPU, or trace if the run would not fit in memory"
    free = free_ram_bytes()
    if free is None:
        return "trace: the free memory cannot be read here"
    if need <= AUTO_RAM_SHARE * free:
        return (f"cpu: no GPU here, and the predicted peak on the CPU ({both_text(need)}) is within "
                f"half the free memory ({both_text(free)})")
    return (f"trace (fake tensors): no GPU here, and the predicted peak on the CPU ({both_text(need)}) "
            f"is over half the free memory ({both_text(free)})")


def stage(run, startup_s: float) -> tuple[float, str]:
    """(fraction done, what the run is doing now) for the live progress bar. Until its first
    step ends the engine loads torch and transformers and builds the model (the engine says
    which); the bar advances with the time that took last time, then step by step."""
    if not run.step:
        elapsed = run.elapsed
        return (0.25 * min(elapsed / max(startup_s, 1.0), 0.95),
                f"{run.progress_message or 'starting'} ({elapsed:.0f} s; the first step took {startup_s:.0f} s "
                "last time)")
    return 0.25 + 0.75 * run.fraction, f"step {run.step}/{run.total or '?'} · {run.progress_message}"


# --- the history of runs ------------------------------------------------------------------

RUN_STATUS = {"cancelled": "The run was cancelled", "timed out": "The run timed out",
              "out of memory": "The run ran out of memory", "failed": "The run failed"}


def status_text(entry: dict) -> str:
    """'The run failed: <the engine's message>' (plain text: show it with md())."""
    head = RUN_STATUS.get(entry["status"], f"The run ended ({entry['status']})")
    return f"{head}: {entry['message']}" if entry.get("message") else head


def history_entry(run, requested_device: str) -> dict:
    """A finished run as the history keeps it (plain data: downloadable as JSON)."""
    return {"run": run.label, "started": time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(run.started)),
            "seconds": round(run.elapsed, 1), "status": run.status, "message": run.message,
            "requested device": requested_device,
            "startup seconds": None if run.first_step_at is None else round(run.first_step_at - run.started, 1),
            "command": " ".join(run.command[2:]), "result": run.result, "stderr": run.stderr_tail()}


def load_history() -> list[dict]:
    """The runs kept on this machine, oldest first (unreadable lines are skipped)."""
    try:
        lines = HISTORY_FILE.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return []
    entries = []
    for line in lines[-HISTORY_KEPT:]:
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if isinstance(entry, dict) and isinstance(entry.get("run"), str) and isinstance(entry.get("status"), str):
            entries.append(entry)
    return entries


def save_run(entry: dict) -> bool:
    """Append a run to the history file (the last HISTORY_KEPT are kept); False when the
    file cannot be written."""
    with _HISTORY_LOCK:
        try:
            HISTORY_FILE.parent.mkdir(parents=True, exist_ok=True)
            kept = [json.dumps(e, default=str) for e in load_history()[-(HISTORY_KEPT - 1):]]
            tmp = HISTORY_FILE.with_suffix(".tmp")
            tmp.write_text("\n".join([*kept, json.dumps(entry, default=str)]) + "\n", encoding="utf-8")
            tmp.replace(HISTORY_FILE)
        except OSError:
            return False
    return True


def clear_history() -> None:
    with _HISTORY_LOCK:
        try:
            HISTORY_FILE.unlink()
        except OSError:
            pass


def startup_seconds(history: list[dict]) -> float:
    """How long the engine took to its first step last time (torch, transformers, the model)."""
    for entry in reversed(history):
        if isinstance(entry.get("startup seconds"), (int, float)):
            return float(entry["startup seconds"])
    return STARTUP_GUESS_S


def history_unit(history: list) -> str:
    """GB, or MB when every run's peak is small."""
    peaks = [n for entry in history for n in ((entry.get("result") or {}).get("measured_peak_bytes"),
                                               (entry.get("result") or {}).get("predicted_peak_bytes"))
             if isinstance(n, (int, float))]
    return unit_for(max(peaks, default=None))


def history_row(entry: dict, unit: str = "GB") -> dict:
    result = entry.get("result") or {}
    row = {"run": entry["run"], "started": entry.get("started"), "status": entry["status"],
           "device": result.get("device") if isinstance(result, dict) else None,
           "seconds": entry.get("seconds")}
    for key, label in (("measured_peak_bytes", "measured"), ("predicted_peak_bytes", "predicted")):
        n = result.get(key) if isinstance(result, dict) else None
        row.update(size_columns(label, n if isinstance(n, (int, float)) else float("nan"), unit))
    error = result.get("error_pct") if isinstance(result, dict) else None
    row["error [%]"] = (round(error, 2) or 0.0) if isinstance(error, (int, float)) else None
    row["message"] = entry.get("message")
    return row


# --- one result ---------------------------------------------------------------------------

def cuda_table(cuda: dict) -> pd.DataFrame:
    """The three CUDA memory figures, labelled: which one the prediction is compared with."""
    rows = [("max_memory_allocated (live tensors: what capacity predicts)", cuda.get("max_memory_allocated_bytes")),
            ("max_memory_reserved (the caching allocator's pool)", cuda.get("max_memory_reserved_bytes")),
            ("device used, total − free (CUDA context and other processes included)", cuda.get("device_used_bytes"))]
    return pd.DataFrame([{"CUDA figure": name, **gb_columns("memory", n)} for name, n in rows
                         if isinstance(n, (int, float))]).round(3)


def breakdown_frame(result: dict, unit: str = "GB") -> pd.DataFrame:
    """Measured against predicted, one row per class both sides can name
    (capacity.memory.TRACKER_CLASSES); each side's own terms when there is no such pair."""
    breakdown = result.get("breakdown") or {}
    pair = breakdown.get("comparable") or breakdown
    measured, predicted = pair.get("measured") or {}, pair.get("predicted") or {}
    measured = {k: v for k, v in measured.items() if isinstance(v, (int, float))}
    predicted = {k: v for k, v in predicted.items() if isinstance(v, (int, float))}
    terms = [t for t in cap.TERMS if t in measured or t in predicted]
    terms = list(dict.fromkeys(terms + [t for t in list(measured) + list(predicted) if t not in terms]))
    return pd.DataFrame([
        {"term": t.replace("_", " "), "measured_bytes": measured.get(t, 0), "predicted_bytes": predicted.get(t, 0),
         **size_columns("measured", measured.get(t, 0), unit), **size_columns("predicted", predicted.get(t, 0), unit)}
        for t in terms if measured.get(t) or predicted.get(t)
    ])
