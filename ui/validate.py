"""Validate: a short real fine-tune by the validation engine, measured against the prediction.

The engine runs in a child process (ui/_runner.py); this page launches it, shows its live
stage, lets the user cancel it, and keeps the runs in a history on this machine
(ui/_runs.py), so that a reload does not lose them.
"""

import json

import pandas as pd
import streamlit as st

from ui import _export, _format as fmt, _runner, _runs, _scenario as sc, _sidebar

PROGRESS_REFRESH_S = 1.0        # the live stage: once a second is enough for a person, and cheap

_sidebar.start_page("Validate on this machine", needs_estimate=False)
st.caption("A few real steps of BP or MeZO with the sidebar's model and settings: the engine measures the "
           "peak memory and sets it beside capacity's prediction, term by term. 'trace' runs the same "
           "steps on fake tensors (any model size, no memory used); 'cpu' and 'cuda' use real memory.")

run = st.session_state.get("validate_run")
if run is not None and not run.running and not run.recorded:
    entry = _runs.history_entry(run, st.session_state.get("validate_device", "?"))
    if not _runs.save_run(entry):                    # a read-only home: shown, not kept
        st.session_state.setdefault("unsaved_runs", []).append(entry)
    run.recorded = True
history = _runs.load_history() + st.session_state.get("unsaved_runs", [])

available, engine_text = _runs.engine_available()
if not available:
    st.warning(f"The validation engine is not available in this installation ({fmt.md(engine_text)}). "
               "The calculator pages work without it; `python -m capacity validate --help` tells what is missing.")

method_col, device_col, steps_col, limit_col = st.columns(4)
method = sc.control(method_col.selectbox, "Method", "v_method", options=list(sc.VALIDATE_METHODS))
device = sc.control(device_col.selectbox, "Device", "v_device", options=list(sc.VALIDATE_DEVICES),
                    help="auto: the GPU when torch sees one, else the CPU, else trace when the run would not fit in RAM.")
steps = sc.control(steps_col.number_input, "Steps", "v_steps", min_value=2, max_value=int(sc.PARAMS["v_steps"].high))
limit = sc.control(limit_col.number_input, "Time limit [s]", "v_limit", min_value=10,
                   max_value=int(sc.PARAMS["v_limit"].high), step=30)
if device == "auto":
    st.caption(f"auto will run on {fmt.md(_runs.auto_choice(method))}.")
memory_cap = _runs.memory_cap_bytes() if _runs.cap_applies(device) else None
if _runs.cap_applies(device):
    st.session_state["w_v_mem_gb"] = round((memory_cap or 0) / 1e9, 2)
    mem_col, note_col = st.columns([1, 3])
    mem_col.number_input("Host memory limit [GB]", key="w_v_mem_gb", min_value=0.5, max_value=100_000.0, step=1.0,
                         format="%.2f", on_change=lambda: sc.store("v_mem_gb", float(st.session_state["w_v_mem_gb"])),
                         help="The run's process cannot take more (RLIMIT_DATA, `validate --max-memory`): past it "
                              "the run is out of memory, not this machine. By default 3/4 of the memory available.")
    note_col.caption("The run is capped at " + (fmt.md(fmt.both_text(memory_cap)) if memory_cap else "nothing (unknown)")
                     + (" (3/4 of the memory available now)" if sc.scenario()["v_mem_gb"] < 0 else "")
                     + ": past it the run ends out of memory, the machine keeps the rest.")
else:
    st.caption("A run that may use the GPU is not capped on the host (CUDA's mappings would count).")
st.caption(fmt.md(sc.summary(), fmt.SUMMARY_CHARS))
if sc.sharded():
    s = sc.scenario()
    st.info(f"A run here is one process on one device: the sidebar's devices ({fmt.md(sc.devices_text())}) are "
            f"not run. `python -m capacity validate --devices {int(s['devices'])} --sharding {s['sharding']}` "
            "traces rank 0 of that run with PyTorch's own FSDP/DDP under fake tensors.")

busy = run is not None and run.running
if st.button("Run", type="primary", disabled=busy or not available):
    try:
        args, cleanup = _runs.engine_args(method, device, int(steps))
        st.session_state["validate_run"] = run = _runner.EngineRun(
            args, float(limit), label=f"{method}{_runs.keep_label(method)}{sc.peft_label_suffix()} · {sc.model_name()} · {device}",
            cleanup=cleanup, max_memory_bytes=memory_cap)
        st.session_state["validate_device"] = device
        busy = True
    except (OSError, ValueError) as err:
        st.error(f"Could not start the engine: {fmt.md(err)}")


