"""The scenario every page shares: its settings, their link, the model and the budget.

The settings live in one dict, `st.session_state["scenario"]`, read once from the URL's
query parameters when a browser session starts and written back after every run (only
the settings that differ from their defaults), so a link reproduces what the user sees.
PARAMS describes every setting once: its default and its range or choices; a new part of
the scenario (a PEFT method, a number of devices) adds its settings here, a section to
the sidebar (ui/_sidebar.py) and its field in `method_scenario`.

An uploaded config.json travels in the link too, compressed (`config=`), so that a link to
an uploaded model opens that model.
"""

from __future__ import annotations

import base64
import json
import re
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import streamlit as st

import capacity as cap
from capacity import scenario as cap_scenario
from capacity import sharding as cap_sharding
from ui import _capacity
from ui._format import gb_text, params_text, plain, unit_choice_text

CUSTOM = "Custom budget"
UPLOADED = "uploaded"          # the `model` value when the model is an uploaded config.json
# A Hugging Face config.json is a few KB; the server also refuses uploads over 1 MB
# (.streamlit/config.toml, server.maxUploadSize).
UPLOAD_LIMIT_BYTES = 1_000_000
LINK_CONFIG_MAX_CHARS = 6000   # an upload travels in the link up to this size, compressed
AUTO = "auto"                  # a loop setting left to the loop preset


@dataclass(frozen=True)
class Param:
    """One setting: its default, and its range (numbers) or its choices (text)."""
    default: object
    low: float | None = None
    high: float | None = None
    choices: Callable[[], list] | None = None
    parse: Callable[[str], object] | None = None    # free text: its own reader (ValueError)


def _device_choices() -> list:
    return [CUSTOM] + cap.device_names()


def _model_choices() -> list:
    return cap.preset_names() + ([UPLOADED] if "uploaded_shape" in st.session_state else [])


# --- what is trained (issue 10): peft's LoraConfig defaults, what a user's own code gets -----

def parse_targets(text: str) -> str:
    """LoRA target modules as peft's target_modules: comma-separated module names
    (q_proj,v_proj; c_attn) or all-linear; empty for peft's default targets of the model type."""
    names = [t.strip() for t in text.split(",") if t.strip()]
    if len(names) > 32 or not all(re.fullmatch(r"[A-Za-z0-9_.\-]{1,64}", t) for t in names):
        raise ValueError("module names such as q_proj,v_proj or all-linear (letters, digits, _ . -)")
    return ",".join(names)


_PEFT = cap_scenario.Peft()               # capacity's defaults are peft's (LoraConfig: r 8, alpha 8, dropout 0)
PEFT_PARAMS: dict[str, Param] = {
    "peft": Param(_PEFT.method, choices=lambda: list(cap_scenario.PEFT_METHODS)),
    "lora_r": Param(_PEFT.lora_rank, 1, 1 << 16),
    "lora_alpha": Param(float(_PEFT.lora_alpha), 0.001, float(1 << 20)),
    "lora_dropout": Param(float(_PEFT.lora_dropout), 0.0, 0.99),
    "lora_targets": Param(",".join(_PEFT.lora_targets), parse=parse_targets),
    "prefix_tokens": Param(_PEFT.prefix_tokens, 1, 1 << 16),
    "top_layers": Param(_PEFT.trainable_layers, 1, 1 << 24),
    "wbits": Param(str(_PEFT.weights_bits), choices=lambda: [str(b) for b in cap_scenario.WEIGHT_BITS]),
    "quant": Param(_PEFT.quant, choices=lambda: list(cap_scenario.QUANT_TYPES)),
    "dquant": Param(_PEFT.double_quant),
}
# QLoRA as Dettmers et al. 2023 run it (and capacity.inverse.VARIANTS): LoRA on a 4-bit NF4
# base with double quantization.
QLORA = {"peft": "lora", "wbits": "4", "quant": "nf4", "dquant": True}


