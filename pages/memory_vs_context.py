"""Memory vs context: the paper's memory figure.

Total memory of BP and MeZO against the context length, with the MeZO/BP ratio on a
secondary axis; the top row compares with conventional BP, the bottom row with BP
checkpointed at the sidebar's L'/L.
"""

import pandas as pd
import plotly.graph_objects as go
import streamlit as st
from plotly.subplots import make_subplots

import capacity as cap
from pages import _ui

_ui.start_page("Memory vs context length", __file__)
st.caption("The paper's memory figure for the sidebar's model and batch: total memory of BP "
           "(top: conventional, bottom: checkpointed at the chosen L'/L) and of MeZO, and the "
           "MeZO/BP ratio on the right-hand axis.")

left, right = st.columns(2)
ctx_max = _ui.control(left.number_input, "Longest context shown (tokens)", "ctx_max",
                      min_value=128, max_value=_ui.MAX_SEQ, step=1024)
log_axes = _ui.control(right.toggle, "Logarithmic axes", "log")

shape = _ui.model_shape()
budget = _ui.budget_bytes()
keep = float(_ui.scenario()["keep"])
rows = [("Conventional BP", 1.0), (f"Checkpointed BP (L'/L={keep:g})", keep)]
try:
    grid = _ui.context_grid(int(ctx_max))
    records = []
    for row, row_keep in rows:
        for seq in grid:
            bp = cap.estimate(shape, _ui.method_scenario("bp", keep=row_keep, seq=seq)).peak_bytes
            mezo = cap.estimate(shape, _ui.method_scenario("mezo", seq=seq)).peak_bytes
            records.append({"row": row, "context": seq, "bp_bytes": bp, "mezo_bytes": mezo,
                            **_ui.gb_columns("BP", bp), **_ui.gb_columns("MeZO", mezo),
                            "MeZO/BP": _ui.ratio(mezo, bp)})
except ValueError as err:
    st.error(f"These settings are not a valid scenario: {err}. Change them in the sidebar.")
    st.stop()
data = pd.DataFrame(records)

fig = make_subplots(rows=2, cols=1, shared_xaxes=True, vertical_spacing=0.12,
                    specs=[[{"secondary_y": True}], [{"secondary_y": True}]],
                    subplot_titles=[row for row, _ in rows])
colours = {"BP": "#1f77b4", "MeZO": "#ff7f0e", "ratio": "#2ca02c"}
for i, (row, _) in enumerate(rows, start=1):
    part = data[data["row"] == row]
    first = i == 1          # one legend entry per series
    bp_name = "BP" if first else "checkpointed BP"
    fig.add_scatter(x=part["context"], y=part["BP [GB]"], customdata=part["BP [GiB]"], name=bp_name,
                    mode="lines+markers", line={"color": colours["BP"], "dash": "solid" if first else "dot"},
                    hovertemplate="context %{x}<br>" + bp_name + ": %{y:.2f} GB (%{customdata:.2f} GiB)<extra></extra>",
                    row=i, col=1, secondary_y=False)
    fig.add_scatter(x=part["context"], y=part["MeZO [GB]"], customdata=part["MeZO [GiB]"], name="MeZO",
                    mode="lines+markers", line={"color": colours["MeZO"]}, showlegend=first,
                    hovertemplate="context %{x}<br>MeZO: %{y:.2f} GB (%{customdata:.2f} GiB)<extra></extra>",
                    row=i, col=1, secondary_y=False)
    fig.add_scatter(x=part["context"], y=part["MeZO/BP"], name="MeZO/BP ratio (right axis)",
                    mode="lines", line={"color": colours["ratio"], "dash": "dash"}, showlegend=first,
                    hovertemplate="context %{x}<br>MeZO/BP: %{y:.3f}<extra></extra>",
                    row=i, col=1, secondary_y=True)
    fig.add_scatter(x=[grid[0], grid[-1]], y=[budget / cap.GB] * 2, name=f"budget {_ui.gb_text(budget)}",
                    mode="lines", line={"color": "firebrick", "dash": "dot"}, showlegend=first,
                    hoverinfo="skip", row=i, col=1, secondary_y=False)
    fig.update_yaxes(title_text="total " + _ui.GB_AXIS, row=i, col=1, secondary_y=False,
                     **_ui.axis_scale(log_axes))
    fig.update_yaxes(title_text="MeZO / BP", type="linear", rangemode="tozero", tickformat=".2f", nticks=6,
                     row=i, col=1, secondary_y=True, showgrid=False)
fig.update_xaxes(**_ui.axis_scale(log_axes))
fig.update_xaxes(title_text="context length [tokens]", row=2, col=1)
_ui.style(fig, f"Total memory vs context: {_ui.model_name()}, batch {_ui.scenario()['batch']}")
fig.update_layout(height=800, legend_y=1.06, margin_t=140)
_ui.show_figure(fig, _ui.slug(f"memory-vs-context-{_ui.model_name()}"), data)

with st.expander("The numbers"):
    st.dataframe(data.drop(columns=["bp_bytes", "mezo_bytes"]).round(3), width="stretch", hide_index=True)