def clear_history() -> None:
    _runs.clear_history()
    st.session_state.pop("unsaved_runs", None)


@st.fragment(run_every=PROGRESS_REFRESH_S)
def live_progress() -> None:
    current = st.session_state.get("validate_run")
    if current is None:
        return
    if not current.running:
        st.rerun()                   # the whole page: the result and the history
    fraction, doing = _runs.stage(current, _runs.startup_seconds(history))
    st.progress(fraction, text=f"{fmt.md(current.label)}: {fmt.md(doing)}")
    st.button("Cancel", on_click=current.cancel)


if busy:
    live_progress()

# The latest finished run.
latest = history[-1] if history else None
if latest and not busy:
    st.subheader(f"Latest run: {fmt.md(latest['run'])}")
    result = latest.get("result") if isinstance(latest.get("result"), dict) else None
    if latest["status"] != "done":
        st.error(fmt.md(_runs.status_text(latest)))
        if latest.get("stderr"):
            with st.expander("The engine's messages"):
                st.code(latest["stderr"], language=None)
    if result and "measured_peak_bytes" in result:
        measured, predicted = result.get("measured_peak_bytes"), result.get("predicted_peak_bytes")
        unit = fmt.unit_for(max((n for n in (measured, predicted) if isinstance(n, (int, float))), default=None))
        binary = fmt.UNITS[unit][1]
        m1, m2, m3, m4 = st.columns(4)
        m1.metric("Measured peak", fmt.size_text(measured, unit), help=fmt.binary_text(measured, unit))
        m2.metric("Predicted peak", fmt.size_text(predicted, unit), help=fmt.binary_text(predicted, unit))
        m3.metric("Error", fmt.pct_text(result.get("error_pct")),
                  help="100·(predicted − measured) / measured, as the engine reports it.")
        chosen = fmt.md(result.get("device", "?"))
        m4.metric("Device", chosen, help="What the run used" + (" (auto chose it)." if latest.get(
            "requested device") == "auto" else "."))
        if latest.get("requested device") == "auto":
            st.caption(f"auto chose {chosen}.")
        if result.get("peak_source"):
            st.caption(f"Measured: {fmt.md(result['peak_source'])}. Predicted: capacity.estimate.")
        if isinstance(result.get("cuda"), dict):
            st.dataframe(_runs.cuda_table(result["cuda"]), width="stretch", hide_index=True)
        data = _runs.breakdown_frame(result, unit)
        if not data.empty:
            st.dataframe(data.drop(columns=["measured_bytes", "predicted_bytes"]).round(3), width="stretch",
                         hide_index=True)
            fig = _export.figure(
                [{"type": "bar", "name": side, "x": list(data["term"]), "y": list(data[f"{side} [{unit}]"]),
                  "customdata": list(data[f"{side} [{binary}]"]),
                  "hovertemplate": f"%{{x}}: %{{y:.3f}} {unit} (%{{customdata:.3f}} {binary})<extra>{side}</extra>"}
                 for side in ("measured", "predicted")],
                {"barmode": "group", "xaxis": {"title": {"text": "class (as both sides name it)"}},
                 "yaxis": {"title": {"text": fmt.AXIS_TITLES[unit]}}},
                f"Measured vs predicted by class: {latest['run']}",
                f"{latest.get('command', '')} · run {latest.get('started', '')}")
            _export.show_figure(fig, f"validation-{latest['run']}", data)
        extra = {k: v for k, v in result.items() if k not in _runs.RESULT_SHOWN}
        if extra:
            with st.expander("Everything else the engine reported"):
                st.json(extra)

if history:
    st.subheader("Runs on this machine")
    unit = _runs.history_unit(history)
    table = pd.DataFrame([_runs.history_row(entry, unit) for entry in reversed(history)])
    st.dataframe(table, width="stretch", hide_index=True)
    left, middle, right = st.columns(3)
    left.download_button("Download the runs (CSV)", table.to_csv(index=False).encode(), "validation-runs.csv",
                         "text/csv", on_click="ignore")
    middle.download_button("Download the runs with full results (JSON)",
                           json.dumps(history, indent=2, default=str).encode(), "validation-runs.json",
                           "application/json", on_click="ignore")
    right.button("Clear the history", on_click=clear_history, disabled=busy)
    st.caption(f"Kept in {fmt.md(_runs.HISTORY_FILE)} (the last {_runs.HISTORY_KEPT} runs), so a reload keeps them.")
