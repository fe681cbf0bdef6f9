"""Time trade-off: FLOPs and time per step, MeZO's extra steps, time to N steps, and the
paper's experiment (BP on a small model against MeZO on the largest that fits).

The device is the sidebar's: its memory sets the budget and its datasheet the throughput.
With a custom budget (no device), the throughput comes from the device chosen here."""

import pandas as pd
import streamlit as st

import capacity as cap
from ui import _capacity, _expander, _export, _format as fmt, _scenario as sc, _sidebar

SECONDS_PER_HOUR = 3600


def time_row(label: str, shape, method, device, budget: int, steps: int, mezo_mult: float,
             efficiency: float = 1.0) -> dict:
    """One setup of the time tables: capacity's memory, FLOPs and time per step, and the
    time to `steps` BP-equivalent steps (MeZO takes `mezo_mult` steps for each)."""
    est = _capacity.estimate(shape, method)
    per_step = cap.step_time_seconds(shape, method, device, efficiency=efficiency)
    n_steps = steps * mezo_mult if method.method == "mezo" else steps
    return {"setup": label, "parameters": cap.parameter_count(shape), "peak_bytes": est.peak_bytes,
            **fmt.gb_columns("peak", est.peak_bytes), "fits budget": est.peak_bytes <= budget,
            "FLOPs per step": cap.flops_per_step(shape, method), "time per step [s]": per_step,
            "steps": n_steps, "time to target [h]": n_steps * per_step / SECONDS_PER_HOUR}


def time_table(data: pd.DataFrame) -> pd.DataFrame:
    """The time rows as shown: readable numbers, no raw bytes."""
    shown = data.drop(columns=["peak_bytes"]).copy()
    shown["parameters"] = shown["parameters"].map(fmt.params_text)
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


_sidebar.start_page("Time trade-off")
s = sc.scenario()

device_col, eff_col, mult_col, steps_col = st.columns(4)
device = sc.device()
if device is None:
    device = cap.load_device(sc.control(device_col.selectbox, "Device for throughput", "time_device",
                                        options=cap.device_names(),
                                        help="The budget is the sidebar's custom figure; this device's "
                                             "datasheet gives the FLOP/s and bandwidth."))
else:
    device_col.text_input("Device (the sidebar's)", device.name, disabled=True,
                          help="Memory and throughput of the device chosen in the sidebar.")
efficiency = sc.control(eff_col.number_input, "Efficiency (share of peak reached)", "eff",
                        min_value=0.01, max_value=1.0, step=0.05, format="%.2f",
                        help="1 gives the roofline bound; real training reaches roughly 0.3 to 0.6 of peak.")
mult = sc.control(mult_col.number_input, "MeZO steps per BP step", "mult",
                  min_value=1.0, max_value=sc.PARAMS["mult"].high, step=1.0, format="%.1f")
steps = sc.control(steps_col.number_input, "BP-equivalent steps", "steps",
                   min_value=1, max_value=int(sc.PARAMS["steps"].high), step=100)
st.caption(f"**{device.name}**: {device.peak_flops / 1e12:,.0f} TFLOP/s dense 16-bit, "
           f"{device.bandwidth_bytes_s / cap.GB:,.0f} GB/s memory bandwidth ({device.source}). "
           f"MeZO steps per BP step: default {cap.MEZO_STEPS_MULTIPLIER:g}, from {cap.MEZO_STEPS_SOURCE.rstrip('.')}.")
st.caption(fmt.md(sc.summary(), fmt.SUMMARY_CHARS))
if sc.sharded():
    st.caption(f"Over several devices ({fmt.md(sc.devices_text())}) the memory is one device's and the time per "
               "step one device's compute on its own micro-batch; the collectives of the sharding (all-gathers, "
               "reduce-scatters, all-reduces) are not in the time.")

# 1. The sidebar's model, every training method.
st.subheader(f"{fmt.md(sc.model_name())}: per step and to {steps:,} BP-equivalent steps")
shape = sc.model_shape()
budget = sc.budget_bytes()
training = [(label, method) for label, method in sc.methods() if method.method != "inference"]
data = pd.DataFrame([time_row(label, shape, method, device, budget, steps, mult, efficiency)
                     for label, method in training])
