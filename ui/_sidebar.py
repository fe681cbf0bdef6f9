"""The sidebar every page shares, and how every page begins (`start_page`).

The sidebar is a list of sections, SECTIONS, drawn in order; each draws the controls of
one part of the scenario (ui/_scenario.py holds their settings). A new part of the
scenario (PEFT, several devices) adds one section function here.
"""

from __future__ import annotations

import streamlit as st

import capacity as cap
from capacity import scenario as cap_scenario
from ui import _expander, _scenario as sc
from ui._format import both_text, gb_text, md

# --- the sections ---------------------------------------------------------------------


def model_section(s: dict) -> None:
    st.header("Scenario")
    _upload_box()
    choices = sc.PARAMS["model"].choices()
    if s["model"] not in choices:
        sc.set_scenario(model=sc.DEFAULTS["model"])
    uploaded = sc.model_label(sc.UPLOADED)          # named now: the label is fixed for this run
    sc.control(st.selectbox, "Model", "model", options=choices,
               format_func=lambda name: uploaded if name == sc.UPLOADED else name,
               help="A preset, or the config.json you uploaded (named by its own `_name_or_path`).")


def data_section(s: dict) -> None:
    sc.control(st.number_input, "Batch size" + (" (per device)" if sc.sharded() else ""), "batch", min_value=1,
               max_value=int(sc.PARAMS["batch"].high), step=1,
               help="Sequences per micro-batch (on each device, over several devices).")
    sc.control(st.number_input, "Context length (tokens per example)", "seq",
               min_value=1, max_value=int(sc.PARAMS["seq"].high), step=64)


def precision_section(s: dict) -> None:
    sc.control(st.selectbox, "Precision", "dtype", options=sc.PARAMS["dtype"].choices())
    sc.control(st.checkbox, "Mixed precision (fp32 master weights, gradients and optimizer states)",
               "mixed", disabled=s["dtype"] == "fp32", help="Needs a 16-bit precision.")
    sc.control(st.selectbox, "Attention implementation", "attn", options=sc.PARAMS["attn"].choices(),
               help="sdpa is what transformers runs unless told otherwise (`from_pretrained` without "
                    "`attn_implementation`); eager materialises the attention scores.")
    sc.control(st.selectbox, "Kernels modelled", "target", options=sc.PARAMS["target"].choices(),
               help="cuda: what CUDA's kernels keep (fused 1-byte dropout masks, fp32 LayerNorm statistics, "
                    "SDPA's kernels) and cuBLAS's workspaces, measured on an H100 (docs/gpu_table.md). "
                    "cpu: what the CPU kernels keep (the traces the model is checked against).")


def training_section(s: dict) -> None:
    st.subheader("Training")
    sc.control(st.selectbox, "Optimizer (BP)", "opt", options=sc.PARAMS["opt"].choices(),
               help="MeZO keeps no optimizer state.")
    sc.control(st.slider, "Checkpointing L'/L (layers that keep activations)", "keep",
               min_value=0.0, max_value=1.0, step=0.05,
               help="Used by the 'BP checkpointed' method; plain BP keeps every layer (L'/L = 1).")
    sc.control(st.selectbox, "Training loop", "loop", options=sc.PARAMS["loop"].choices(),
               format_func=_loop_label,
               help="plain: `out = model(...); out.loss.backward(); opt.step()`. trainer: what "
                    "transformers.Trainer does with its defaults.")
    loop_box = _expander.lazy("Loop settings", "open_loop_settings",
                              expanded=any(s[k] != sc.DEFAULTS[k] for k in ("opt_impl", "hold", "accum")))
    if not loop_box.open:
        return
    with loop_box:
        preset = cap_scenario.LOOPS[s["loop"]]
        sc.control(st.selectbox, "Optimizer implementation", "opt_impl", options=sc.PARAMS["opt_impl"].choices(),
                   format_func=lambda v: f"loop's ({_impl(preset, s)})" if v == sc.AUTO else v,
                   help="torch.optim's forloop (one tensor at a time), foreach (grouped kernels) or fused; "
                        "loop's: what the chosen loop uses.")
        sc.control(st.selectbox, "Model output during backward", "hold", options=sc.PARAMS["hold"].choices(),
                   format_func=lambda v: (f"loop's ({'held' if preset.hold_outputs else 'dropped'})"
                                          if v == sc.AUTO else v),
                   help="held: `out = model(...)` keeps the logits referenced through backward(); "
                        "dropped: only the loss is kept (transformers.Trainer).")
        sc.control(st.number_input, "Gradient accumulation (micro-batches per step)", "accum",
                   min_value=1, max_value=int(sc.PARAMS["accum"].high), step=1)


