"""Calculator: the peak memory of inference, MeZO, BP and checkpointed BP, term by term."""

import pandas as pd
import streamlit as st

import capacity as cap
from capacity import inverse
from ui import _accuracy, _capacity, _expander, _export, _format as fmt, _scenario as sc, _sidebar


def variants_table(shape, budget: int) -> None:
    """This model at these settings by each way of fine-tuning (capacity.inverse.VARIANTS):
    peak, whether it fits `budget`, and the terms at each peak; with its CSV."""
    st.caption(f"This model at these settings, by each way of fine-tuning (LoRA settings from the sidebar; QLoRA: "
               f"4-bit NF4 with double quantization; BP without checkpointing). Budget {fmt.md(sc.budget_label())}. "
               "Terms at each peak; full fine-tuning trains the weights themselves (no frozen base).")
    base_sc = sc.method_scenario("mezo")
    rows = []
    for variant in inverse.VARIANTS:
        try:
            est = _capacity.estimate(shape, inverse.variant_scenario(variant, base_sc))
        except ValueError as err:
            rows.append({"variant": variant, "note": str(err)})
            continue
        # Full fine-tuning trains the weights themselves: none of them is a frozen base.
        full = inverse.VARIANTS[variant][1]["method"] == "none"
        parts = {"frozen base": 0 if full else est.breakdown.get("weights", 0),
                 "trained weights": est.breakdown.get("trainable_weights", 0) + (est.breakdown.get("weights", 0) if full else 0),
                 **{fmt.term_label(t): est.breakdown.get(t, 0) for t in ("gradients", "optimizer_states", "activations")}}
        rows.append({"variant": variant, "trainable parameters": est.trainable_params,
                     **fmt.gb_columns("peak", est.peak_bytes), "fits": "yes" if est.peak_bytes <= budget else "no",
                     **{f"{name} [GB]": n / cap.GB for name, n in parts.items()}, "peak_bytes": est.peak_bytes, "note": ""})
    variants = pd.DataFrame(rows)
    st.dataframe(variants.drop(columns=["peak_bytes"], errors="ignore").round(3), width="stretch", hide_index=True)
    st.download_button("Download the variants (CSV)", _export.csv_on_click(variants),
                       f"variants-{_export.slug(sc.model_name())}.csv", "text/csv", on_click="ignore")


_sidebar.start_page(sc.per_device("Memory calculator", with_offload=False))

shape = sc.model_shape()
budget = sc.budget_bytes()
estimates = {label: _capacity.estimate(shape, method) for label, method in sc.methods()}
labels = list(estimates)
unit = fmt.unit_for(max(est.peak_bytes for est in estimates.values()))
s = sc.scenario()
pf = sc.peft()
peft_on = not (pf.method == "none" and pf.weights_bits == 16)
term_label = fmt.peft_term_label if peft_on else fmt.term_label
st.caption(f"{cap.parameter_count(shape):,} parameters · {fmt.md(sc.summary(), fmt.SUMMARY_CHARS)}")

# Peak memory per method (per device over several), and whether it fits.
if sc.sharded():
    st.markdown(f"**Peak memory per device** ({fmt.md(sc.devices_text())}), against "
                f"{fmt.md(sc.budget_label())}:")
for col, (label, est) in zip(st.columns(len(estimates)), estimates.items()):
    col.metric(label, fmt.size_text(est.peak_bytes, unit), **fmt.fit_delta(est.peak_bytes, budget),
               help=f"{fmt.binary_text(est.peak_bytes, unit)}{' per device' if sc.sharded() else ''}; "
                    f"the peak falls in the {est.phase} phase.")
if s["offload"]:
    # Optimizer offload: what each device's host keeps, beside the device's own peak.
    st.markdown("**Host memory per device** (optimizer offload: sharded parameters, gradients, optimizer "
                "states and the optimizer step on the host):")
    for col, (label, est) in zip(st.columns(len(estimates)), estimates.items()):
        col.metric(f"{label}: host", fmt.size_text(est.host_bytes), help=fmt.binary_text(est.host_bytes))

mezo, bp, ckpt = (estimates[label].peak_bytes for label in labels[1:])
r1, r2, r3, _ = st.columns([1, 1, 1, 1])
r1.metric("MeZO / BP memory", fmt.ratio_text(mezo, bp), help="Peak memory of MeZO over plain BP's, same model.")
r2.metric("MeZO / checkpointed BP", fmt.ratio_text(mezo, ckpt), help=f"Against {labels[3]}.")
trained = estimates[labels[1]]
r3.metric("Trainable parameters", fmt.params_text(trained.trainable_params),
          help=f"{trained.trainable_params:,} of {trained.params:,} parameters "
               f"({100 * trained.trainable_params / trained.params:.3g}%) train, by BP and by MeZO alike: "
               f"{fmt.md(sc.peft_text())}.")
