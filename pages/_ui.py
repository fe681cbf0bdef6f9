"""What every page shares: the scenario (session state and URL), the sidebar, figures.

UI only. Every number shown comes from `capacity`; this module converts bytes to the
labelled display units (GB = 10^9 bytes, GiB = 2^30 bytes), lays out widgets and exports
figures. The scenario lives in `st.session_state["scenario"]` and is mirrored into the
URL's query parameters, so a link reproduces it.
"""

from __future__ import annotations

import concurrent.futures
import functools
import math
import re
import shutil
import tempfile
import threading
import time
from pathlib import Path

import pandas as pd
import plotly.graph_objects as go
import streamlit as st

import capacity as cap
from capacity.shape import MODEL_TYPES

ROOT = Path(__file__).resolve().parent.parent
ACCURACY_DOC = ROOT / "docs" / "accuracy.md"

CUSTOM = "Custom budget"
UPLOADED = "uploaded"          # the `model` value when the model is an uploaded config.json
# A Hugging Face config.json is a few KB; the server also refuses uploads over 1 MB
# (.streamlit/config.toml, server.maxUploadSize).
UPLOAD_LIMIT_BYTES = 1_000_000

# The default scenario is the paper's experiment (Katti et al. 2025, arXiv 2511.11362):
# batch 8, MeZO on Llama-2-7B against BP on GPT2-medium, about 17 GB of memory.
DEFAULTS = {
    "model": "llama-2-7b",       # the model of the calculator and the memory figure
    "bp_model": "gpt2-medium",   # the small model trained with BP in the paper's experiment
    "family": "Llama-2",         # the family searched for the largest model that fits
    "batch": 8,
    "seq": 512,                  # tokens per example; BoolQ examples fit in 512
    "dtype": "bf16",
    "mixed": False,
    "opt": "adamw",
    "keep": 0.25,                # L'/L of the checkpointed BP column
    "attn": "eager",
    "target": "cuda",
    "device": CUSTOM,
    "budget_gb": 17.0,
    "ctx": False,                # count the CUDA context against the budget
    "time_device": "A100 80GB",  # the throughput figures of the time page
    "steps": 1000,               # BP-equivalent steps of the time page
    "mult": float(cap.MEZO_STEPS_MULTIPLIER),
    "eff": 1.0,                  # share of peak throughput reached (1: the roofline bound)
    "ctx_max": 8192,             # longest context of the memory figure
    "log": False,
    "v_method": "mezo",          # the Validate page's run
    "v_device": "auto",          # the GPU if any, else the CPU, else trace when RAM is short
    "v_steps": 3,
    "v_limit": 300,              # seconds
}

# What "Load the paper's setting" restores (the rest of the scenario stays as it is).
PAPER_SETTING = {key: DEFAULTS[key] for key in (
    "model", "bp_model", "family", "batch", "seq", "dtype", "mixed", "opt", "device", "budget_gb", "ctx")}

# Input ranges of the widgets (capacity validates the values again).
MAX_BATCH = 4096
MAX_SEQ = 1 << 20
MAX_BUDGET_GB = 10_000.0
MIN_BUDGET_GB = 0.1
MAX_STEPS = 10**9
MAX_MULT = 10_000.0
# The Validate page's methods: the engine's, with BP plain (L'/L = 1) or checkpointed at
# the sidebar's L'/L, like the calculator's columns.
VALIDATE_METHODS = {"mezo": ("mezo", False), "bp": ("bp", False), "bp checkpointed": ("bp", True),
                    "inference": ("inference", False)}
VALIDATE_DEVICES = ("auto", "cuda", "cpu", "trace")


def _choices() -> dict:
    """The allowed values of every categorical scenario key."""
    models = cap.preset_names()
    return {
        "model": models + ([UPLOADED] if "uploaded_shape" in st.session_state else []),
        "bp_model": models,
        "family": list(cap.families()),
        "dtype": list(cap.DTYPES),
        "opt": list(cap.OPTIMIZERS),
        "attn": list(cap.ATTENTIONS),
        "target": list(cap.TARGETS),
        "device": [CUSTOM] + cap.device_names(),
        "time_device": cap.device_names(),
        "v_method": list(VALIDATE_METHODS),
        "v_device": list(VALIDATE_DEVICES),
    }