def budget_section(s: dict) -> None:
    st.subheader("Memory budget" + (" (per device)" if sc.sharded() else ""))
    sc.control(st.selectbox, "Device", "device", options=sc.PARAMS["device"].choices(), format_func=_device_label)
    dev = sc.device()
    if dev is None:
        sc.control(st.number_input, "Budget [GB = 10⁹ bytes]", "budget_gb", min_value=sc.PARAMS["budget_gb"].low,
                   max_value=sc.PARAMS["budget_gb"].high, step=1.0, format="%.2f")
    # The OS/runtime reserve: the device's own unless the user changes it.
    st.session_state["w_reserve_gb"] = sc.reserve_bytes() / cap.GB
    st.number_input("OS/runtime reserve [GB]", key="w_reserve_gb", min_value=0.0,
                    max_value=max(sc.memory_bytes() / cap.GB, 0.0), step=0.5, format="%.2f",
                    on_change=lambda: sc.store("reserve_gb", float(st.session_state["w_reserve_gb"])),
                    help=(f"Unified memory (CPU and GPU share it): what the OS and runtime keep. "
                          f"{dev.os_reserve_source}." if dev is not None and dev.os_reserve_source else
                          "Memory the OS or other programs keep on this device (0 for a discrete GPU)."))
    sc.control(st.checkbox, f"Reserve the CUDA context: {cap.format_bytes(cap.CUDA_CONTEXT_BYTES)}",
               "ctx", help="The calculator's peak counts live tensors only (torch.cuda.max_memory_allocated); "
                           "nvidia-smi also shows the CUDA context.")
    parts = [gb_text(sc.memory_bytes())]
    if sc.reserve_bytes():
        parts.append(f"{gb_text(sc.reserve_bytes())} OS reserve")
    if s["ctx"]:
        parts.append(f"{gb_text(cap.CUDA_CONTEXT_BYTES)} CUDA context")
    usable = both_text(sc.budget_bytes())
    st.caption(f"Budget: **{usable}** usable" + (f" ({' − '.join(parts)})" if len(parts) > 1 else "") + ".")


def devices_section(s: dict) -> None:
    """Data-parallel devices of the kind above, how the model is spread over them, and
    optimizer offload (capacity/sharding.py, docs/sharding.md)."""
    st.subheader("Devices")
    sc.control(st.number_input, "Devices (data-parallel, of the kind above)", "devices", min_value=1,
               max_value=int(sc.PARAMS["devices"].high), step=1,
               help="Each device runs its own micro-batch (the batch above is per device); every memory "
                    "figure is then one device's.")
    sc.control(st.selectbox, "Sharding", "sharding", options=sc.PARAMS["sharding"].choices(),
               format_func=lambda v: sc.SHARDING_CHOICES.get(v, v),
               help="ddp: torch's DistributedDataParallel, everything replicated. zero1: optimizer states "
                    "sharded (ZeroRedundancyOptimizer). zero2: and gradients (FSDP2 SHARD_GRAD_OP). fsdp: and "
                    "parameters (FSDP2 FULL_SHARD as accelerate wraps a causal LM). See docs/sharding.md.")
    offload_ok = s["sharding"] in sc.OFFLOAD_SHARDINGS
    sc.control(st.checkbox, "Offload the optimizer to the host", "offload",
               disabled=not offload_ok and not s["offload"],      # never locked on (a link may set it)
               help="FSDP2's CPUOffloadPolicy (zero2, fsdp): sharded parameters, gradients, optimizer "
                    "states and the optimizer step in host memory, reported separately.")
    n = int(s["devices"])
    problem = devices_problem(s)
    if problem:
        st.warning(problem)
    elif n == 1 and s["sharding"] != "none":
        st.info(f"One device with {sc.SHARDING_NAMES[s['sharding']]}: a one-rank group (the wrapper's own "
                "buffers on one device). Raise the device count to shard.")
    elif sc.sharded():
        st.caption(f"Every memory figure is **per device** ({md(sc.devices_text())}); the global batch is "
                   f"{n * int(s['batch']):,} sequences.")
    else:
        st.caption("One device: the figures are that device's.")


