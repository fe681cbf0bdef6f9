"""What fits: the largest model per method in a memory budget, and P_MeZO / P_BP."""

import pandas as pd
import streamlit as st

import capacity as cap
from capacity import inverse
from ui import _accuracy, _background, _capacity, _devices, _expander, _export, _format as fmt, _scenario as sc, _sidebar

POLL_S = 0.3


def budget_grid(current: int) -> list[int]:
    """Budgets to sample for a curve: 2 to 256 GB, doubling, and the current budget (each
    point costs capacity two searches per method, so the grid stays coarse)."""
    grid = {int(g * cap.GB) for g in (2, 4, 8, 16, 32, 64, 128, 256)}
    return sorted(grid | {current})


_sidebar.start_page("What fits a device")
budget = sc.budget_bytes()
methods = sc.methods()
s = sc.scenario()
st.caption(f"{fmt.md(sc.summary(with_model=False), fmt.SUMMARY_CHARS)}. Pick the device or a custom budget in the sidebar.")

# The largest preset of each family, per method, with its size and peak.
st.subheader("Largest preset of each family")
records = []
for family in _capacity.families():
    for label, method in methods:
        try:
            name, est = _capacity.largest_preset(family, budget, method)
            note = ""
        except ValueError as err:        # a family that capacity refuses for these settings
            name, est, note = None, None, str(err)
        params = sc.preset_params(name) if name else 0
        records.append({"family": family, "method": label, "largest preset": name, "parameters": params,
                        "peak_bytes": est.peak_bytes if est else None,
                        **fmt.gb_columns("peak", est.peak_bytes if est else float("nan")), "note": note})
fits = pd.DataFrame(records)


def cell(row) -> str:
    """'gpt2-xl (1.56 B, 5.19 GB)', 'none fits', or why capacity has no answer."""
    if pd.isna(row["largest preset"]):
        return f"n/a: {row['note']}" if row["note"] else "none fits"
    return f"{row['largest preset']} ({fmt.params_text(row['parameters'])}, {fmt.size_text(row['peak_bytes'])})"


fits["shown"] = fits.apply(cell, axis=1)
table = fits.pivot(index="family", columns="method", values="shown")[[label for label, _ in methods]]
st.dataframe(table, width="stretch")
st.caption("Each cell: the largest preset that fits, its parameters and its peak memory"
           + (f" per device ({fmt.md(sc.devices_text())})." if sc.sharded() else "."))

# The largest preset overall, per method.
st.subheader("Largest preset overall")
overall = fits[fits["largest preset"].notna()].sort_values("parameters").groupby("method").tail(1).set_index("method")
for col, (label, _) in zip(st.columns(len(methods)), methods):
    if label in overall.index:
        row = overall.loc[label]
        col.metric(label, row["largest preset"],
                   delta=f"{fmt.params_text(row['parameters'])} · peak {fmt.size_text(row['peak_bytes'])}",
                   delta_color="off", delta_arrow="off", help=f"{row['family']} family; the largest across every family.")
    else:
        col.metric(label, "none fits")
st.download_button("Download the table (CSV)", _export.csv_on_click(fits.drop(columns=["shown"])),
                   "largest-presets.csv", "text/csv", on_click="ignore")

# How many devices of the chosen kind each model needs, by method: computed and drawn when
# the user opens it.
devices_box = _expander.lazy("Devices needed: how many devices of this kind each model needs, by method",
                             "open_devices_needed")
if devices_box.open:
    with devices_box:
        family_col, rows_col = st.columns(2)
        rows_choice = sc.control(rows_col.radio, "Models", "dn_models", options=sc.PARAMS["dn_models"].choices(),
                                 format_func=lambda v: "every preset of the family" if v == "family"
                                 else "the largest preset of each family", horizontal=True)
        family = sc.control(family_col.selectbox, "Family", "family", options=list(_capacity.families()),
                            disabled=rows_choice != "family")
        models = _devices.models(rows_choice, family)
        table_methods = _devices.methods(s)
        dn_rows = _devices.rows(models, table_methods, budget)
        st.caption(_devices.caption(s, budget))
        st.dataframe(_devices.display(dn_rows, list(table_methods)), width="stretch")
        dn_data = _devices.data(dn_rows, list(table_methods))
        st.download_button("Download the devices-needed table (CSV)", _export.csv_on_click(dn_data),
                           "devices-needed.csv", "text/csv", on_click="ignore")