_RANGES = {
    "batch": (1, MAX_BATCH), "seq": (1, MAX_SEQ), "keep": (0.0, 1.0),
    "budget_gb": (MIN_BUDGET_GB, MAX_BUDGET_GB), "steps": (1, MAX_STEPS),
    "mult": (1.0, MAX_MULT), "ctx_max": (128, MAX_SEQ), "eff": (0.01, 1.0),
    "v_steps": (2, 100), "v_limit": (10, 3600),
}


def _parse_param(key: str, text: str, choices: dict):
    """One query parameter as a typed value; ValueError when it is not acceptable."""
    default = DEFAULTS[key]
    if isinstance(default, bool):
        if text.lower() not in ("1", "0", "true", "false"):
            raise ValueError("expected 1 or 0")
        return text.lower() in ("1", "true")
    if isinstance(default, (int, float)):
        value = type(default)(float(text)) if isinstance(default, float) else int(text)
        low, high = _RANGES[key]
        if not low <= value <= high:
            raise ValueError(f"must be between {low} and {high}")
        return value
    if text not in choices[key]:
        raise ValueError("must be one of " + ", ".join(choices[key][:8]) + ("…" if len(choices[key]) > 8 else ""))
    return text


def scenario() -> dict:
    """The session's scenario, read once from the URL when the session starts."""
    if "scenario" not in st.session_state:
        values, problems = dict(DEFAULTS), []
        choices = _choices()
        for key, text in st.query_params.to_dict().items():
            if key not in DEFAULTS:
                continue
            try:
                values[key] = _parse_param(key, text, choices)
            except ValueError as err:
                problems.append(f"`{key}={text}` ({err}); using {DEFAULTS[key]!r}")
        st.session_state["scenario"] = values
        st.session_state["url_problems"] = problems
    return st.session_state["scenario"]


def url_params(values: dict) -> dict:
    """The query parameters of a scenario: the keys that differ from the defaults."""
    params = {}
    for key, value in values.items():
        if value == DEFAULTS[key]:
            continue
        params[key] = ("1" if value else "0") if isinstance(value, bool) else str(value)
    return params


def write_url() -> None:
    """Mirror the scenario into the URL. Sent on every run, not only on a change: a run
    that ends in st.rerun() (the background searches landing) loses its messages, and the
    server's copy of the URL would already match."""
    st.query_params.from_dict(url_params(scenario()))


def control(widget, label: str, key: str, **kwargs):
    """A widget bound to scenario[key]: keeps its value across pages and in the URL.

    Streamlit forgets a widget's value when another page draws a widget with the same key,
    so the scenario is the one copy: the widget starts from it on every run, and its
    on_change callback (run before the script) writes the user's choice back.
    """
    wkey = f"w_{key}"
    st.session_state[wkey] = scenario()[key]
    widget(label, key=wkey, on_change=_store, args=(key,), **kwargs)
    return scenario()[key]


def _store(key: str) -> None:
    scenario()[key] = st.session_state[f"w_{key}"]


def set_scenario(**values) -> None:
    """Change scenario keys (e.g. from a button's callback); the widgets follow on the next run."""
    scenario().update(values)


# --- sidebar -------------------------------------------------------------------------