def devices_problem(s: dict) -> str | None:
    """The Devices section's settings that do not go together, in words (the pages then show
    capacity's refusal with a way out)."""
    if s["sharding"] == "none" and int(s["devices"]) > 1:
        return f"{int(s['devices']):,} devices need a sharding: pick DDP, ZeRO-1, ZeRO-2 or FSDP, or use 1 device."
    if s["offload"] and s["sharding"] not in sc.OFFLOAD_SHARDINGS:
        return ("Optimizer offload is modelled with FSDP2's CPUOffloadPolicy: pick ZeRO-2 or FSDP full shard, "
                "or turn offload off.")
    return None


def finetuning_section(s: dict) -> None:
    """What is trained (full, LoRA, prefix, top layers) and how the frozen base is stored;
    the defaults are peft's (LoraConfig), what a user's own code gets."""
    st.subheader("Fine-tuning")
    sc.control(st.selectbox, "What is trained", "peft", options=sc.PARAMS["peft"].choices(), format_func=_peft_label,
               help="Full: every parameter (BP's gradients and optimizer states for all). LoRA: low-rank adapters "
                    "(peft's LoraConfig) on a frozen base. Prefix: trainable key/value prefixes per layer (peft's "
                    "prefix tuning). Top layers: only the top K decoder layers train (an alternative reading of "
                    "L'/L, not the paper's definition). MeZO perturbs only what is trained.")
    st.button("QLoRA: LoRA on a 4-bit NF4 base", on_click=sc.set_scenario, kwargs=sc.QLORA, width="stretch",
              help="Dettmers et al. 2023: LoRA adapters on a bitsandbytes 4-bit NF4 base with double quantization.")
    if s["peft"] == "lora":
        left, right = st.columns(2)
        with left:
            sc.control(st.number_input, "LoRA rank r", "lora_r", min_value=1, max_value=int(sc.PARAMS["lora_r"].high),
                       step=1, help="peft's default: 8.")
        with right:
            sc.control(st.number_input, "LoRA alpha", "lora_alpha", min_value=sc.PARAMS["lora_alpha"].low,
                       max_value=sc.PARAMS["lora_alpha"].high, step=1.0, format="%g", help="peft's default: 8.")
        sc.control(st.number_input, "LoRA dropout", "lora_dropout", min_value=0.0,
                   max_value=sc.PARAMS["lora_dropout"].high, step=0.05, format="%.2f",
                   help="peft's default: 0. Above 0 each adapter keeps its dropped-out input for backward.")
        st.session_state["w_lora_targets"] = s["lora_targets"]
        st.text_input("Target modules", key="w_lora_targets", on_change=_store_targets,
                      placeholder="peft's default for the model type",
                      help="peft's target_modules: comma-separated module names (q_proj,v_proj; c_attn) or "
                           "all-linear. Empty: peft's default targets for the model type.")
        if st.session_state.get("targets_error"):
            st.error(md(st.session_state["targets_error"]))
    elif s["peft"] == "prefix":
        sc.control(st.number_input, "Virtual tokens", "prefix_tokens", min_value=1,
                   max_value=int(sc.PARAMS["prefix_tokens"].high), step=1,
                   help="peft's num_virtual_tokens: key/value prefixes per layer.")
    elif s["peft"] == "freeze":
        sc.control(st.number_input, "Trained layers (the top K)", "top_layers", min_value=1,
                   max_value=int(sc.PARAMS["top_layers"].high), step=1)
    sc.control(st.selectbox, "Base weights", "wbits", options=sc.PARAMS["wbits"].choices(), format_func=_bits_label,
               help="How the frozen base is stored: the precision above, or bitsandbytes' 8-bit (LLM.int8) or "
                    "4-bit (NF4/FP4) weights with their block statistics. Quantized weights cannot train: "
                    "use LoRA or a prefix on them.")
    if s["wbits"] == "4":
        sc.control(st.selectbox, "4-bit data type", "quant", options=sc.PARAMS["quant"].choices(), format_func=str.upper,
                   help="bnb_4bit_quant_type. NF4 is the QLoRA recipe's (and this app's default); transformers' "
                        "BitsAndBytesConfig defaults to FP4 when it is not set.")
        sc.control(st.checkbox, "Double quantization", "dquant",
                   help="Quantize the block statistics too (bnb_4bit_use_double_quant; off unless set).")
    try:
        pf, shape = sc.peft(), sc.model_shape()
        trained = cap.estimate(shape, sc.method_scenario("mezo", peft=pf)).trainable_params
        total = cap.estimate(shape, sc.method_scenario("inference", peft=pf)).params
        st.caption(f"Trains **{trained:,}** of {total:,} parameters ({100 * trained / total:.3g}%).")
    except (ValueError, ZeroDivisionError) as err:
        st.warning(md(str(err)))


