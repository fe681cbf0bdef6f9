"""What fits: the largest model per method in a memory budget, and P_MeZO / P_BP."""

import pandas as pd
import plotly.graph_objects as go
import streamlit as st

import capacity as cap
from pages import _ui

_ui.start_page("What fits a device")
budget = _ui.budget_bytes()
methods = _ui.methods()
s = _ui.scenario()
st.caption(f"Budget **{_ui.budget_label()}**, batch {s['batch']}, context {s['seq']} tokens, "
           f"{s['dtype']}, {s['opt']}. Pick the device or a custom budget in the sidebar.")

# The largest preset of each family, per method.
st.subheader("Largest preset of each family")
records = []
for family in cap.families():
    for label, sc in methods:
        name, est = _ui.largest_preset(family, budget, sc)
        records.append({"family": family, "method": label, "largest preset": name or "none fits",
                        "parameters": _ui.preset_params(name) if name else 0,
                        "peak_bytes": est.peak_bytes if est else 0,
                        **_ui.gb_columns("peak", est.peak_bytes if est else 0)})
fits = pd.DataFrame(records)
table = fits.pivot(index="family", columns="method", values="largest preset")[[label for label, _ in methods]]
st.dataframe(table, width="stretch")
st.download_button("Download the table (CSV)", fits.to_csv(index=False).encode(), "largest-presets.csv",
                   "text/csv", on_click="ignore")

# The continuous family of the sidebar's model: same depth-to-width, any size.
st.subheader(f"Models shaped like {_ui.model_name()}")
st.caption("The largest model of the same depth-to-width family that fits the budget, in parameters.")
shape = _ui.model_shape()
for col, (label, sc) in zip(st.columns(len(methods)), methods):
    _, params = _ui.largest_scaled_model(shape, budget, sc)
    col.metric(label, _ui.params_text(params))
bp_sc, ckpt_sc = methods[2][1], methods[3][1]
mezo_sc = methods[1][1]
r1, r2, _ = st.columns([1, 1, 2])
r1.metric("P_MeZO / P_BP", f"{_ui.relative_model_size(shape, budget, bp_sc, mezo_sc):.2f}",
          help="How many times larger a model MeZO fine-tunes than BP in this budget.")
r2.metric("P_MeZO / P_BP checkpointed", f"{_ui.relative_model_size(shape, budget, ckpt_sc, mezo_sc):.2f}",
          help=f"Against {methods[3][0]}.")

# P_MeZO / P_BP against the budget, with the device presets marked.
budgets = _ui.budget_grid(budget)
curve = pd.DataFrame([
    {"budget_bytes": b, **_ui.gb_columns("budget", b),
     "P_MeZO/P_BP": _ui.relative_model_size(shape, b, bp_sc, mezo_sc),
     "P_MeZO/P_BP checkpointed": _ui.relative_model_size(shape, b, ckpt_sc, mezo_sc)}
    for b in budgets
])
fig = go.Figure()
fig.add_scatter(x=curve["budget [GB]"], y=curve["P_MeZO/P_BP"], name="vs BP", mode="lines+markers",
                customdata=curve["budget [GiB]"],
                hovertemplate="%{x:.1f} GB (%{customdata:.1f} GiB): %{y:.2f}x<extra>vs BP</extra>")
fig.add_scatter(x=curve["budget [GB]"], y=curve["P_MeZO/P_BP checkpointed"], mode="lines+markers",
                name=f"vs BP checkpointed (L'/L={float(s['keep']):g})", customdata=curve["budget [GiB]"],
                hovertemplate="%{x:.1f} GB (%{customdata:.1f} GiB): %{y:.2f}x<extra>vs checkpointed</extra>")
top = max(curve["P_MeZO/P_BP"].max(), curve["P_MeZO/P_BP checkpointed"].max())
fig.add_scatter(x=[budget / cap.GB] * 2, y=[0, top], name=f"this budget, {_ui.gb_text(budget)}", mode="lines",
                line={"color": "firebrick", "dash": "dash"}, hoverinfo="skip")
fig.update_xaxes(type="log", title_text="memory budget [GB = 10⁹ bytes], log scale")
fig.update_yaxes(title_text="P_MeZO / P_BP (parameters)", rangemode="tozero")
_ui.style(fig, f"Relative model size MeZO / BP vs budget: models shaped like {_ui.model_name()}")
_ui.show_figure(fig, _ui.slug(f"relative-size-vs-budget-{_ui.model_name()}"), curve)

with st.expander("Device presets"):
    devices = pd.DataFrame([
        {"device": d.name, **_ui.gb_columns("memory", d.memory_bytes),
         "peak 16-bit [TFLOP/s]": d.peak_flops / 1e12, "bandwidth [GB/s]": d.bandwidth_bytes_s / cap.GB,
         "source": d.source}
        for d in map(cap.load_device, cap.device_names())
    ])
    st.dataframe(devices.round(2), width="stretch", hide_index=True)