# The default scenario is the paper's experiment (Katti et al. 2025, arXiv 2511.11362):
# batch 8, MeZO on Llama-2-7B against BP on GPT2-medium, about 17 GB of memory.
PARAMS: dict[str, Param] = {
    # the model
    "model": Param("llama-2-7b", choices=_model_choices),      # the calculator's and the figures'
    "bp_model": Param("gpt2-medium", choices=cap.preset_names),  # the paper's small BP model
    "family": Param("Llama-2", choices=lambda: list(_capacity.families())),
    "dn_models": Param("family", choices=lambda: ["family", "largest"]),   # What fits' devices-needed rows
    # the data
    "batch": Param(8, 1, 4096),
    "seq": Param(512, 1, 1 << 20),              # tokens per example; BoolQ examples fit in 512
    # precision and kernels
    "dtype": Param("bf16", choices=lambda: list(cap.DTYPES)),
    "mixed": Param(False),
    "attn": Param(cap.Scenario().attention, choices=lambda: list(cap.ATTENTIONS)),
    "target": Param("cuda", choices=lambda: list(cap.TARGETS)),
    # training
    "opt": Param("adamw", choices=lambda: list(cap.OPTIMIZERS)),
    "keep": Param(0.25, 0.0, 1.0),              # L'/L of the checkpointed BP column
    "loop": Param(cap_scenario.DEFAULT_LOOP, choices=lambda: list(cap_scenario.LOOPS)),
    "opt_impl": Param(AUTO, choices=lambda: [AUTO, *cap_scenario.OPTIMIZER_IMPLS]),
    "hold": Param(AUTO, choices=lambda: [AUTO, "held", "dropped"]),
    "accum": Param(1, 1, 4096),
    # the memory budget
    "device": Param(CUSTOM, choices=_device_choices),
    "budget_gb": Param(17.0, 0.1, 10_000.0),
    "reserve_gb": Param(-1.0, -1.0, 10_000.0),  # -1: the device's own OS/runtime reserve
    "ctx": Param(False),                        # count the CUDA context against the budget
    # several devices (capacity/sharding.py): every memory figure is then one device's
    "devices": Param(1, 1, cap_scenario.MAX_DEVICES),
    "sharding": Param("none", choices=lambda: list(cap.SHARDINGS)),
    "offload": Param(False),                    # optimizer offload to the host (zero2, fsdp)
    # the time page
    "time_device": Param("A100 80GB", choices=cap.device_names),   # throughput with a custom budget
    "steps": Param(1000, 1, 10**9),             # BP-equivalent steps
    "mult": Param(float(cap.MEZO_STEPS_MULTIPLIER), 1.0, 10_000.0),
    "eff": Param(1.0, 0.01, 1.0),               # share of peak throughput reached
    # the calculator's tables: GB and MB (decimal) or GiB and MiB (binary)
    "units": Param("decimal", choices=lambda: ["decimal", "binary"]),
    # the memory figure
    "ctx_max": Param(8192, 128, 1 << 20),       # longest context shown
    "log": Param(True),                         # logarithmic axes (memory and context)
    # the Validate page
    "v_method": Param("mezo", choices=lambda: list(VALIDATE_METHODS)),
    "v_device": Param("auto", choices=lambda: list(VALIDATE_DEVICES)),
    "v_steps": Param(3, 2, 100),
    "v_limit": Param(300, 10, 3600),            # seconds
    "v_mem_gb": Param(-1.0, -1.0, 100_000.0),   # host memory cap of a run; -1: 3/4 of what is free at launch
}
PARAMS.update(PEFT_PARAMS)
DEFAULTS = {key: p.default for key, p in PARAMS.items()}

# What "Load the paper's setting" restores (the rest of the scenario stays as it is).
PAPER_SETTING = {key: DEFAULTS[key] for key in (
    "model", "bp_model", "family", "batch", "seq", "dtype", "mixed", "opt", "device", "budget_gb", "reserve_gb",
    "ctx")}