# The sidebar, top to bottom. A new part of the scenario adds its section here.
SECTIONS = [model_section, data_section, precision_section, training_section, finetuning_section, budget_section,
            devices_section]


def _peft_label(method: str) -> str:
    return {"none": "every parameter (full)", "lora": "LoRA adapters", "prefix": "a prefix (prefix tuning)",
            "freeze": "the top layers only"}.get(method, method)


def _bits_label(bits: str) -> str:
    return {"16": "16-bit (the precision above)", "8": "8-bit (bitsandbytes LLM.int8)",
            "4": "4-bit (bitsandbytes NF4/FP4)"}.get(bits, bits)


def _store_targets() -> None:
    """The target modules typed in: kept when they read as peft's target_modules, else a
    message and the previous value."""
    try:
        sc.store("lora_targets", sc.parse_targets(st.session_state["w_lora_targets"]))
        st.session_state.pop("targets_error", None)
    except ValueError as err:
        st.session_state["targets_error"] = f"Target modules not changed: {err}."


def _loop_label(name: str) -> str:
    return {"plain": "plain (your own loop)", "trainer": "trainer (transformers.Trainer)"}.get(name, name)


def _impl(preset, s: dict) -> str:
    try:
        return cap_scenario.resolved_optimizer_impl(preset, s["opt"], s["target"])
    except (AttributeError, ValueError):
        return preset.optimizer_impl or "default"


def _device_label(name: str) -> str:
    if name == sc.CUSTOM:
        return sc.CUSTOM
    dev = cap.load_device(name)
    reserve = f", {gb_text(dev.os_reserve_bytes)} OS reserve" if dev.os_reserve_bytes else ""
    return f"{name} ({gb_text(dev.memory_bytes)}{reserve})"


def _upload_box() -> None:
    with st.expander("Upload a config.json", expanded=False):
        up = st.file_uploader("Hugging Face config.json", type=["json"], key="upload",
                              help="Read as data: no code runs. 1 MB at most.")
        if up is None or st.session_state.get("uploaded_id") == up.file_id:
            return
        data = up.getvalue()
        shape, name, error = sc.read_upload(up.name, data)
        if error:
            st.session_state["upload_error"] = f"Could not use the uploaded file {up.name}: {error}"
            st.session_state["uploaded_id"] = up.file_id     # reported once, not re-read each run
            return
        sc.use_upload(shape, name, data, up.file_id)