# Slow answers, computed in this session's background worker so that the page answers at
# once: the continuous family of the sidebar's model (same depth-to-width ratio, any size),
# and what fits by each way of fine-tuning (capacity.inverse.fits_table), per family.
shape = sc.model_shape()
mezo_sc, bp_sc, ckpt_sc = methods[1][1], methods[2][1], methods[3][1]
budgets = budget_grid(budget)
jobs = {("largest", label): (cap.largest_scaled_model, (shape, budget, method)) for label, method in methods}
jobs.update({(b, against): (cap.relative_model_size, (shape, b, method, mezo_sc))
             for b in budgets for against, method in (("BP", bp_sc), ("BP checkpointed", ckpt_sc))})
variant_sc = sc.method_scenario("mezo")          # the sidebar's LoRA settings; BP without checkpointing
jobs.update({("variants", family): (inverse.fits_table, (budget, variant_sc, None, family))
             for family in _capacity.families()})
jobs[("variants", "scaled")] = (inverse.fits_table, (budget, variant_sc, shape, None))
answers = _background.compute(jobs)

if not answers.done:
    @st.fragment(run_every=POLL_S)
    def wait_for_answers() -> None:
        now = _background.compute(jobs, wait_s=0.1)
        if now.done:
            st.rerun()                     # all landed: draw the page with them
        st.progress(1 - now.missing / now.total,
                    text=f"Searching the largest models that fit, at {len(budgets)} budgets and by each way of "
                         f"fine-tuning…")
    wait_for_answers()
    st.stop()

if answers.errors:
    st.warning(f"capacity could not answer: {fmt.md(next(iter(answers.errors.values())))}")
    st.stop()

# What fits by each way of fine-tuning (issue 10): one table for this device.
st.subheader("By way of fine-tuning")
lora = variant_sc.peft
targets = ",".join(lora.lora_targets) or "peft's default targets"
st.caption(f"The largest preset of each family that fits {fmt.md(sc.budget_label())}, by each way of fine-tuning: "
           f"LoRA r={lora.lora_rank} alpha={lora.lora_alpha:g} on {fmt.md(targets)} (the sidebar's LoRA settings); "
           "QLoRA and 4-bit: NF4 with double quantization; BP without checkpointing. Each preset with its parameters "
           "and peak; models shaped like the sidebar's: same depth-to-width ratio, any size.")
variant_rows = []
for family in _capacity.families():
    for row in answers.values[("variants", family)]["rows"]:
        name = row.get("largest_preset")
        variant_rows.append({"family": family, "variant": row["variant"], "largest preset": name,
                             "parameters": row.get("largest_preset_params", 0) if name else 0,
                             "peak_bytes": row.get("largest_preset_peak_bytes"),
                             **fmt.gb_columns("peak", row.get("largest_preset_peak_bytes") or float("nan")),
                             "note": row.get("error", "")})
variant_fits = pd.DataFrame(variant_rows)
variant_fits["shown"] = variant_fits.apply(cell, axis=1)
variant_names = list(inverse.VARIANTS)
scaled = answers.values[("variants", "scaled")]
scaled_rows = pd.DataFrame([{"variant": row["variant"], "largest model": row.get("largest_scaled_name"),
                             "parameters": row.get("largest_scaled_params"), "note": row.get("error", "")}
                            for row in scaled["rows"]])


def scaled_cell(row) -> str:
    """'llama L=22 h=2816 (2.28 B)', 'none fits', or why capacity has no answer."""
    if row["note"]:
        return f"n/a: {row['note']}"
    return f"{row['largest model']} ({fmt.params_text(row['parameters'])})" if row["largest model"] else "none fits"


# The answer first: for each way of fine-tuning, the largest preset of any family and the
# largest model shaped like the sidebar's.
best = (variant_fits[variant_fits["largest preset"].notna()].sort_values("parameters", kind="stable")
        .groupby("variant").tail(1).set_index("variant"))
shaped = f"largest shaped like {sc.model_name()}"
summary_table = pd.DataFrame([{"variant": v, "largest preset (any family)": cell(best.loc[v]) if v in best.index else "none fits",
                               shaped: scaled_cell(r)}
                              for v, (_, r) in zip(scaled_rows["variant"], scaled_rows.iterrows())])
st.dataframe(summary_table, width="stretch", hide_index=True)
ratios = pd.DataFrame([{"MeZO variant": r["mezo"], "BP variant": r["bp"], "P_MeZO/P_BP": r["ratio"]}
                       for r in scaled["ratios"]])
if len(ratios):
    st.caption(f"P_MeZO / P_BP: how many times larger a model shaped like {fmt.md(sc.model_name())} each MeZO "
               "variant fine-tunes than each BP variant in this budget.")
    st.dataframe(ratios.pivot(index="MeZO variant", columns="BP variant", values="P_MeZO/P_BP")
                 .reindex(index=[v for v in variant_names if v in set(ratios["MeZO variant"])],
                          columns=[v for v in variant_names if v in set(ratios["BP variant"])]).round(2),
                 width="stretch")