# The Validate page's methods: the engine's, with BP plain (L'/L = 1) or checkpointed at
# the sidebar's L'/L, like the calculator's columns.
VALIDATE_METHODS = {"mezo": ("mezo", False), "bp": ("bp", False), "bp checkpointed": ("bp", True),
                    "inference": ("inference", False)}
VALIDATE_DEVICES = ("auto", "cuda", "cpu", "trace")

# Changing one setting resets others to their defaults (a new device brings its own reserve).
RESETS = {"device": ("reserve_gb",)}


# --- the session's scenario and its link ------------------------------------------------

def parse_param(key: str, text: str):
    """One query parameter as a typed value; ValueError when it is not acceptable."""
    p = PARAMS[key]
    if p.parse is not None:
        return p.parse(text)
    if isinstance(p.default, bool):
        if text.lower() not in ("1", "0", "true", "false"):
            raise ValueError("expected 1 or 0")
        return text.lower() in ("1", "true")
    if isinstance(p.default, (int, float)):
        try:
            value = float(text) if isinstance(p.default, float) else int(text)
        except ValueError:
            raise ValueError("not a number") from None
        if not p.low <= value <= p.high:
            raise ValueError(f"must be between {p.low:g} and {p.high:g}")
        return value
    choices = p.choices()
    if text not in choices:
        raise ValueError("must be one of " + ", ".join(choices[:8]) + ("…" if len(choices) > 8 else ""))
    return text


def scenario() -> dict:
    """The session's scenario, read once from the URL when the session starts."""
    if "scenario" not in st.session_state:
        # In the session first: a link's config makes itself the model through set_scenario.
        st.session_state["scenario"] = values = dict(DEFAULTS)
        problems = []
        params = st.query_params.to_dict()
        if "config" in params:
            problem = _read_link_config(params["config"])
            if problem:
                problems.append(("config", params["config"][:40], problem))
        for key, text in params.items():
            if key not in PARAMS:
                continue
            try:
                values[key] = parse_param(key, text)
            except ValueError as err:
                problems.append((key, text, f"{err}; using {DEFAULTS[key]!r}"))
        st.session_state["url_problems"] = problems
    return st.session_state["scenario"]


def url_params(values: dict, uploaded_text: bytes | None = None) -> dict:
    """The query parameters of a scenario: the keys that differ from the defaults, and an
    uploaded model's config (uploaded_text) when it is the model."""
    params = {}
    for key, value in values.items():
        if key not in PARAMS or value == DEFAULTS[key]:
            continue
        params[key] = ("1" if value else "0") if isinstance(value, bool) else str(value)
    if values.get("model") == UPLOADED and uploaded_text:
        packed = pack_config(uploaded_text)
        if packed is not None:
            params["config"] = packed
    return params


def write_url() -> None:
    """Mirror the scenario into the URL. Sent on every run, not only on a change: a run
    that ends in st.rerun() loses its messages, and the server's copy of the URL would
    already match."""
    st.query_params.from_dict(url_params(scenario(), st.session_state.get("uploaded_text")))


def control(widget, label: str, key: str, **kwargs):
    """A widget bound to scenario[key]: keeps its value across pages and in the URL.

    Streamlit forgets a widget's value when another page draws a widget with the same key,
    so the scenario is the one copy: the widget starts from it on every run, and its
    on_change callback (run before the script) writes the user's choice back.
    """
    wkey = f"w_{key}"
    st.session_state[wkey] = scenario()[key]
    widget(label, key=wkey, on_change=store, args=(key,), **kwargs)
    return scenario()[key]


def binary_units(unit: str = "GB") -> bool:
    """The units control of a page's tables (the scenario's `units`, so in the link too):
    True for the binary unit (GiB, or MiB beside MB), False for the decimal one."""
    choice = control(st.segmented_control, "Units of the tables", "units", options=PARAMS["units"].choices(),
                     format_func=lambda v: unit_choice_text(unit, v == "binary"), required=True,
                     help="GB = 10⁹ bytes, GiB = 2³⁰ bytes (MB = 10⁶, MiB = 2²⁰ for small models).")
    return choice == "binary"