def sidebar() -> None:
    """The scenario controls every page shares."""
    s = scenario()
    choices = _choices()
    with st.sidebar:
        st.header("Scenario")
        _upload_box()
        choices = _choices()
        if s["model"] not in choices["model"]:
            set_scenario(model=DEFAULTS["model"])
        control(st.selectbox, "Model", "model", options=choices["model"],
                format_func=_model_label, help="A preset, or the config.json you uploaded.")
        control(st.number_input, "Batch size", "batch", min_value=1, max_value=MAX_BATCH, step=1)
        control(st.number_input, "Context length (tokens per example)", "seq",
                min_value=1, max_value=MAX_SEQ, step=64)
        control(st.selectbox, "Precision", "dtype", options=choices["dtype"])
        control(st.checkbox, "Mixed precision (fp32 master weights, gradients and optimizer states)",
                "mixed", disabled=s["dtype"] == "fp32",
                help="Needs a 16-bit precision.")
        control(st.selectbox, "Optimizer (BP)", "opt", options=choices["opt"],
                help="MeZO keeps no optimizer state.")
        control(st.slider, "Checkpointing L'/L (layers that keep activations)", "keep",
                min_value=0.0, max_value=1.0, step=0.05,
                help="Used by the 'BP checkpointed' method; plain BP keeps every layer (L'/L = 1).")
        control(st.selectbox, "Attention implementation", "attn", options=choices["attn"])
        control(st.selectbox, "Kernels modelled", "target", options=choices["target"],
                help="CUDA fuses dropout into a 1-byte mask; the CPU keeps a full noise tensor.")
        st.subheader("Memory budget")
        control(st.selectbox, "Device", "device", options=choices["device"],
                format_func=_device_label)
        if s["device"] == CUSTOM:
            control(st.number_input, "Budget [GB = 10⁹ bytes]", "budget_gb",
                    min_value=MIN_BUDGET_GB, max_value=MAX_BUDGET_GB, step=1.0, format="%.2f")
        control(st.checkbox, f"Reserve the CUDA context: {cap.format_bytes(cap.CUDA_CONTEXT_BYTES)}",
                "ctx", help="The calculator's peak counts live tensors only (torch.cuda.max_memory_allocated); "
                            "nvidia-smi also shows the CUDA context.")
        st.caption(f"Budget: **{cap.format_bytes(budget_bytes())}** usable.")
        st.button("Reset to the paper's setting", on_click=_reset, width="stretch")
    for problem in st.session_state.get("url_problems", []):
        st.warning(f"Link parameter ignored: {problem}.")
    if s["model"] == UPLOADED or st.session_state.get("model_from_upload_missing"):
        st.caption("The uploaded model cannot travel in a link; the link carries the other settings.")


ENTRY_FLAG = "_ran_through_app"     # set by app.py on every run
REQUESTED_PAGE = "_requested_page"  # a page to open once app.py has taken over


def start_page(title: str, page_file: str) -> None:
    """Every page begins here (page_file: its __file__): the shared sidebar, the title, an
    upload's error if any."""
    if not st.session_state.get(ENTRY_FLAG):
        _reroute_through_app(page_file)
    sidebar()
    st.title(title)
    show_upload_error()


def _reroute_through_app(page_file: str) -> None:
    """Streamlit runs a pages/ file on its own (its older pages-folder mode) when a fresh
    server's first request is a deep link such as /what_fits, before app.py has called
    st.navigation. Keep the link's scenario, then let app.py run and open this page."""
    scenario()                                   # reads the link's query parameters
    st.session_state[REQUESTED_PAGE] = f"pages/{Path(page_file).name}"
    st.switch_page("app.py")


def _reset() -> None:
    set_scenario(**DEFAULTS)


def _model_label(name: str) -> str:
    if name == UPLOADED:
        return f"Uploaded: {st.session_state.get('uploaded_name', 'config.json')}"
    return name


def _device_label(name: str) -> str:
    if name == CUSTOM:
        return CUSTOM
    return f"{name} ({cap.format_bytes(cap.load_device(name).memory_bytes)})"


def _upload_box() -> None:
    with st.expander("Upload a config.json", expanded=False):
        up = st.file_uploader("Hugging Face config.json", type=["json"], key="upload",
                              help="Read as data: no code runs. 1 MB at most.")
        if up is None:
            return
        if st.session_state.get("uploaded_id") == up.file_id:
            return
        shape, error = read_upload(up.name, up.getvalue())
        if error:
            st.session_state["upload_error"] = error
            st.session_state.pop("uploaded_id", None)
            return
        st.session_state.pop("upload_error", None)
        st.session_state["uploaded_shape"] = shape
        st.session_state["uploaded_name"] = up.name
        st.session_state["uploaded_text"] = up.getvalue()
        st.session_state["uploaded_id"] = up.file_id
        set_scenario(model=UPLOADED)


def read_upload(name: str, data: bytes):
    """(shape, None) or (None, message saying what to change)."""
    if len(data) > UPLOAD_LIMIT_BYTES:
        return None, (f"{name} is {len(data):,} bytes; a model's config.json is a few KB "
                      f"(limit {UPLOAD_LIMIT_BYTES:,} bytes). Upload the model's config.json.")
    try:
        return cap.parse_hf_config_text(data, name=Path(name).stem), None
    except ValueError as err:
        return None, (f"Could not read {name}: {err}. Upload a Hugging Face config.json of a "
                      f"supported model type ({', '.join(MODEL_TYPES)}) with valid sizes.")