st.dataframe(time_table(data), width="stretch", hide_index=True)

fig = _export.figure(
    [{"type": "bar", "x": list(data["setup"]), "y": list(data["time to target [h]"]),
      "text": list(data["time to target [h]"].map("{:,.2f} h".format)), "customdata": list(data["time per step [s]"]),
      "marker": {"color": ["#ff7f0e", "#1f77b4", "#6baed6"]},
      "hovertemplate": "%{x}<br>%{y:,.2f} h (%{customdata:.3f} s per step)<extra></extra>"}],
    {"xaxis": {"title": {"text": "method"}}, "yaxis": {"title": {"text": "wall-clock time [hours]"}}, "showlegend": False},
    f"Time to {steps:,} BP-equivalent steps on {device.name}: {sc.model_name()}",
    sc.summary(with_model=False) + f" · efficiency {efficiency:g} · MeZO steps x{mult:g}")
_export.show_figure(fig, f"time-to-steps-{sc.model_name()}", data)

# 2. The paper's experiment: the same budget, BP on a small model, MeZO on the largest that fits.
st.subheader("The paper's experiment")
st.caption("Katti et al. (2025) fine-tune GPT2-medium with BP and Llama-2 with MeZO at about 17 GB, batch 8. "
           "Here: BP on the chosen small model, MeZO on the largest preset of the chosen family that fits "
           f"the budget ({fmt.md(sc.budget_label())}).")
st.button("Load the paper's setting", on_click=sc.set_scenario, kwargs=sc.PAPER_SETTING)
bp_col, family_col = st.columns(2)
bp_name = sc.control(bp_col.selectbox, "BP on", "bp_model", options=cap.preset_names())
family = sc.control(family_col.selectbox, "MeZO on the largest that fits of", "family", options=list(_capacity.families()))
columns = sc.methods()                  # inference, MeZO, BP, checkpointed BP (labelled with their variant)
mezo_sc, bp_sc = columns[1][1], columns[2][1]
try:
    mezo_name, _ = _capacity.largest_preset(family, budget, mezo_sc)
    setups = [(f"{sc.method_label('bp')} on {bp_name}", sc.model_shape(bp_name), bp_sc)]
    if mezo_name is None:
        st.warning(f"No {family} model fits {fmt.md(sc.budget_label())} with MeZO. Raise the budget or shorten "
                   "the context.")
    else:
        setups.append((f"{sc.method_label('mezo')} on {mezo_name}", sc.model_shape(mezo_name), mezo_sc))
    paper = pd.DataFrame([time_row(label, shp, method, device, budget, steps, mult, efficiency)
                          for label, shp, method in setups])
except ValueError as err:                  # e.g. a context beyond the small model's positions
    st.warning(f"capacity cannot answer for these settings: {fmt.md(err)}.")
    st.stop()
st.dataframe(time_table(paper), width="stretch", hide_index=True)

# The same two setups as lines of wall-clock time against progress: drawn when opened (the
# table above has their end points).
chart_box = _expander.lazy("Wall-clock time against progress (chart)", "open_wall_clock")
if chart_box.open:
    with chart_box:
        curve = wall_clock_curve(paper, steps)
        fig2 = _export.figure(
            [{"type": "scatter", "x": list(part["BP-equivalent steps"]), "y": list(part["wall-clock [h]"]),
              "name": setup, "mode": "lines", "hovertemplate": "%{x:,} steps: %{y:,.2f} h<extra>" + setup + "</extra>"}
             for setup, part in curve.groupby("setup", sort=False)],
            {"xaxis": {"title": {"text": "BP-equivalent steps"}}, "yaxis": {"title": {"text": "wall-clock time [hours]"}}},
            f"Wall-clock time vs progress at {fmt.gb_text(budget)} on {device.name}",
            sc.summary(with_model=False) + f" · efficiency {efficiency:g} · MeZO steps x{mult:g}")
        _export.show_figure(fig2, "paper-experiment-wall-clock", curve)
st.caption("Time per step is capacity's roofline estimate, max(FLOPs / peak FLOP/s, bytes moved / bandwidth), "
           "each scaled by the efficiency: with efficiency 1 it is a lower bound. MeZO's steps are cheaper "
           "(two forward passes) but it needs more of them.")