def store(key: str, value=None) -> None:
    """Write a widget's value (or `value`) into the scenario, resetting what depends on it."""
    s = scenario()
    new = st.session_state[f"w_{key}"] if value is None else value
    if new != s[key]:
        for other in RESETS.get(key, ()):
            s[other] = DEFAULTS[other]
    s[key] = new


def set_scenario(**values) -> None:
    """Change scenario keys (e.g. from a button's callback); the widgets follow on the next run."""
    scenario().update(values)


# --- the model --------------------------------------------------------------------------

def model_shape(name: str | None = None):
    """The shape of the scenario's model (or of a named preset)."""
    name = name or scenario()["model"]
    if name == UPLOADED:
        return st.session_state["uploaded_shape"]
    return _preset(name)


_PRESETS: dict = {}


def _preset(name: str):
    if name not in _PRESETS:
        _PRESETS[name] = _capacity.preset(name)
    return _PRESETS[name]


def preset_params(name: str) -> int:
    return cap.parameter_count(_preset(name))


def model_label(name: str) -> str:
    """A model as the pages name it: a preset's name, or an upload's own name."""
    if name == UPLOADED:
        return st.session_state.get("uploaded_name", "uploaded config")
    return name


def model_name() -> str:
    return model_label(scenario()["model"])


def read_upload(file_name: str, data: bytes):
    """(shape, display name, None) or (None, None, a message saying what to change).

    The display name is the config's own (`_name_or_path`) when it has one, else the file's
    name, with the model type and size: 'meta-llama/Llama-2-7b-hf (llama, 6.74 B)'."""
    if len(data) > UPLOAD_LIMIT_BYTES:
        return None, None, (f"the file is {len(data):,} bytes; a model's config.json is a few KB "
                            f"(limit {UPLOAD_LIMIT_BYTES:,} bytes). Upload the model's config.json.")
    try:
        own = json.loads(data).get("_name_or_path")
    except (ValueError, AttributeError, RecursionError):
        own = None
    base = plain(own) if isinstance(own, str) and own.strip() else plain(Path(file_name).stem or "config")
    try:
        shape = cap.parse_hf_config_text(data, name=base)
        size = params_text(cap.parameter_count(shape))
    except (ValueError, TypeError, OverflowError, RecursionError) as err:
        return None, None, (f"could not read it ({err}). Upload a Hugging Face config.json of a "
                            f"supported model type ({', '.join(cap.MODEL_TYPES)}) with valid sizes.")
    return shape, f"{base} ({plain(shape.model_type, 24)}, {size})", None


def use_upload(shape, name: str, data: bytes, upload_id=None) -> None:
    """Make an uploaded (or linked) config the scenario's model."""
    st.session_state.update(uploaded_shape=shape, uploaded_name=name, uploaded_text=data, uploaded_id=upload_id)
    st.session_state.pop("upload_error", None)
    set_scenario(model=UPLOADED)


def pack_config(data: bytes) -> str | None:
    """An uploaded config for the link: minified JSON, zlib, URL-safe base64; None when it
    is too large to travel in a link."""
    try:
        text = json.dumps(json.loads(data), separators=(",", ":"), ensure_ascii=False).encode()
    except (ValueError, RecursionError):
        return None
    packed = base64.urlsafe_b64encode(zlib.compress(text, 9)).decode().rstrip("=")
    return packed if len(packed) <= LINK_CONFIG_MAX_CHARS else None


def unpack_config(packed: str) -> bytes:
    """The config bytes of a link's `config=`; ValueError when it is not one (at most
    UPLOAD_LIMIT_BYTES are ever inflated)."""
    if len(packed) > LINK_CONFIG_MAX_CHARS:
        raise ValueError(f"longer than {LINK_CONFIG_MAX_CHARS} characters")
    try:
        raw = base64.urlsafe_b64decode(packed + "=" * (-len(packed) % 4))
        inflater = zlib.decompressobj()
        data = inflater.decompress(raw, UPLOAD_LIMIT_BYTES + 1)
    except (ValueError, zlib.error):
        raise ValueError("not a config packed by this app") from None
    if len(data) > UPLOAD_LIMIT_BYTES or inflater.unconsumed_tail:
        raise ValueError(f"unpacks to more than {UPLOAD_LIMIT_BYTES:,} bytes")
    return data