def show_upload_error() -> None:
    if st.session_state.get("upload_error"):
        st.error(st.session_state["upload_error"])


# --- what the pages read ---------------------------------------------------------------

def model_shape(name: str | None = None):
    """The shape of the scenario's model (or of a named preset)."""
    name = name or scenario()["model"]
    if name == UPLOADED:
        return st.session_state["uploaded_shape"]
    return _preset(name)


@functools.lru_cache(maxsize=None)
def _preset(name: str):
    return cap.load_preset(name)


def model_name() -> str:
    s = scenario()
    return _model_label(s["model"])


def budget_bytes() -> int:
    """The usable budget: the device's memory or the custom figure, less the CUDA
    context when the user reserves it."""
    s = scenario()
    total = cap.load_device(s["device"]).memory_bytes if s["device"] != CUSTOM else int(s["budget_gb"] * cap.GB)
    return total - cap.CUDA_CONTEXT_BYTES if s["ctx"] else total


def budget_label() -> str:
    s = scenario()
    where = s["device"] if s["device"] != CUSTOM else "custom budget"
    return f"{cap.format_bytes(budget_bytes())} ({where})"


def method_scenario(method: str, keep: float = 1.0, **changes) -> "cap.Scenario":
    """A capacity.Scenario from the sidebar's settings; ValueError when they conflict."""
    s = scenario()
    fields = dict(method=method, optimizer=s["opt"], batch=int(s["batch"]), seq=int(s["seq"]),
                  dtype=s["dtype"], mixed_precision=bool(s["mixed"]) and s["dtype"] != "fp32",
                  keep=float(keep), attention=s["attn"], target=s["target"])
    fields.update(changes)
    return cap.Scenario(**fields)


def methods() -> list[tuple[str, "cap.Scenario"]]:
    """The four columns the pages compare, labelled. Stops the page with a message when
    the sidebar's settings are not a valid scenario."""
    keep = float(scenario()["keep"])
    try:
        return [
            ("Inference", method_scenario("inference")),
            ("MeZO", method_scenario("mezo")),
            ("BP", method_scenario("bp")),
            (f"BP checkpointed (L'/L={keep:g})", method_scenario("bp", keep=keep)),
        ]
    except ValueError as err:
        st.error(f"These settings are not a valid scenario: {err}. Change it in the sidebar.")
        st.stop()


# The inverse questions search many sizes; their answers are cached per process (the
# arguments are frozen dataclasses, numbers and strings, so they are hashable).
CACHE_SIZE = 4096


@functools.lru_cache(maxsize=CACHE_SIZE)
def largest_preset(family: str, budget: int, sc):
    return cap.largest_preset(family, budget, sc)


# Slow answers (a P_MeZO/P_BP curve is dozens of searches) are computed off the script's
# thread, one at a time, so that the page re-renders at once and fills in when they land.
# Futures are kept per process, keyed by the call, like the caches above.
_WORKER = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="capacity-background")
_FUTURES: dict = {}
_FUTURES_LOCK = threading.Lock()


def background(fn, *args) -> concurrent.futures.Future:
    """fn(*args) in the background worker, once per process; its Future."""
    key = (fn.__module__, fn.__qualname__, args)
    with _FUTURES_LOCK:
        future = _FUTURES.get(key)
        if future is None or future.cancelled():
            if len(_FUTURES) >= CACHE_SIZE:
                for k in [k for k, f in _FUTURES.items() if f.done()]:
                    del _FUTURES[k]
            future = _FUTURES[key] = _WORKER.submit(fn, *args)
    return future


def keep_only(futures, slot: str) -> None:
    """Cancel what this session queued under `slot` before and no longer needs (a newer
    interaction supersedes it), so that stale work does not delay the current answer."""
    wanted = set(map(id, futures))
    for future in st.session_state.get(f"futures_{slot}", []):
        if id(future) not in wanted:
            future.cancel()            # a no-op for work already running or done
    st.session_state[f"futures_{slot}"] = list(futures)


@functools.lru_cache(maxsize=None)
def preset_params(name: str) -> int:
    return cap.parameter_count(_preset(name))