families_box = _expander.lazy("By way of fine-tuning, for each family", "open_variant_families")
if families_box.open:
    with families_box:
        st.caption("The largest preset of each family that fits, by each way of fine-tuning (scroll sideways for "
                   "every variant):")
        st.dataframe(variant_fits.pivot(index="family", columns="variant", values="shown")[variant_names],
                     width="stretch")
variant_csv = variant_fits.drop(columns=["shown"]).merge(
    scaled_rows.rename(columns={"largest model": "largest scaled model", "parameters": "largest scaled parameters",
                                "note": "scaled note"}), on="variant", how="left")
st.download_button("Download the fine-tuning variants (CSV)", _export.csv_on_click(variant_csv),
                   "fine-tuning-variants.csv", "text/csv", on_click="ignore")
st.download_button("Download P_MeZO/P_BP by pairing (CSV)", _export.csv_on_click(ratios),
                   "fine-tuning-ratios.csv", "text/csv", on_click="ignore")
st.caption(_accuracy.variants_statement())

st.subheader(f"Models shaped like {fmt.md(sc.model_name())}")
st.caption("The largest model of the same depth-to-width family that fits the budget, in parameters.")
for col, (label, _) in zip(st.columns(len(methods)), methods):
    col.metric(label, fmt.params_text(answers.values[("largest", label)][1]))
curve = pd.DataFrame([
    {"budget_bytes": b, **fmt.gb_columns("budget", b),
     "P_MeZO/P_BP": answers.values[(b, "BP")], "P_MeZO/P_BP checkpointed": answers.values[(b, "BP checkpointed")]}
    for b in budgets
])
r1, r2, _ = st.columns([1, 1, 2])
r1.metric("P_MeZO / P_BP", fmt.times_text(answers.values[(budget, "BP")]),
          help="How many times larger a model MeZO fine-tunes than BP in this budget.")
r2.metric("P_MeZO / P_BP checkpointed", fmt.times_text(answers.values[(budget, "BP checkpointed")]),
          help=f"Against {methods[3][0]}.")
traces = []
# The checkpointed curve first and wider, so that where the two coincide both show.
for column, name, line in (
        ("P_MeZO/P_BP checkpointed", f"vs BP checkpointed (L'/L={float(s['keep']):g})", {"color": "#ef553b", "width": 5}),
        ("P_MeZO/P_BP", "vs BP", {"color": "#636efa", "width": 2})):
    traces.append({"type": "scatter", "x": list(curve["budget [GB]"]), "y": list(fmt.finite(curve[column])),
                   "name": name, "mode": "lines+markers", "line": line, "customdata": list(curve["budget [GiB]"]),
                   "hovertemplate": "%{x:.1f} GB (%{customdata:.1f} GiB): %{y:.2f}x<extra>" + name + "</extra>"})
top = max(fmt.finite(curve[c]).max() for c in ("P_MeZO/P_BP", "P_MeZO/P_BP checkpointed"))
traces.append({"type": "scatter", "x": [budget / cap.GB] * 2, "y": [0, top], "name": f"this budget, {fmt.gb_text(budget)}{' per device' if sc.sharded() else ''}",
               "mode": "lines", "line": {"color": "firebrick", "dash": "dash"}, "hoverinfo": "skip"})
layout = {"xaxis": {"type": "log", "title": {"text": "memory budget [GB = 10⁹ bytes], log scale"},
                    "tickvals": _export.LOG_TICKS, "tickformat": "~g", "tickangle": 0},
          "yaxis": {"title": {"text": "P_MeZO / P_BP (parameters)"}, "rangemode": "tozero"}}
fig = _export.figure(traces, layout, f"Relative model size MeZO / BP vs budget: models shaped like {sc.model_name()}",
                     sc.summary(with_model=False))
if curve[["P_MeZO/P_BP", "P_MeZO/P_BP checkpointed"]].isin([float("inf")]).any().any():
    st.caption("Gaps: budgets where BP fits no model of this family (MeZO/BP is unbounded there).")
_export.show_figure(fig, f"relative-size-vs-budget-{sc.model_name()}", curve)

presets_box = _expander.lazy("Device presets", "open_device_presets")
if presets_box.open:
    with presets_box:
        devices = pd.DataFrame([
            {"device": d.name, **fmt.gb_columns("memory", d.memory_bytes), **fmt.gb_columns("OS reserve", d.os_reserve_bytes),
             "peak 16-bit [TFLOP/s]": d.peak_flops / 1e12, "bandwidth [GB/s]": d.bandwidth_bytes_s / cap.GB,
             "source": d.source, "reserve source": d.os_reserve_source}
            for d in map(cap.load_device, cap.device_names())
        ])
        st.dataframe(devices.round(2), width="stretch", hide_index=True)