def _read_link_config(packed: str) -> str | None:
    """Take a link's config as the uploaded model; a problem's text, or None."""
    try:
        data = unpack_config(packed)
    except ValueError as err:
        return str(err)
    shape, name, error = read_upload("link", data)
    if error:
        return error
    use_upload(shape, name, data)
    return None


# --- the steps the pages compare ---------------------------------------------------------

def loop():
    """The training loop of the sidebar: a named preset with the user's overrides."""
    s = scenario()
    return cap_scenario.loop_preset(
        s["loop"], optimizer_impl=None if s["opt_impl"] == AUTO else s["opt_impl"],
        hold_outputs=None if s["hold"] == AUTO else s["hold"] == "held", grad_accum=int(s["accum"]))


def method_scenario(method: str, keep: float = 1.0, **changes) -> "cap.Scenario":
    """A capacity.Scenario from the sidebar's settings; ValueError when they conflict."""
    s = scenario()
    fields = dict(method=method, optimizer=s["opt"], batch=int(s["batch"]), seq=int(s["seq"]),
                  dtype=s["dtype"], mixed_precision=bool(s["mixed"]) and s["dtype"] != "fp32",
                  keep=float(keep), attention=s["attn"], target=s["target"], loop=loop(), parallel=parallel())
    fields.setdefault("peft", peft())
    fields.update(changes)
    return cap.Scenario(**fields)


def methods() -> list[tuple[str, "cap.Scenario"]]:
    """The four columns the pages compare, labelled; ValueError when the sidebar's settings
    are not a valid scenario."""
    keep = float(scenario()["keep"])
    mezo, bp = method_label("mezo"), method_label("bp")
    return [
        ("Inference", method_scenario("inference")),
        (mezo, method_scenario("mezo")),
        (bp, method_scenario("bp")),
        (f"{bp} checkpointed (L'/L={keep:g})", method_scenario("bp", keep=keep)),
    ]


def refusal() -> str | None:
    """Why capacity cannot answer for the sidebar's scenario (a setting not modelled yet, a
    context beyond the model's positions), or None when it can."""
    if budget_bytes() <= 0:
        return "the OS/runtime reserve and the CUDA context leave no memory for the model"
    try:
        shape = model_shape()
        for _, sc in methods():
            _capacity.estimate(shape, sc)
    except ValueError as err:
        return str(err)
    return None


def loop_text() -> str:
    """'plain loop (foreach AdamW, output held, 1 micro-batch per step)'."""
    lp, s = loop(), scenario()
    try:
        impl = cap_scenario.resolved_optimizer_impl(lp, s["opt"], s["target"])
    except (AttributeError, ValueError):
        impl = lp.optimizer_impl or "default"
    steps = "1 micro-batch" if lp.grad_accum == 1 else f"{lp.grad_accum} micro-batches"
    return (f"{lp.name} loop ({impl} {s['opt']}, output {'held' if lp.hold_outputs else 'dropped'} "
            f"through backward, {steps} per step)")


# --- several devices ---------------------------------------------------------------------

# How the pages name a sharding: in the sidebar's list, and in titles and captions.
SHARDING_CHOICES = {
    "none": "none (one device)",
    "ddp": "DDP (replicated)",
    "zero1": "ZeRO-1 (optimizer states sharded)",
    "zero2": "ZeRO-2 / FSDP SHARD_GRAD_OP (and gradients)",
    "fsdp": "FSDP full shard / ZeRO-3 (and parameters)",
}
SHARDING_NAMES = {"none": "no sharding", "ddp": "DDP", "zero1": "ZeRO-1", "zero2": "ZeRO-2 (FSDP SHARD_GRAD_OP)",
                  "fsdp": "FSDP full shard"}