def budget_grid(current: int) -> list[int]:
    """Budgets to sample for a curve: 2 to 256 GB, doubling, and the current budget (each
    point costs capacity two searches per method, so the grid stays coarse)."""
    grid = {int(g * cap.GB) for g in (2, 4, 8, 16, 32, 64, 128, 256)}
    return sorted(grid | {current})


def params_text(n: int) -> str:
    """'6.74 B' (parameters, short scale); 'none fits' for 0."""
    if not n:
        return "none fits"
    for unit, size in (("B", 10**9), ("M", 10**6), ("K", 10**3)):
        if n >= size:
            return f"{n / size:,.2f} {unit}"
    return f"{n}"


# Display units: decimal and binary, always both and labelled. Small models (an upload,
# tiny-llama) are shown in MB / MiB, so that their numbers do not round to 0.00 GB.
UNITS = {"GB": (cap.GB, "GiB", cap.GiB), "MB": (10**6, "MiB", 2**20)}
AXIS_TITLES = {"GB": "memory [GB = 10⁹ bytes]", "MB": "memory [MB = 10⁶ bytes]"}
GB_AXIS = AXIS_TITLES["GB"]
SMALL_BYTES = 10**8           # below 0.1 GB, use MB


def unit_for(n: int | float | None) -> str:
    """"GB", or "MB" when the largest number to show is under 0.1 GB."""
    return "MB" if n is not None and n < SMALL_BYTES else "GB"


def size_text(n: int | float | None, unit: str | None = None) -> str:
    """'14.15 GB' (or '481.49 MB' for small numbers)."""
    if n is None:
        return "n/a"
    unit = unit or unit_for(n)
    return f"{n / UNITS[unit][0]:,.2f} {unit}"


def binary_text(n: int | float | None, unit: str | None = None) -> str:
    """'13.18 GiB' (or MiB): the binary twin of size_text."""
    if n is None:
        return "n/a"
    _, name, size = UNITS[unit or unit_for(n)]
    return f"{n / size:,.2f} {name}"


def gb_text(n: int | float | None) -> str:
    return size_text(n, "GB")


def gib_text(n: int | float | None) -> str:
    return binary_text(n, "GB")


def pct_text(x: float | None) -> str:
    return "n/a" if x is None else f"{x:+.2f} %"


def fit_text(need: int, budget: int) -> str:
    """'fits, 3.10 GB free' or '-2.00 GB over budget' (the minus makes st.metric red)."""
    if need <= budget:
        return f"fits, {gb_text(budget - need)} free"
    return f"-{gb_text(need - budget)} over budget"


def times_text(x: float) -> str:
    """A P_MeZO/P_BP ratio: '6.33', or '∞ (BP fits nothing)'."""
    return "∞ (BP fits nothing)" if math.isinf(x) else f"{x:.2f}"


def finite(values: pd.Series) -> pd.Series:
    """Infinite values become gaps in a chart."""
    return values.where(values.map(math.isfinite))


def ratio(a: int | float, b: int | float) -> float:
    """a / b of two capacity figures (NaN when b is 0)."""
    return a / b if b else float("nan")


def ratio_text(a: int | float, b: int | float) -> str:
    return f"{ratio(a, b):.3f}" if b else "n/a"


def term_label(term: str) -> str:
    return term.replace("_", " ")


def terms_table(breakdowns: dict, terms, totals: dict, unit: str = "GB") -> pd.DataFrame:
    """Rows: the terms and the total; two columns per method (GB and GiB, or MB and MiB)."""
    rows = {}
    for term in list(terms) + ["total"]:
        row = {}
        for label, breakdown in breakdowns.items():
            n = totals[label] if term == "total" else breakdown.get(term, 0)
            row.update(size_columns(label, n, unit))
        rows["total (peak)" if term == "total" else term_label(term)] = row
    return pd.DataFrame.from_dict(rows, orient="index").round(3)


