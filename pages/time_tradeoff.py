"""Time trade-off: FLOPs and time per step, MeZO's extra steps, time to N steps, and the
paper's experiment (BP on a small model against MeZO on the largest that fits)."""

import pandas as pd
import plotly.graph_objects as go
import streamlit as st

import capacity as cap
from pages import _ui

_ui.start_page("Time trade-off", __file__)
s = _ui.scenario()

device_col, eff_col, mult_col, steps_col = st.columns(4)
device = cap.load_device(_ui.control(device_col.selectbox, "Device for throughput", "time_device",
                                     options=cap.device_names()))
efficiency = _ui.control(eff_col.number_input, "Efficiency (share of peak reached)", "eff",
                        min_value=0.01, max_value=1.0, step=0.05, format="%.2f",
                        help="1 gives the roofline bound; real training reaches roughly 0.3 to 0.6 of peak.")
mult = _ui.control(mult_col.number_input, "MeZO steps per BP step", "mult",
                   min_value=1.0, max_value=_ui.MAX_MULT, step=1.0, format="%.1f")
steps = _ui.control(steps_col.number_input, "BP-equivalent steps", "steps",
                    min_value=1, max_value=_ui.MAX_STEPS, step=100)
st.caption(f"**{device.name}**: {device.peak_flops / 1e12:,.0f} TFLOP/s dense 16-bit, "
           f"{device.bandwidth_bytes_s / cap.GB:,.0f} GB/s memory bandwidth ({device.source}). "
           f"MeZO steps per BP step: default {cap.MEZO_STEPS_MULTIPLIER:g}, from {cap.MEZO_STEPS_SOURCE.rstrip('.')}.")

# 1. The sidebar's model, every training method.
st.subheader(f"{_ui.model_name()}: per step and to {steps:,} BP-equivalent steps")
shape = _ui.model_shape()
budget = _ui.budget_bytes()
training = [(label, sc) for label, sc in _ui.methods() if sc.method != "inference"]
data = pd.DataFrame([_ui.time_row(label, shape, sc, device, budget, steps, mult, efficiency) for label, sc in training])
st.dataframe(_ui.time_table(data), width="stretch", hide_index=True)

fig = go.Figure(go.Bar(x=data["setup"], y=data["time to target [h]"], text=data["time to target [h]"].map("{:,.2f} h".format),
                       customdata=data["time per step [s]"], marker_color=["#ff7f0e", "#1f77b4", "#6baed6"],
                       hovertemplate="%{x}<br>%{y:,.2f} h (%{customdata:.3f} s per step)<extra></extra>"))
fig.update_layout(xaxis_title="method", yaxis_title="wall-clock time [hours]", showlegend=False)
_ui.style(fig, f"Time to {steps:,} BP-equivalent steps on {device.name}: {_ui.model_name()}")
_ui.show_figure(fig, _ui.slug(f"time-to-steps-{_ui.model_name()}"), data)

# 2. The paper's experiment: the same budget, BP on a small model, MeZO on the largest that fits.
st.subheader("The paper's experiment")
st.caption("Katti et al. (2025) fine-tune GPT2-medium with BP and Llama-2 with MeZO at about 17 GB, batch 8. "
           "Here: BP on the chosen small model, MeZO on the largest preset of the chosen family that fits "
           f"the budget ({_ui.budget_label()}).")
st.button("Load the paper's setting", on_click=_ui.set_scenario, kwargs=_ui.PAPER_SETTING)
bp_col, family_col = st.columns(2)
bp_name = _ui.control(bp_col.selectbox, "BP on", "bp_model", options=cap.preset_names())
family = _ui.control(family_col.selectbox, "MeZO on the largest that fits of", "family",
                     options=list(cap.families()))
bp_sc, mezo_sc = _ui.methods()[2][1], _ui.methods()[1][1]
mezo_name, _ = _ui.largest_preset(family, budget, mezo_sc)
if mezo_name is None:
    st.warning(f"No {family} model fits {_ui.budget_label()} with MeZO. Raise the budget or shorten the context.")
    setups = [(f"BP on {bp_name}", _ui.model_shape(bp_name), bp_sc)]
else:
    setups = [(f"BP on {bp_name}", _ui.model_shape(bp_name), bp_sc),
              (f"MeZO on {mezo_name}", _ui.model_shape(mezo_name), mezo_sc)]
paper = pd.DataFrame([_ui.time_row(label, shp, sc, device, budget, steps, mult, efficiency) for label, shp, sc in setups])
st.dataframe(_ui.time_table(paper), width="stretch", hide_index=True)

curve = _ui.wall_clock_curve(paper, steps)
fig2 = go.Figure()
for setup, part in curve.groupby("setup", sort=False):
    fig2.add_scatter(x=part["BP-equivalent steps"], y=part["wall-clock [h]"], name=setup, mode="lines",
                     hovertemplate="%{x:,} steps: %{y:,.2f} h<extra>" + setup + "</extra>")
fig2.update_layout(xaxis_title="BP-equivalent steps", yaxis_title="wall-clock time [hours]")
_ui.style(fig2, f"Wall-clock time vs progress at {_ui.gb_text(budget)} on {device.name}")
_ui.show_figure(fig2, "paper-experiment-wall-clock", curve)
st.caption("Time per step is capacity's roofline estimate, max(FLOPs / peak FLOP/s, bytes moved / bandwidth), "
           "each scaled by the efficiency: with efficiency 1 it is a lower bound. MeZO's steps are cheaper "
           "(two forward passes) but it needs more of them.")