OFFLOAD_SHARDINGS = ("zero2", "fsdp")        # FSDP2's CPUOffloadPolicy: what capacity models
HOST_TERMS = cap_sharding.HOST_TERMS          # what optimizer offload keeps on the host


def parallel() -> "cap.Parallel":
    """The sidebar's devices and sharding; ValueError (capacity's message) for a combination
    it refuses, e.g. several devices without a sharding."""
    s = scenario()
    return cap.Parallel(devices=int(s["devices"]), sharding=s["sharding"], offload_optimizer=bool(s["offload"]))


def terms() -> tuple:
    """The memory terms the pages show: one device's, or with the sharded run's own
    (gathered weights, collective buffers, gradient buckets) when there are several."""
    return cap_sharding.TERMS if sharded() else cap.TERMS


def sharded() -> bool:
    """Whether the figures are one device's of a sharded (or data-parallel) run."""
    s = scenario()
    return s["sharding"] != "none" or int(s["devices"]) > 1 or bool(s["offload"])


def devices_text(with_offload: bool = True) -> str:
    """'8 × A100 80GB, FSDP full shard, optimizer offloaded to the host', or '' for one
    device without sharding."""
    if not sharded():
        return ""
    s, dev = scenario(), device()
    n = int(s["devices"])
    kind = f"{n:,} × {dev.name}" if dev else f"{n:,} device{'s' if n > 1 else ''} of {gb_text(memory_bytes())}"
    text = f"{kind}, {SHARDING_NAMES.get(s['sharding'], s['sharding'])}"
    return text + (", optimizer offloaded to the host" if s["offload"] and with_offload else "")


def per_device(text: str = "", with_offload: bool = True) -> str:
    """'per device (8 × A100 80GB, FSDP full shard)' appended to text when the run is
    sharded; text unchanged on one device (or a combination capacity refuses)."""
    if not sharded():
        return text
    try:
        parallel()
    except ValueError:              # a combination capacity refuses: the page says so instead
        return text
    return f"{text} per device ({devices_text(with_offload)})".strip()


# --- the memory budget --------------------------------------------------------------------

def device():
    """The sidebar's device preset, or None for a custom budget."""
    name = scenario()["device"]
    return None if name == CUSTOM else cap.load_device(name)


def memory_bytes() -> int:
    """The device's memory, or the custom budget."""
    dev = device()
    return dev.memory_bytes if dev else int(scenario()["budget_gb"] * cap.GB)


def reserve_bytes() -> int:
    """The OS/runtime reserve: the device's own (unified memory: Jetson, Apple, phones),
    unless the user changed it."""
    s, dev = scenario(), device()
    if s["reserve_gb"] >= 0:
        return int(s["reserve_gb"] * cap.GB)
    return dev.os_reserve_bytes if dev else 0


def budget_bytes() -> int:
    """The usable budget: the memory less the OS/runtime reserve, less the CUDA context
    when the user reserves it."""
    ctx = cap.CUDA_CONTEXT_BYTES if scenario()["ctx"] else 0
    return memory_bytes() - reserve_bytes() - ctx


def budget_label() -> str:
    """'6.00 GB usable on Jetson Orin Nano 8GB' or '17.00 GB (custom budget)'; '… per
    device' over several devices."""
    dev = device()
    each = " per device" if sharded() else ""
    return f"{gb_text(budget_bytes())}{each} " + (f"usable on {dev.name}" if dev else "(custom budget)")


