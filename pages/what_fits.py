"""What fits: the largest model per method in a memory budget, and P_MeZO / P_BP."""

import pandas as pd
import plotly.graph_objects as go
import streamlit as st

import capacity as cap
from pages import _ui

_ui.start_page("What fits a device", __file__)
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

# The continuous family of the sidebar's model (same depth-to-width ratio, any size): many
# searches, computed in the background so that the page answers at once.
st.subheader(f"Models shaped like {_ui.model_name()}")
shape = _ui.model_shape()
mezo_sc, bp_sc, ckpt_sc = methods[1][1], methods[2][1], methods[3][1]
budgets = _ui.budget_grid(budget)
largest = {label: _ui.background(cap.largest_scaled_model, shape, budget, sc) for label, sc in methods}
jobs = {(b, against): _ui.background(cap.relative_model_size, shape, b, sc, mezo_sc)
        for b in budgets for against, sc in (("BP", bp_sc), ("BP checkpointed", ckpt_sc))}
every_job = [*largest.values(), *jobs.values()]
_ui.keep_only(every_job, "what_fits")
pending = sum(not job.done() for job in every_job)


@st.fragment(run_every=_ui.PROGRESS_REFRESH_S if pending else None)
def continuous_family() -> None:
    left = sum(not job.done() for job in every_job)
    if left:
        st.progress(1 - left / len(every_job),
                    text=f"Searching the largest models that fit, at {len(budgets)} budgets…")
        return
    if pending:
        st.rerun()                     # all landed: draw the page once more, without polling
    failed = [job.exception() for job in every_job if job.exception()]
    if failed:
        st.error(f"The search failed: {failed[0]}. Change the scenario in the sidebar.")
        return
    st.caption("The largest model of the same depth-to-width family that fits the budget, in parameters.")
    for col, (label, job) in zip(st.columns(len(largest)), largest.items()):
        col.metric(label, _ui.params_text(job.result()[1]))
    curve = pd.DataFrame([
        {"budget_bytes": b, **_ui.gb_columns("budget", b),
         "P_MeZO/P_BP": jobs[(b, "BP")].result(),
         "P_MeZO/P_BP checkpointed": jobs[(b, "BP checkpointed")].result()}
        for b in budgets
    ])
    r1, r2, _ = st.columns([1, 1, 2])
    r1.metric("P_MeZO / P_BP", _ui.times_text(jobs[(budget, 'BP')].result()),
              help="How many times larger a model MeZO fine-tunes than BP in this budget.")
    r2.metric("P_MeZO / P_BP checkpointed", _ui.times_text(jobs[(budget, 'BP checkpointed')].result()),
              help=f"Against {methods[3][0]}.")
    fig = go.Figure()
    # The checkpointed curve first and wider, so that where the two coincide both show.
    for column, name, line in (
            ("P_MeZO/P_BP checkpointed", f"vs BP checkpointed (L'/L={float(s['keep']):g})",
             {"color": "#ef553b", "width": 5}),
            ("P_MeZO/P_BP", "vs BP", {"color": "#636efa", "width": 2})):
        fig.add_scatter(x=curve["budget [GB]"], y=_ui.finite(curve[column]), name=name, mode="lines+markers", line=line,
                        customdata=curve["budget [GiB]"],
                        hovertemplate="%{x:.1f} GB (%{customdata:.1f} GiB): %{y:.2f}x<extra>" + name + "</extra>")
    top = max(_ui.finite(curve[c]).max() for c in ("P_MeZO/P_BP", "P_MeZO/P_BP checkpointed"))
    fig.add_scatter(x=[budget / cap.GB] * 2, y=[0, top], name=f"this budget, {_ui.gb_text(budget)}", mode="lines",
                    line={"color": "firebrick", "dash": "dash"}, hoverinfo="skip")
    fig.update_xaxes(type="log", title_text="memory budget [GB = 10⁹ bytes], log scale",
                     tickvals=_ui.LOG_TICKS, tickformat="~g", tickangle=0)
    fig.update_yaxes(title_text="P_MeZO / P_BP (parameters)", rangemode="tozero")
    _ui.style(fig, f"Relative model size MeZO / BP vs budget: models shaped like {_ui.model_name()}")
    if curve[["P_MeZO/P_BP", "P_MeZO/P_BP checkpointed"]].isin([float("inf")]).any().any():
        st.caption("Gaps: budgets where BP fits no model of this family (MeZO/BP is unbounded there).")
    _ui.show_figure(fig, _ui.slug(f"relative-size-vs-budget-{_ui.model_name()}"), curve)


continuous_family()

with st.expander("Device presets"):
    devices = pd.DataFrame([
        {"device": d.name, **_ui.gb_columns("memory", d.memory_bytes),
         "peak 16-bit [TFLOP/s]": d.peak_flops / 1e12, "bandwidth [GB/s]": d.bandwidth_bytes_s / cap.GB,
         "source": d.source}
        for d in map(cap.load_device, cap.device_names())
    ])
    st.dataframe(devices.round(2), width="stretch", hide_index=True)