def context_grid(longest: int) -> list[int]:
    """Context lengths to sample for a curve: powers of two and the midpoints between
    them (x1.5), from 64 tokens up to `longest`, which is always the last point."""
    points, p = set(), 64
    while p < longest:
        points.update(x for x in (p, p * 3 // 2) if x < longest)
        p *= 2
    return sorted(points | {longest})


def unit_tabs(table: pd.DataFrame, unit: str = "GB") -> None:
    """A table with '[GB]' and '[GiB]' columns as two tabs, one per unit (names kept)."""
    binary = UNITS[unit][1]
    tabs = st.tabs([f"{unit} ({'10⁹' if unit == 'GB' else '10⁶'} bytes)",
                    f"{binary} ({'2³⁰' if unit == 'GB' else '2²⁰'} bytes)"])
    for tab, name in zip(tabs, (unit, binary)):
        tab.dataframe(table[[c for c in table.columns if c.endswith(f"[{name}]")]], width="stretch")


def gb_columns(label: str, n: int | float) -> dict:
    """Two labelled columns: bytes in GB (10^9) and in GiB (2^30)."""
    return size_columns(label, n, "GB")


def size_columns(label: str, n: int | float, unit: str = "GB") -> dict:
    """Two labelled columns in `unit` and its binary twin, e.g. 'x [MB]' and 'x [MiB]'."""
    size, binary, binary_size = UNITS[unit]
    return {f"{label} [{unit}]": n / size, f"{label} [{binary}]": n / binary_size}


# --- time ----------------------------------------------------------------------------

SECONDS_PER_HOUR = 3600


def time_row(label: str, shape, sc, device, budget: int, steps: int, mezo_mult: float,
             efficiency: float = 1.0) -> dict:
    """One setup of the time tables: capacity's memory, FLOPs and time per step, and the
    time to `steps` BP-equivalent steps (MeZO takes `mezo_mult` steps for each)."""
    est = cap.estimate(shape, sc)
    per_step = cap.step_time_seconds(shape, sc, device, efficiency=efficiency)
    n_steps = steps * mezo_mult if sc.method == "mezo" else steps
    return {"setup": label, "parameters": cap.parameter_count(shape), "peak_bytes": est.peak_bytes,
            **gb_columns("peak", est.peak_bytes), "fits budget": est.peak_bytes <= budget,
            "FLOPs per step": cap.flops_per_step(shape, sc), "time per step [s]": per_step,
            "steps": n_steps, "time to target [h]": n_steps * per_step / SECONDS_PER_HOUR}


def time_table(data: pd.DataFrame) -> pd.DataFrame:
    """The time rows as shown: readable numbers, no raw bytes."""
    shown = data.drop(columns=["peak_bytes"]).copy()
    shown["parameters"] = shown["parameters"].map(params_text)
    shown["FLOPs per step"] = shown["FLOPs per step"].map("{:.3e}".format)
    shown["fits budget"] = shown["fits budget"].map({True: "yes", False: "no"})
    return shown.round({"peak [GB]": 2, "peak [GiB]": 2, "time per step [s]": 4, "steps": 1,
                        "time to target [h]": 3})


def wall_clock_curve(rows: pd.DataFrame, steps: int, points: int = 21) -> pd.DataFrame:
    """Wall-clock time against BP-equivalent steps for each setup of a time table."""
    out = []
    for _, row in rows.iterrows():
        for i in range(points):
            progress = steps * i // (points - 1)
            out.append({"setup": row["setup"], "BP-equivalent steps": progress,
                        "wall-clock [h]": row["time to target [h]"] * progress / steps})
    return pd.DataFrame(out)


# --- validation runs -----------------------------------------------------------------

MAX_VALIDATE_STEPS = _RANGES["v_steps"][1]
MAX_VALIDATE_SECONDS = _RANGES["v_limit"][1]
PROGRESS_REFRESH_S = 0.5
ENGINE_CHECK_TTL_S = 60      # look for the engine again after this long
# The result keys the page shows itself (the rest goes into an expander).
RESULT_SHOWN = ("measured_peak_bytes", "predicted_peak_bytes", "error_pct", "breakdown", "device",
                "peak_source", "cuda")


@st.cache_data(ttl=ENGINE_CHECK_TTL_S, show_spinner=False)
def engine_available() -> tuple[bool, str]:
    from pages import _runner
    return _runner.engine_help()


def engine_args(choice: str, device: str, steps: int) -> list[str]:
    """The engine's command-line arguments for the sidebar's scenario (choice: a key of
    VALIDATE_METHODS)."""
    s = scenario()
    method, checkpointed = VALIDATE_METHODS[choice]
    keep = float(s["keep"]) if checkpointed else 1.0
    if s["model"] == UPLOADED:
        folder = Path(st.session_state.setdefault("upload_dir", tempfile.mkdtemp(prefix="capacity-upload-")))
        path = folder / "config.json"
        path.write_bytes(st.session_state["uploaded_text"])
        model = ["--config", str(path)]
    else:
        model = ["--preset", s["model"]]
    args = [*model, "--method", method, "--optimizer", s["opt"], "--batch", str(int(s["batch"])),
            "--seq", str(int(s["seq"])), "--dtype", s["dtype"], "--keep", f"{keep:g}",
            "--attention", s["attn"], "--steps", str(steps), "--device", device]
    if s["mixed"] and s["dtype"] != "fp32":
        args.append("--mixed-precision")
    return args


def history_unit(history: list) -> str:
    """GB, or MB when every run's peak is small."""
    peaks = [n for entry in history for n in ((entry.get("result") or {}).get("measured_peak_bytes"),
                                               (entry.get("result") or {}).get("predicted_peak_bytes"))
             if isinstance(n, (int, float))]
    return unit_for(max(peaks, default=None))


def keep_label(choice: str) -> str:
    """" (L'/L=0.25)" for a checkpointed choice, else ""."""
    return f" (L'/L={float(scenario()['keep']):g})" if VALIDATE_METHODS[choice][1] else ""


RUN_STATUS = {"cancelled": "The run was cancelled", "timed out": "The run timed out",
              "out of memory": "The run ran out of memory", "failed": "The run failed"}


def status_text(entry: dict) -> str:
    """'The run failed: <the engine's message>'."""
    head = RUN_STATUS.get(entry["status"], f"The run ended ({entry['status']})")
    return f"{head}: {entry['message']}" if entry.get("message") else head


def history_entry(run) -> dict:
    """A finished run as the history keeps it (plain data: downloadable as JSON)."""
    return {"run": run.label, "started": time.strftime("%H:%M:%S", time.localtime(run.started)),
            "seconds": round(run.elapsed, 1), "status": run.status, "message": run.message,
            "command": " ".join(run.command[2:]), "result": run.result, "stderr": run.stderr_tail()}


def history_row(entry: dict, unit: str = "GB") -> dict:
    result = entry.get("result") or {}
    row = {"run": entry["run"], "started": entry["started"], "status": entry["status"],
           "seconds": entry["seconds"]}
    for key, label in (("measured_peak_bytes", "measured"), ("predicted_peak_bytes", "predicted")):
        n = result.get(key)
        row.update(size_columns(label, n if isinstance(n, (int, float)) else float("nan"), unit))
    row["error [%]"] = result.get("error_pct")
    row["message"] = entry["message"]
    return row


def cuda_table(cuda: dict) -> pd.DataFrame:
    """The three CUDA memory figures, labelled: which one the prediction is compared with."""
    rows = [("max_memory_allocated (live tensors: what capacity predicts)", cuda.get("max_memory_allocated_bytes")),
            ("max_memory_reserved (the caching allocator's pool)", cuda.get("max_memory_reserved_bytes")),
            ("device used, total − free (CUDA context and other processes included)", cuda.get("device_used_bytes"))]
    return pd.DataFrame([{"CUDA figure": name, **gb_columns("memory", n)} for name, n in rows
                         if isinstance(n, (int, float))]).round(3)


def breakdown_frame(result: dict, unit: str = "GB") -> pd.DataFrame:
    """Measured against predicted, one row per term (the union of both sides)."""
    breakdown = result.get("breakdown") or {}
    # Prefer the classes both sides can name (capacity.memory.TRACKER_CLASSES).
    pair = breakdown.get("comparable") or breakdown
    measured, predicted = pair.get("measured") or {}, pair.get("predicted") or {}
    measured = {k: v for k, v in measured.items() if isinstance(v, (int, float))}
    predicted = {k: v for k, v in predicted.items() if isinstance(v, (int, float))}
    terms = [t for t in cap.TERMS if t in measured or t in predicted]
    terms += [t for t in list(measured) + list(predicted) if t not in terms]
    terms = list(dict.fromkeys(terms))
    return pd.DataFrame([
        {"term": term_label(t), "measured_bytes": measured.get(t, 0), "predicted_bytes": predicted.get(t, 0),
         **size_columns("measured", measured.get(t, 0), unit), **size_columns("predicted", predicted.get(t, 0), unit)}
        for t in terms if measured.get(t) or predicted.get(t)
    ])


# --- figures -------------------------------------------------------------------------

EXPORT_SIZE = {"width": 1100, "height": 650, "scale": 2}    # pixels of exported files
PLOTLY_CONFIG = {
    "displaylogo": False,
    # The toolbar's camera button saves a PNG at the export size.
    "toImageButtonOptions": {"format": "png", **EXPORT_SIZE},
}


# Ticks of a logarithmic axis: 1, 2, 5, 10, 20, 50, ... (Plotly shows those in range).
LOG_TICKS = [m * 10**e for e in range(-3, 8) for m in (1, 2, 5)]


def axis_scale(log: bool) -> dict:
    """Plotly axis settings: logarithmic with 1-2-5 ticks, or linear."""
    return {"type": "log", "tickvals": LOG_TICKS, "tickformat": "~g"} if log else {"type": "linear"}


# One colour per memory term on every chart (Plotly's default palette, in TERMS order).
TERM_COLOURS = dict(zip(cap.TERMS, ("#636efa", "#ab63fa", "#ef553b", "#00cc96", "#ffa15a", "#19d3f3", "#b6e880")))


def style(fig: go.Figure, title: str) -> go.Figure:
    fig.update_layout(template="plotly_white", title={"text": title, "x": 0.0, "xanchor": "left"},
                      legend={"orientation": "h", "yanchor": "bottom", "y": 1.02, "x": 0, "traceorder": "normal"},
                      margin={"t": 110, "l": 70, "r": 70, "b": 60}, font={"size": 13})
    return fig


@functools.lru_cache(maxsize=1)
def export_available() -> bool:
    """kaleido draws PNG/SVG files with Chromium; without it only the toolbar works."""
    try:
        import kaleido  # noqa: F401
    except ImportError:
        return False
    return any(shutil.which(b) for b in ("chromium", "chromium-browser", "google-chrome"))


def figure_bytes(fig: go.Figure, fmt: str) -> bytes:
    return fig.to_image(format=fmt, **EXPORT_SIZE)


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def show_figure(fig: go.Figure, name: str, data: pd.DataFrame) -> None:
    """The chart, then downloads: PNG and SVG (kaleido, drawn on click) and its data as CSV."""
    st.plotly_chart(fig, config=PLOTLY_CONFIG, key=f"chart-{name}")
    png, svg, csv = st.columns(3)
    ok = export_available()
    png.download_button("Download PNG", data=functools.partial(figure_bytes, fig, "png"),
                        file_name=f"{name}.png", mime="image/png", on_click="ignore",
                        disabled=not ok, key=f"png-{name}", width="stretch")
    svg.download_button("Download SVG", data=functools.partial(figure_bytes, fig, "svg"),
                        file_name=f"{name}.svg", mime="image/svg+xml", on_click="ignore",
                        disabled=not ok, key=f"svg-{name}", width="stretch")
    csv.download_button("Download data (CSV)", data=data.to_csv(index=False).encode(),
                        file_name=f"{name}.csv", mime="text/csv", on_click="ignore",
                        key=f"csv-{name}", width="stretch")
    if not ok:
        st.caption("PNG/SVG files need Chromium for kaleido, which is not installed here; "
                   "the chart's camera button still saves a PNG.")


# --- the accuracy note ---------------------------------------------------------------

def accuracy_summary() -> str | None:
    """The opening paragraph and the summary section of docs/accuracy.md (the whole file
    when it has no summary heading), or None when the file is not there."""
    if not ACCURACY_DOC.is_file():
        return None
    lines = ACCURACY_DOC.read_text(encoding="utf-8", errors="replace").splitlines()
    start = next((i for i, line in enumerate(lines) if re.match(r"^#{1,6}\s.*summary", line, re.IGNORECASE)), None)
    if start is None:
        return "\n".join(lines)
    first_heading = next((i for i, line in enumerate(lines) if line.startswith("#")), start)
    intro = [line for line in lines[first_heading + 1:start] if not line.startswith("#")]
    level = len(lines[start]) - len(lines[start].lstrip("#"))
    end = next((j for j in range(start + 1, len(lines)) if re.match(rf"^#{{1,{level}}}\s", lines[j])), len(lines))
    return "\n".join(intro + lines[start + 1:end]).strip()