def summary(with_model: bool = True, with_context: bool = True) -> str:
    """The whole scenario in one line, for captions and figure titles (plain text; a
    figure that sweeps the context leaves it out)."""
    s = scenario()
    parts = [model_name()] if with_model else []
    parts.append(f"batch {s['batch']}")
    if with_context:
        parts.append(f"context {s['seq']:,}")
    parts += [f"{s['dtype']}{' mixed precision' if s['mixed'] and s['dtype'] != 'fp32' else ''}",
              f"{s['opt']} (BP)", peft_text(), f"{s['attn']} attention", loop_text(), f"{s['target']} kernels",
              f"budget {budget_label()}"]
    if sharded():
        parts.insert(1 if with_model else 0, f"per device, {devices_text()}")
        parts[parts.index(f"batch {s['batch']}")] = f"batch {s['batch']} per device"
    return " · ".join(parts)


# --- what is trained ------------------------------------------------------------------

def peft() -> "cap_scenario.Peft":
    """capacity's Peft from the sidebar's Fine-tuning section; ValueError when a value is out
    of range (capacity.scenario.validate_peft says which)."""
    s = scenario()
    alpha = float(s["lora_alpha"])
    return cap_scenario.Peft(
        method=s["peft"], lora_rank=int(s["lora_r"]), lora_alpha=int(alpha) if alpha.is_integer() else alpha,
        lora_dropout=float(s["lora_dropout"]),
        lora_targets=tuple(t for t in s["lora_targets"].split(",") if t),
        prefix_tokens=int(s["prefix_tokens"]), trainable_layers=int(s["top_layers"]),
        weights_bits=int(s["wbits"]), quant=s["quant"], double_quant=bool(s["dquant"]))


def is_qlora(pf) -> bool:
    return pf.method == "lora" and pf.weights_bits == 4 and pf.quant == "nf4"


def base_text(pf) -> str:
    """'a 4-bit NF4 base (double quantization)', 'an 8-bit base', '' for a 16-bit base."""
    if pf.weights_bits == 8:
        return "an 8-bit base (LLM.int8)"
    if pf.weights_bits == 4:
        return f"a 4-bit {pf.quant.upper()} base" + (" (double quantization)" if pf.double_quant else "")
    return ""


def variant_text(pf) -> str:
    """What is trained, short: 'LoRA r=8', 'prefix (20 tokens)', 'top 2 layers', 'every parameter'."""
    return {"none": "every parameter", "lora": f"LoRA r={pf.lora_rank}",
            "prefix": f"prefix ({pf.prefix_tokens} tokens)",
            "freeze": f"top {pf.trainable_layers} layer{'s' if pf.trainable_layers != 1 else ''}"}[pf.method]


def _peft_or_none():
    try:
        return peft()
    except ValueError:
        return None


def method_label(method: str) -> str:
    """A method with what it trains, for column labels: 'MeZO', 'BP', 'MeZO-LoRA r=8',
    'BP-LoRA r=8 (QLoRA)', 'MeZO-prefix (20 tokens)', 'BP-top 2 layers'."""
    name = {"mezo": "MeZO", "bp": "BP"}.get(method, method)
    pf = _peft_or_none()
    if pf is None or pf.method == "none":
        return name
    return f"{name}-{variant_text(pf)}" + (" (QLoRA)" if method == "bp" and is_qlora(pf) else "")


def peft_text() -> str:
    """The whole PEFT variant in words, for headlines, captions and figure titles:
    'LoRA r=8 alpha=8 on a 4-bit NF4 base (double quantization)', 'full fine-tuning
    (every parameter)'."""
    pf = _peft_or_none()
    if pf is None:
        return "fine-tuning settings not valid"
    what = {"none": "full fine-tuning (every parameter)",
            "lora": f"LoRA r={pf.lora_rank} alpha={pf.lora_alpha:g}"
                    + (f" dropout={pf.lora_dropout:g}" if pf.lora_dropout else "")
                    + f" on {','.join(pf.lora_targets) or 'peft default targets'}",
            "prefix": f"prefix tuning ({pf.prefix_tokens} virtual tokens)",
            "freeze": f"the top {pf.trainable_layers} layer{'s' if pf.trainable_layers != 1 else ''} only"}[pf.method]
    base = base_text(pf)
    return what + (f" on {base}" if base else "")