def sidebar() -> None:
    """The scenario controls every page shares."""
    s = sc.scenario()
    with st.sidebar:
        for section in SECTIONS:
            section(s)
        st.button("Reset to the paper's setting", on_click=sc.set_scenario, kwargs=sc.DEFAULTS, width="stretch")


# --- how every page begins --------------------------------------------------------------

def start_page(title: str, needs_estimate: bool = True) -> None:
    """The shared sidebar, the page's title, the messages about the link and the upload, and
    (needs_estimate) a message instead of the page when capacity cannot answer for the
    sidebar's scenario."""
    sidebar()
    st.title(title)
    st.markdown(f"**{md(sc.headline())}**")
    for key, text, problem in st.session_state.get("url_problems", []):
        st.warning(f"Link parameter ignored: {md(key)}={md(text)} ({md(problem)}).")
    if st.session_state.get("upload_error"):
        st.error(md(st.session_state["upload_error"]))
    s = sc.scenario()
    if s["model"] == sc.UPLOADED and sc.pack_config(st.session_state.get("uploaded_text", b"")) is None:
        st.caption("This uploaded config is too large to travel in a link; the link carries the other settings.")
    if needs_estimate:
        stop_if_refused()
        note = cap.context_note(sc.model_shape(), int(s["seq"]))
        if note:                             # RoPE beyond its trained length: answered, with a note
            st.info(f"Note: {md(note)}.")


def stop_if_refused() -> None:
    """A message, not an error page, when capacity refuses the scenario (a loop or a context
    it does not model): the sidebar stays usable."""
    why = sc.refusal()
    if why is not None:
        refuse(why)


def refuse(why: str) -> None:
    """capacity's refusal as a message, with a button that changes the setting it names
    where there is one; the page stops here."""
    st.warning(f"capacity cannot answer for these settings: {md(why)}.")
    s, limit = sc.scenario(), cap.longest_runnable_context(sc.model_shape())
    if limit is not None and s["seq"] > limit:
        st.button(f"Use a context of {limit:,} tokens (the model's last position)", on_click=sc.set_scenario,
                  kwargs={"seq": limit})
    elif sc.peft_fix(why):
        label, changes = sc.peft_fix(why)
        st.button(label, on_click=sc.set_scenario, kwargs=changes)
    elif why.startswith("loop"):
        st.button("Use the plain loop (modelled)", on_click=sc.set_scenario,
                  kwargs={"loop": "plain", "opt_impl": sc.AUTO, "hold": sc.AUTO, "accum": 1})
    elif why.startswith("sharding"):             # several devices without a sharding
        left, right = st.columns(2)
        left.button(f"Shard over {int(s['devices']):,} devices with FSDP full shard", on_click=sc.set_scenario,
                    kwargs={"sharding": "fsdp"})
        right.button("Use one device", on_click=sc.set_scenario, kwargs={"devices": 1})
    elif why.startswith("offload_optimizer"):
        left, right = st.columns(2)
        left.button("Turn optimizer offload off", on_click=sc.set_scenario, kwargs={"offload": False})
        right.button("Use FSDP full shard (offload modelled)", on_click=sc.set_scenario, kwargs={"sharding": "fsdp"})
    elif why.startswith("grad_accum"):           # not modelled over several devices yet
        left, right = st.columns(2)
        left.button("Use 1 micro-batch per step", on_click=sc.set_scenario, kwargs={"accum": 1})
        right.button("Use one device", on_click=sc.set_scenario,
                     kwargs={"devices": 1, "sharding": "none", "offload": False})
    elif limit is not None and s["seq"] > limit:
        st.button(f"Use a context of {limit:,} tokens (the model's last position)", on_click=sc.set_scenario,
                  kwargs={"seq": limit})
    else:
        st.info("Change the setting it names in the sidebar.")
    sc.write_url()                  # app.py's, after the page, does not reach the browser after st.stop()
    st.stop()
