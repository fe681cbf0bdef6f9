"""Memory vs context: the paper's memory figure.

Total memory of BP and MeZO against the context length, with the MeZO/BP ratio on a
secondary axis; the top row compares with conventional BP, the bottom row with BP
checkpointed at the sidebar's L'/L. The memory axis opens logarithmic, so that BP (which
grows with the square of the context under eager attention), MeZO and the budget line are
all readable; the linear view is clipped at a multiple of the budget.
"""

import math

import pandas as pd
import streamlit as st

import capacity as cap
from ui import _capacity, _expander, _export, _format as fmt, _scenario as sc, _sidebar

LINEAR_CLIP = 3        # the linear memory axis stops at this many budgets (or where MeZO and BP show)


def context_grid(longest: int) -> list[int]:
    """Context lengths to sample for a curve: powers of two and the midpoints between
    them (x1.5), from 64 tokens up to `longest`, which is always the last point."""
    points, p = set(), 64
    while p < longest:
        points.update(x for x in (p, p * 3 // 2) if x < longest)
        p *= 2
    return sorted(points | {longest})


_sidebar.start_page(sc.per_device("Memory vs context length", with_offload=False), needs_estimate=False)
st.caption("The paper's memory figure for the sidebar's model and batch: total memory of BP "
           "(top: conventional, bottom: checkpointed at the chosen L'/L) and of MeZO, and the "
           "MeZO/BP ratio on the right-hand axis" + (f"; every memory is one device's ({fmt.md(sc.devices_text())})."
                                                      if sc.sharded() else "."))

left, right = st.columns(2)
ctx_max = sc.control(left.number_input, "Longest context shown (tokens)", "ctx_max",
                     min_value=int(sc.PARAMS["ctx_max"].low), max_value=int(sc.PARAMS["ctx_max"].high), step=1024)
log_axes = sc.control(right.toggle, "Logarithmic axes", "log",
                      help="On: memory and context on log axes (every curve readable). Off: linear, the memory "
                           f"axis clipped at {LINEAR_CLIP}x the budget.")

shape = sc.model_shape()
budget = sc.budget_bytes()
keep = float(sc.scenario()["keep"])
rows = [("Conventional BP", 1.0), (f"Checkpointed BP (L'/L={keep:g})", keep)]
grid = context_grid(int(ctx_max))
records, refused = [], {}
try:                                             # the sidebar's settings themselves, at the shortest context
    for method in ("bp", "mezo"):
        _capacity.estimate(shape, sc.method_scenario(method, seq=min(grid)))
except ValueError as err:
    _sidebar.refuse(str(err))
try:
    for row, row_keep in rows:
        for seq in grid:
            try:
                bp = _capacity.estimate(shape, sc.method_scenario("bp", keep=row_keep, seq=seq)).peak_bytes
                mezo = _capacity.estimate(shape, sc.method_scenario("mezo", seq=seq)).peak_bytes
            except ValueError as err:            # e.g. a context beyond the model's positions
                refused.setdefault(seq, str(err))
                continue
            records.append({"row": row, "context": seq, "bp_bytes": bp, "mezo_bytes": mezo,
                            **fmt.gb_columns("BP", bp), **fmt.gb_columns("MeZO", mezo),
                            "MeZO/BP": fmt.ratio(mezo, bp)})
except ValueError as err:                        # the sidebar's settings themselves
    st.warning(f"capacity cannot answer for these settings: {fmt.md(err)}.")
    st.stop()
if not records:
    st.warning(f"capacity answers for none of these contexts: {fmt.md(next(iter(refused.values()), ''))}.")
    st.stop()
if refused:
    st.info(f"Contexts from {min(refused):,} tokens are not shown: {fmt.md(refused[min(refused)])}.")
note = cap.context_note(shape, int(ctx_max))
if note:
    st.caption(f"Beyond the dash-dotted line: {fmt.md(note)}.")
data = pd.DataFrame(records)

# Two rows, each with the memory on the left axis and MeZO/BP on the right; one context
# axis for both (built as plain dicts: see _export.figure).
colours = {"BP": "#1f77b4", "MeZO": "#ff7f0e", "ratio": "#2ca02c"}
shown = list(data["context"].unique())
axes = [("x", "y", "y2", [0.56, 1.0]), ("x2", "y3", "y4", [0.0, 0.44])]    # (context, memory, ratio, domain)
traces, layout, titles = [], {}, []
memory_title = ("total per device " if sc.sharded() else "total ") + fmt.GB_AXIS
ratio_axis = _export.round_ticks(data["MeZO/BP"].max())
for (row, _), (x, y_mem, y_ratio, domain) in zip(rows, axes):
    part = data[data["row"] == row]
    first = x == "x"                    # one legend entry per series
    bp_name = sc.method_label("bp") + ("" if first else " checkpointed")
    mezo_name = sc.method_label("mezo")
    common = {"xaxis": x, "x": list(part["context"])}
    traces += [
        {"type": "scatter", **common, "yaxis": y_mem, "y": list(part["BP [GB]"]), "customdata": list(part["BP [GiB]"]),
         "name": bp_name, "mode": "lines+markers", "line": {"color": colours["BP"], "dash": "solid" if first else "dot"},
         "hovertemplate": "context %{x}<br>" + bp_name + ": %{y:.2f} GB (%{customdata:.2f} GiB)<extra></extra>"},
        {"type": "scatter", **common, "yaxis": y_mem, "y": list(part["MeZO [GB]"]), "customdata": list(part["MeZO [GiB]"]),
         "name": mezo_name, "mode": "lines+markers", "line": {"color": colours["MeZO"]}, "showlegend": first,
         "hovertemplate": "context %{x}<br>" + mezo_name + ": %{y:.2f} GB (%{customdata:.2f} GiB)<extra></extra>"},
        {"type": "scatter", **common, "yaxis": y_ratio, "y": list(part["MeZO/BP"]), "name": "MeZO/BP ratio (right axis)",
         "mode": "lines", "line": {"color": colours["ratio"], "dash": "dash"}, "showlegend": first,
         "hovertemplate": "context %{x}<br>MeZO/BP: %{y:.3f}<extra></extra>"},
        {"type": "scatter", "xaxis": x, "yaxis": y_mem, "x": [min(shown), max(shown)], "y": [budget / cap.GB] * 2,
         "name": f"budget {fmt.gb_text(budget)}{' per device' if sc.sharded() else ''}", "mode": "lines", "line": {"color": "firebrick", "dash": "dot"},
         "showlegend": first, "hoverinfo": "skip"},
    ]
    memory_axis = _export.axis_scale(log_axes)
    if not log_axes:                    # clipped, so that MeZO and the budget stay readable
        top = max(LINEAR_CLIP * budget, 1.1 * part["mezo_bytes"].max(), 1.5 * part["bp_bytes"].min()) / cap.GB
        memory_axis.update(range=[0, min(top, 1.05 * part["BP [GB]"].max())])
    layout["yaxis" + y_mem[1:]] = {"domain": domain, "anchor": x, "title": {"text": memory_title},
                                   **memory_axis}
    layout["yaxis" + y_ratio[1:]] = {"overlaying": y_mem, "side": "right", "anchor": x, "type": "linear",
                                     "showgrid": False, "title": {"text": "MeZO / BP"}, **ratio_axis}
    layout["xaxis" + x[1:]] = {"anchor": y_mem, **_export.axis_scale(log_axes),
                               **({"matches": "x2", "showticklabels": False} if first else
                                  {"title": {"text": "context length [tokens]"}})}
    titles.append({"text": row, "xref": "paper", "yref": "paper", "x": 0.5, "y": domain[1], "xanchor": "center",
                   "yanchor": "bottom", "showarrow": False, "font": {"size": 14}})
# The model's context limit: a learned table's last position (no point beyond it runs), or
# the length a RoPE model was trained for (capacity answers beyond it; quality is not assured).
limit = shape.max_positions
shapes = []
if min(shown) <= limit <= int(ctx_max):
    learned = shape.arch.positions == "learned"
    label = (f"learned position table: {limit:,}" if learned else f"trained context (RoPE): {limit:,}")
    for x, _, _, domain in axes:
        shapes.append({"type": "line", "xref": x, "yref": "paper", "x0": limit, "x1": limit, "y0": domain[0],
                       "y1": domain[1], "line": {"color": "#666", "dash": "dashdot", "width": 1}})
    titles.append({"text": label, "xref": "x", "yref": "paper", "x": math.log10(limit) if log_axes else limit,
                   "y": axes[0][3][0], "xanchor": "right", "yanchor": "bottom", "showarrow": False,
                   "font": {"size": 11, "color": "#666"}})
layout.update(height=860, annotations=titles, shapes=shapes, legend={"y": 1.06})
fig = _export.figure(traces, layout, f"{sc.per_device('Total memory')} vs context: {sc.model_name()}",
                     sc.summary(with_model=False, with_context=False), top_extra=30)
_export.show_figure(fig, f"memory-vs-context-{sc.model_name()}", data)
if not log_axes and data["bp_bytes"].max() > LINEAR_CLIP * budget:
    st.caption(f"The memory axis stops near {LINEAR_CLIP}x the budget; BP reaches "
               f"{fmt.gb_text(data['bp_bytes'].max())} at {data['context'].max():,} tokens (the log axes show it all).")

numbers_box = _expander.lazy("The numbers", "open_numbers")
if numbers_box.open:
    numbers_box.dataframe(data.drop(columns=["bp_bytes", "mezo_bytes"]).round(3), width="stretch", hide_index=True)
