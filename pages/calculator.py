"""Calculator: the peak memory of inference, MeZO, BP and checkpointed BP, term by term."""

import pandas as pd
import plotly.graph_objects as go
import streamlit as st

import capacity as cap
from pages import _ui

_ui.start_page("Memory calculator", __file__)

shape = _ui.model_shape()
budget = _ui.budget_bytes()
estimates = {label: cap.estimate(shape, sc) for label, sc in _ui.methods()}
labels = list(estimates)
unit = _ui.unit_for(max(est.peak_bytes for est in estimates.values()))
s = _ui.scenario()
st.caption(f"**{_ui.model_name()}**: {cap.parameter_count(shape):,} parameters · batch {s['batch']} · "
           f"context {s['seq']} tokens · {s['dtype']}{' mixed precision' if s['mixed'] else ''} · "
           f"{s['opt']} · budget {_ui.budget_label()}")

# Peak memory per method, and whether it fits.
for col, (label, est) in zip(st.columns(len(estimates)), estimates.items()):
    col.metric(label, _ui.size_text(est.peak_bytes, unit), delta=_ui.fit_text(est.peak_bytes, budget),
               delta_color="normal", help=f"{_ui.binary_text(est.peak_bytes, unit)}; the peak falls in the {est.phase} phase.")

mezo, bp, ckpt = (estimates[label].peak_bytes for label in labels[1:])
r1, r2, _ = st.columns([1, 1, 2])
r1.metric("MeZO / BP memory", _ui.ratio_text(mezo, bp), help="Peak memory of MeZO over plain BP's, same model.")
r2.metric("MeZO / checkpointed BP", _ui.ratio_text(mezo, ckpt), help=f"Against {labels[3]}.")

# The stacked bar: one bar per method, one colour per term.
data = pd.DataFrame([
    {"method": label, "term": term, "bytes": est.breakdown.get(term, 0), **_ui.size_columns("memory", est.breakdown.get(term, 0), unit)}
    for label, est in estimates.items() for term in cap.TERMS
])
fig = go.Figure()
for term in cap.TERMS:
    rows = data[data["term"] == term]
    if rows["bytes"].sum() == 0:
        continue
    binary = _ui.UNITS[unit][1]
    fig.add_bar(name=_ui.term_label(term), x=rows["method"], y=rows[f"memory [{unit}]"],
                customdata=rows[f"memory [{binary}]"], marker_color=_ui.TERM_COLOURS.get(term),
                hovertemplate=f"%{{x}}<br>{_ui.term_label(term)}: %{{y:.3f}} {unit} (%{{customdata:.3f}} {binary})<extra></extra>")
tallest = max(est.peak_bytes for est in estimates.values())
if budget <= 2 * tallest:       # a line far above every bar would flatten them (the metrics say it all)
    fig.add_hline(y=budget / _ui.UNITS[unit][0], line_dash="dash", line_color="firebrick",
                  annotation_text=f"budget {_ui.gb_text(budget)}", annotation_position="top left")
fig.update_layout(barmode="stack", yaxis_title="peak " + _ui.AXIS_TITLES[unit], xaxis_title="method")
_ui.style(fig, f"Peak memory by term: {_ui.model_name()}, batch {s['batch']}, context {s['seq']}")
_ui.show_figure(fig, _ui.slug(f"memory-by-term-{_ui.model_name()}"), data)

st.subheader("Terms at the peak")
_ui.unit_tabs(_ui.terms_table({label: est.breakdown for label, est in estimates.items()}, cap.TERMS,
                              {label: est.peak_bytes for label, est in estimates.items()}, unit), unit)

with st.expander("The textbook form (weights + gradients + optimizer states + Korthikanti activations)"):
    textbook = {label: est.textbook for label, est in estimates.items()}
    terms = list(dict.fromkeys(t for tb in textbook.values() for t in tb))
    _ui.unit_tabs(_ui.terms_table(textbook, terms, {label: sum(tb.values()) for label, tb in textbook.items()}, unit),
                  unit)
    st.caption("The classic closed form, kept as the explanation; the peak above models the framework "
               "(what torch.cuda.max_memory_allocated reports).")

with st.expander("How accurate is this?"):
    summary = _ui.accuracy_summary()
    if summary is None:
        st.info("The accuracy report (docs/accuracy.md) is not there yet: no measured-versus-predicted "
                "figures have been published for this build. The Validate page measures your own GPU.")
    else:
        st.markdown(summary)
        st.caption("Where the model is off and why, and every case: docs/accuracy.md "
                   "(`python bench/accuracy.py` regenerates it).")
