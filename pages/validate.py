"""Validate: a short real fine-tune by the validation engine, measured against the prediction.

The engine runs in a child process (pages/_runner.py); this page launches it, shows its
progress, lets the user cancel it, and keeps the session's runs in a history.
"""

import json

import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from pages import _runner, _ui

_ui.start_page("Validate on this machine", __file__)
st.caption("A few real steps of BP or MeZO with the sidebar's model and settings: the engine measures the "
           "peak memory and sets it beside capacity's prediction, term by term. 'trace' runs the same "
           "steps on fake tensors (any model size, no memory used); 'cpu' and 'cuda' use real memory.")

history = st.session_state.setdefault("validate_history", [])
run = st.session_state.get("validate_run")
if run is not None and not run.running and not run.recorded:
    history.append(_ui.history_entry(run))
    run.recorded = True

available, engine_text = _ui.engine_available()
if not available:
    st.warning(f"The validation engine is not available in this installation ({engine_text}). "
               "The calculator pages work without it; `python -m capacity validate --help` tells what is missing.")

method_col, device_col, steps_col, limit_col = st.columns(4)
method = _ui.control(method_col.selectbox, "Method", "v_method", options=list(_ui.VALIDATE_METHODS))
device = _ui.control(device_col.selectbox, "Device", "v_device", options=list(_ui.VALIDATE_DEVICES),
                     help="auto: the GPU when torch sees one, else the CPU, else trace when the run would not fit in RAM.")
steps = _ui.control(steps_col.number_input, "Steps", "v_steps", min_value=2, max_value=_ui.MAX_VALIDATE_STEPS)
limit = _ui.control(limit_col.number_input, "Time limit [s]", "v_limit", min_value=10,
                    max_value=_ui.MAX_VALIDATE_SECONDS, step=30)

busy = run is not None and run.running
if st.button("Run", type="primary", disabled=busy or not available):
    try:
        args = _ui.engine_args(method, device, int(steps))
        st.session_state["validate_run"] = run = _runner.EngineRun(
            args, float(limit), label=f"{method}{_ui.keep_label(method)} · {_ui.model_name()} · {device}")
        busy = True
    except (OSError, ValueError) as err:
        st.error(f"Could not start the engine: {err}")


@st.fragment(run_every=_ui.PROGRESS_REFRESH_S)
def live_progress() -> None:
    current = st.session_state.get("validate_run")
    if current is None:
        return
    if not current.running:
        st.rerun()                   # the whole page: the result and the history
    st.progress(current.fraction, text=f"{current.label}: step {current.step}/{current.total or '?'} · "
                                       f"{current.progress_message} · {current.elapsed:.0f} s")
    st.button("Cancel", on_click=current.cancel)


if busy:
    live_progress()

# The latest finished run.
latest = history[-1] if history else None
if latest and not busy:
    st.subheader(f"Latest run: {latest['run']}")
    result = latest["result"]
    if latest["status"] != "done":
        st.error(_ui.status_text(latest))
        if latest.get("stderr"):
            with st.expander("The engine's messages"):
                st.code(latest["stderr"], language=None)
    if result and "measured_peak_bytes" in result:
        measured, predicted = result.get("measured_peak_bytes"), result.get("predicted_peak_bytes")
        unit = _ui.unit_for(max((n for n in (measured, predicted) if isinstance(n, (int, float))), default=None))
        binary = _ui.UNITS[unit][1]
        m1, m2, m3, m4 = st.columns(4)
        m1.metric("Measured peak", _ui.size_text(measured, unit), help=_ui.binary_text(measured, unit))
        m2.metric("Predicted peak", _ui.size_text(predicted, unit), help=_ui.binary_text(predicted, unit))
        m3.metric("Error", _ui.pct_text(result.get("error_pct")),
                  help="100·(predicted − measured) / measured, as the engine reports it.")
        m4.metric("Device", str(result.get("device", "?")))
        if result.get("peak_source"):
            st.caption(f"Measured: {result['peak_source']}. Predicted: capacity.estimate.")
        if isinstance(result.get("cuda"), dict):
            st.dataframe(_ui.cuda_table(result["cuda"]), width="stretch", hide_index=True)
        data = _ui.breakdown_frame(result, unit)
        if not data.empty:
            st.dataframe(data.drop(columns=["measured_bytes", "predicted_bytes"]).round(3), width="stretch",
                         hide_index=True)
            fig = go.Figure()
            for side in ("measured", "predicted"):
                fig.add_bar(name=side, x=data["term"], y=data[f"{side} [{unit}]"], customdata=data[f"{side} [{binary}]"],
                            hovertemplate=f"%{{x}}: %{{y:.3f}} {unit} (%{{customdata:.3f}} {binary})<extra>{side}</extra>")
            fig.update_layout(barmode="group", xaxis_title="term", yaxis_title=_ui.AXIS_TITLES[unit])
            _ui.style(fig, f"Measured vs predicted by term: {latest['run']}")
            _ui.show_figure(fig, _ui.slug(f"validation-{latest['run']}"), data)
        extra = {k: v for k, v in result.items() if k not in _ui.RESULT_SHOWN}
        if extra:
            with st.expander("Everything else the engine reported"):
                st.json(extra)

if history:
    st.subheader("This session's runs")
    unit = _ui.history_unit(history)
    table = pd.DataFrame([_ui.history_row(entry, unit) for entry in history])
    st.dataframe(table, width="stretch", hide_index=True)
    left, right = st.columns(2)
    left.download_button("Download the runs (CSV)", table.to_csv(index=False).encode(), "validation-runs.csv",
                         "text/csv", on_click="ignore")
    right.download_button("Download the runs with full results (JSON)",
                          json.dumps(history, indent=2, default=str).encode(), "validation-runs.json",
                          "application/json", on_click="ignore")