def headline() -> str:
    """Each page's headline: the methods compared, with their PEFT variant,
    e.g. 'MeZO-LoRA r=8 vs BP-LoRA r=8 (QLoRA), on a 4-bit NF4 base (double quantization)'."""
    pf = _peft_or_none()
    pair = f"{method_label('mezo')} vs {method_label('bp')}"
    if pf is None or (pf.method == "none" and pf.weights_bits == 16):
        return f"{pair}: full fine-tuning (every parameter)"
    base = base_text(pf)
    s = scenario()
    plain = "an fp32 base (mixed precision)" if s["mixed"] and s["dtype"] != "fp32" else "a 16-bit base"
    return pair + f", on {base or plain}"


def peft_label_suffix() -> str:
    """' (LoRA r=8 on a 4-bit NF4 base)' for a run's label; '' for full fine-tuning."""
    pf = _peft_or_none()
    if pf is None or (pf.method == "none" and pf.weights_bits == 16):
        return ""
    return f" ({peft_text()})"


def peft_cli_args() -> list[str]:
    """The Fine-tuning section as the command line's flags (capacity/peft_args.py), for the
    validation engine; none when every parameter is trained on a 16-bit base."""
    pf = peft()
    if pf.method == "none" and pf.weights_bits == 16:
        return []
    args = ["--peft", pf.method, "--weights-bits", str(pf.weights_bits)]
    if pf.method == "lora":
        args += ["--lora-rank", str(pf.lora_rank), "--lora-alpha", f"{pf.lora_alpha:g}",
                 "--lora-dropout", f"{pf.lora_dropout:g}"]
        if pf.lora_targets:
            args += ["--lora-targets", ",".join(pf.lora_targets)]
    elif pf.method == "prefix":
        args += ["--prefix-tokens", str(pf.prefix_tokens)]
    elif pf.method == "freeze":
        args += ["--trainable-layers", str(pf.trainable_layers)]
    if pf.weights_bits == 4:
        args += ["--quant", pf.quant] + (["--double-quant"] if pf.double_quant else [])
    return args


# A refusal of a PEFT setting (words of capacity's message) and the change that answers it.
PEFT_FIXES = [
    ("with a PEFT method under autocast", "Use L'/L = 1 (no checkpointing)", {"keep": 1.0}),
    ("LoRA dropout under autocast", "Set LoRA dropout to 0 (peft's default)", {"lora_dropout": 0.0}),
    ("prefix tuning under autocast", "Turn mixed precision off", {"mixed": False}),
    ("under autocast (mixed precision over an fp32 model) is modelled on one device", "Turn mixed precision off",
     {"mixed": False}),
    ("peft: mixed precision", "Turn mixed precision off", {"mixed": False}),
    ("prefix tuning with mixed precision under FSDP", "Turn mixed precision off", {"mixed": False}),
    # over several devices LoRA and prefix tuning over a 16-bit base are modelled
    # (capacity/trainable.py: check_peft_sharded); a quantized base and top layers are not
    ("a quantized base (QLoRA, 8-bit) over several devices", "Use a 16-bit base (LoRA over several devices is "
     "modelled)", {"wbits": "16"}),
    ("over several devices (--devices", "Train LoRA adapters (modelled over several devices)", {"peft": "lora"}),
    ("prefix tuning with checkpointing", "Use L'/L = 1 (no checkpointing)", {"keep": 1.0}),
    ("quantized base weights are frozen", "Train LoRA adapters on this base", {"peft": "lora"}),
    ("computes in a 16-bit dtype", "Use bf16", {"dtype": "bf16"}),
    ("trainable_layers:", "Train the top layer only", {"top_layers": 1}),
    ("no default target modules", "Target every linear (all-linear)", {"lora_targets": "all-linear"}),
    ("lora_targets:", "Use peft's default targets", {"lora_targets": ""}),
]


def peft_fix(why: str):
    """(button label, changes) answering a refusal of the Fine-tuning settings, or None."""
    for words, label, changes in PEFT_FIXES:
        if words in why:
            return label, changes
    return None