st.caption("Inference is one forward pass with `use_cache=False`: no generation and no KV cache. "
           "MeZO is two such passes per step, with the weights perturbed in place.")
st.caption(_accuracy.statement(s["target"]))
if _accuracy.peft_statement(pf):
    st.caption(_accuracy.peft_statement(pf))

# The stacked bar: one bar per method, one colour per term.
data = pd.DataFrame([
    {"method": label, "term": term, "bytes": est.breakdown.get(term, 0),
     **fmt.size_columns("memory", est.breakdown.get(term, 0), unit)}
    for label, est in estimates.items() for term in sc.terms()
])
binary = fmt.UNITS[unit][1]
traces = []
for term in sc.terms():
    rows = data[data["term"] == term]
    if rows["bytes"].sum() == 0:
        continue
    traces.append({"type": "bar", "name": term_label(term), "x": list(rows["method"]),
                   "y": list(rows[f"memory [{unit}]"]), "customdata": list(rows[f"memory [{binary}]"]),
                   "marker": {"color": _export.TERM_COLOURS.get(term)},
                   "hovertemplate": f"%{{x}}<br>{term_label(term)}: %{{y:.3f}} {unit} "
                                    f"(%{{customdata:.3f}} {binary})<extra></extra>"})
peak_axis = ("peak per device " if sc.sharded() else "peak ") + fmt.AXIS_TITLES[unit]
layout = {"barmode": "stack", "yaxis": {"title": {"text": peak_axis}},
          "xaxis": {"title": {"text": "method"}}}
tallest = max(est.peak_bytes for est in estimates.values())
if budget <= 2 * tallest:       # a line far above every bar would flatten them (the metrics say it all)
    level = budget / fmt.UNITS[unit][0]
    layout["shapes"] = [{"type": "line", "xref": "paper", "x0": 0, "x1": 1, "y0": level, "y1": level,
                         "line": {"dash": "dash", "color": "firebrick"}}]
    layout["annotations"] = [{"xref": "paper", "x": 0, "y": level, "xanchor": "left", "yanchor": "bottom",
                              "text": f"budget {fmt.size_text(budget, unit)}{' per device' if sc.sharded() else ''}", "showarrow": False,
                              "font": {"color": "firebrick"}}]
fig = _export.figure(traces, layout, f"{sc.per_device('Peak memory by term')}: {sc.model_name()}",
                     sc.summary(with_model=False))
_export.show_figure(fig, f"memory-by-term-{sc.model_name()}", data)

st.subheader(sc.per_device("Terms at the peak", with_offload=False))
in_binary = sc.binary_units(unit)
fmt.unit_table(fmt.terms_table({label: est.breakdown for label, est in estimates.items()}, sc.terms(),
                               {label: est.peak_bytes for label, est in estimates.items()}, unit, term_label),
               unit, in_binary)
if s["offload"]:
    st.subheader("Host memory per device (optimizer offload)")
    host_terms = [t for t in sc.HOST_TERMS if any(t in est.host_breakdown for est in estimates.values())]
    fmt.unit_table(fmt.terms_table({label: est.host_breakdown for label, est in estimates.items()}, host_terms,
                                   {label: est.host_bytes for label, est in estimates.items()}), "GB", in_binary)
if peft_on:
    st.caption("Base weights: the frozen model as stored (quantized weights with their block statistics). "
               "Trainable weights: the adapters, prefix or top layers; their gradients and optimizer states "
               "are the only ones BP keeps. Terms are what is live at each method's peak.")

# Secondary answers, each computed and drawn only when its expander is open.
variants_box = _expander.lazy("Every way of fine-tuning side by side: BP and MeZO, full, LoRA and quantized LoRA",
                              "open_variants")
if variants_box.open:
    with variants_box:
        variants_table(shape, budget)

textbook_box = _expander.lazy("The textbook form (weights + gradients + optimizer states + Korthikanti activations)",
                              "open_textbook")
if textbook_box.open:
    with textbook_box:
        textbook = {label: est.textbook for label, est in estimates.items()}
        terms = list(dict.fromkeys(t for tb in textbook.values() for t in tb))
        fmt.unit_table(fmt.terms_table(textbook, terms, {label: sum(tb.values()) for label, tb in textbook.items()},
                                       unit), unit, in_binary)
        st.caption("The classic closed form, kept as the explanation; the peak above models the framework "
                   "(what torch.cuda.max_memory_allocated reports).")

accuracy_box = _expander.lazy("How accurate is this?", "open_accuracy")
if accuracy_box.open:
    with accuracy_box:
        summary = _accuracy.summary()
        if summary is None:
            st.info("The accuracy report (docs/accuracy.md) is not there yet: no measured-versus-predicted "
                    "figures have been published for this build. The Validate page measures your own GPU.")
        else:
            st.markdown(summary)
            st.caption("Where the model is off and why, and every case: docs/accuracy.md "
                       "(`python bench/accuracy.py` regenerates it).")
