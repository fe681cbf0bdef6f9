"""Predicted against traced peak memory for every supported model type over the full
matrix (method, optimizer, L'/L, dtype, attention, batch and context); writes
docs/accuracy.md and prints the summary.

    python bench/accuracy.py            # full matrix, about 6 minutes on 2 cores
    python bench/accuracy.py --quick    # one context length, about 3 minutes
    python bench/accuracy.py --loops    # the training loops (capacity.accuracy.loop_matrix):
                                        # writes the results section of docs/loops.md
    python bench/accuracy.py --sharding # many devices (capacity.accuracy.sharding_matrix): rank 0
                                        # of 7B-70B models traced with torch's DDP and FSDP2 under
                                        # a fake process group; writes the results section of
                                        # docs/sharding.md
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from capacity.accuracy import (accuracy_models, full_matrix, known_deviation, loop_matrix,  # noqa: E402
                               sharding_matrix)
from capacity.validation import compare  # noqa: E402

OUT = Path(__file__).resolve().parents[1] / "docs" / "accuracy.md"
LOOPS_DOC = Path(__file__).resolve().parents[1] / "docs" / "loops.md"
LOOPS_BEGIN, LOOPS_END = "<!-- bench/accuracy.py --loops: begin -->", "<!-- bench/accuracy.py --loops: end -->"
SHARDING_DOC = Path(__file__).resolve().parents[1] / "docs" / "sharding.md"
SHARDING_BEGIN, SHARDING_END = ("<!-- bench/accuracy.py --sharding: begin -->",
                                "<!-- bench/accuracy.py --sharding: end -->")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="only context 128")
    ap.add_argument("--out", default=str(OUT))
    ap.add_argument("--loops", action="store_true",
                    help="trace the training loops instead (capacity.accuracy.loop_matrix); results go to docs/loops.md")
    ap.add_argument("--sharding", action="store_true",
                    help="trace ranks of sharded runs instead (capacity.accuracy.sharding_matrix); results go "
                         "to docs/sharding.md")
    ap.add_argument("--models", help="comma-separated model types (default: all; --sharding: presets)")
    args = ap.parse_args()
    if args.sharding:
        return run_sharding(args.models.split(",") if args.models else None)
    if args.loops:
        return run_loops(args.models.split(",") if args.models else list(accuracy_models()))
    rows = []
    t0 = time.time()
    matrix = [sc for sc in full_matrix() if not args.quick or sc.seq == 128]
    for mtype, cfg in accuracy_models().items():
        for sc in matrix:
            r = compare(dict(cfg), sc, steps=2, device="trace")
            rows.append((mtype, sc, r["measured_peak_bytes"], r["predicted_peak_bytes"], r["error_pct"],
                         r.get("predicted_phase"), known_deviation(mtype, sc)))
        errs = [abs(r[4]) for r in rows if r[0] == mtype]
        print(f"{mtype:9s} median |error| {statistics.median(errs):5.2f}%  worst {max(errs):5.2f}%  "
              f"({len(errs)} cases, {time.time() - t0:.0f} s)", flush=True)
    write_report(rows, Path(args.out), time.time() - t0)
    return 0


def _summary(rows) -> list[str]:
    lines = ["| method | cases | median abs error | worst abs error | within 3% |",
             "|---|---|---|---|---|"]
    for method in ("bp", "mezo", "inference"):
        errs = [abs(r[4]) for r in rows if r[1].method == method]
        if errs:
            lines.append(f"| {method} | {len(errs)} | {statistics.median(errs):.2f}% | {max(errs):.2f}% | "
                         f"{sum(e <= 3 for e in errs)}/{len(errs)} |")
    errs = [abs(r[4]) for r in rows]
    lines.append(f"| all | {len(errs)} | {statistics.median(errs):.2f}% | {max(errs):.2f}% | "
                 f"{sum(e <= 3 for e in errs)}/{len(errs)} |")
    clean = [abs(r[4]) for r in rows if r[6] is None]
    lines.append(f"| outside the known deviations | {len(clean)} | {statistics.median(clean):.2f}% | "
                 f"{max(clean):.2f}% | {sum(e <= 3 for e in clean)}/{len(clean)} |")
    return lines


def write_report(rows, path: Path, seconds: float) -> None:
    lines = ["# Accuracy: predicted against traced peak memory", "",
             "Produced by `python bench/accuracy.py` "
             f"({len(rows)} traced steps in {seconds:.0f} s). Each case runs two steps of the real "
             "Hugging Face `transformers` model under `FakeTensorMode` with "
             "`torch.distributed._tools.mem_tracker.MemTracker` (the step semantics of "
             "docs/step_semantics.md) and sets the peak of the second step beside "
             "`capacity.estimate(..., target='cpu')`. Error = (predicted - traced) / traced.",
             "", "## Summary", ""] + _summary(rows) + [
             "", "## Where the model is off, and why", "",
             "Cases marked as known deviations name their cause in "
             "`capacity.accuracy.known_deviation` (none are open at the moment). What remains is "
             "structural:",
             "- The attention and MLP backward transients are counted at their worst point from the "
             "operators' definitions (which gradients are live together); where the real order of "
             "frees differs, BP cases land a few percent off, mostly over, at full checkpointing.",
             "- Gemma in fp32 at short context is slightly over-predicted in the forward (about 2%).",
             "",
             "Mechanisms found by tracing and now modelled (each was a miss of 3-14% before): the trace used to take a code path a real "
             "run does not (transformers treats fake tensors as graph tracing, so it built an SDPA "
             "causal mask every layer kept; `capacity/validation/faithful.py` now gives the real "
             "run's answer); the flash kernels' output layout makes the output projection's input "
             "the same tensor; a checkpointed layer's recomputed forward holds the fp32 softmax copy; "
             "the fp32 softmax's backward result is fp32; at batch 1, reshapes that copy at larger "
             "batches are views (repeat_kv with one key/value head; NeoX's v, which then keeps the "
             "whole fused qkv projection); a tied embedding's head gradient waits in autograd's input buffer through "
             "the whole backward (its AccumulateGrad needs both gradients) and is summed out of place "
             "with the embedding's; in a forward pass without autograd, each family's forward keeps "
             "the embedding output, GPT-2's and OPT's position embeddings and the returned attention "
             "probabilities referenced while the MLP runs; under mixed precision (autocast) the "
             "residual stream and the norms are fp32 and every linear keeps its own 16-bit cast of "
             "its input.",
             "- Everything here is CPU kernel semantics (the trace cannot fake CUDA tensors "
             "without a GPU); the CUDA differences (1-byte dropout masks, fp32 LayerNorm "
             "statistics, Adam's `step` on the host) are modelled but not yet measured.",
             "", "## Every case", "",
             "| model type | method | optimizer | L'/L | dtype | attention | batch | seq | traced bytes | predicted bytes | error | peak phase | known deviation |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for mtype, sc, meas, pred, err, phase, known in rows:
        lines.append(f"| {mtype} | {sc.method} | {sc.optimizer if sc.method == 'bp' else '-'} | {sc.keep} | "
                     f"{sc.dtype}{' mixed' if sc.mixed_precision else ''} | {sc.attention} | {sc.batch} | {sc.seq} | {meas:,} | {pred:,} | "
                     f"{err:+.2f}% | {phase} | {'yes' if known else ''} |")
    path.write_text("\n".join(lines) + "\n")
    print("\n".join(_summary(rows)))
    print(f"wrote {path}")


def loop_label(sc) -> str:
    """What a loop case varies, in a few words."""
    lp = sc.loop
    if sc.method == "mezo":
        return f"MeZO {lp.mezo_impl}, n = {lp.mezo_n}"
    parts = [lp.name, f"{sc.optimizer} {sc.optimizer_impl}"]
    defaults = {"trainer": dict(hold_outputs=False, use_cache=True)}.get(lp.name, dict(hold_outputs=True, use_cache=False))
    if lp.hold_outputs != defaults["hold_outputs"]:
        parts.append("outputs held" if lp.hold_outputs else "outputs dropped")
    if lp.use_cache != defaults["use_cache"]:
        parts.append("KV cache" if lp.use_cache else "no KV cache")
    if lp.grad_accum > 1:
        parts.append(f"K = {lp.grad_accum}")
    if not lp.zero_grad_to_none:
        parts.append("zeroed gradients kept")
    if sc.keep < 1:
        parts.append(f"L'/L = {sc.keep:g}")
    if sc.mixed_precision:
        parts.append("mixed precision")
    return ", ".join(parts)


def run_loops(models: list[str]) -> int:
    """Trace every model type over the loop matrix; replace the results section of
    docs/loops.md and print its summary."""
    rows = []
    t0 = time.time()
    for mtype in models:
        for sc in loop_matrix():
            r = compare(dict(accuracy_models()[mtype]), sc, steps=2, device="trace")
            rows.append((mtype, sc, r["measured_peak_bytes"], r["predicted_peak_bytes"], r["error_pct"],
                         r.get("predicted_phase")))
        errs = [abs(r[4]) for r in rows if r[0] == mtype]
        print(f"{mtype:9s} median |error| {statistics.median(errs):6.3f}%  worst {max(errs):6.3f}%  "
              f"({len(errs)} cases, {time.time() - t0:.0f} s)", flush=True)
    seconds = time.time() - t0
    labels = list(dict.fromkeys(loop_label(sc) for _, sc, *_ in rows))
    summary = ["| loop setting | cases | median abs error | worst abs error | within 2% |", "|---|---|---|---|---|"]
    for label in labels + ["all"]:
        errs = [abs(r[4]) for r in rows if label == "all" or loop_label(r[1]) == label]
        summary.append(f"| {label} | {len(errs)} | {statistics.median(errs):.3f}% | {max(errs):.3f}% | "
                       f"{sum(e <= 2 for e in errs)}/{len(errs)} |")
    detail = ["| model type | loop setting | method | dtype | attention | batch | seq | traced bytes | predicted bytes | error | peak phase |",
              "|---|---|---|---|---|---|---|---|---|---|---|"]
    for mtype, sc, meas, pred, err, phase in rows:
        detail.append(f"| {mtype} | {loop_label(sc)} | {sc.method} | {sc.dtype} | {sc.attention} | {sc.batch} | {sc.seq} | "
                      f"{meas:,} | {pred:,} | {err:+.3f}% | {phase} |")
    section = [LOOPS_BEGIN, "",
               f"Produced by `python bench/accuracy.py --loops` ({len(rows)} traced steps of "
               f"{len(models)} model types in {seconds:.0f} s on 2 cores). Error = (predicted − traced) / traced.", "",
               "### Summary", ""] + summary + ["", "### Every case", ""] + detail + ["", LOOPS_END]
    text = LOOPS_DOC.read_text() if LOOPS_DOC.exists() else f"# Training loops\n\n{LOOPS_BEGIN}\n{LOOPS_END}\n"
    if LOOPS_BEGIN not in text or LOOPS_END not in text:
        text = text.rstrip("\n") + f"\n\n{LOOPS_BEGIN}\n{LOOPS_END}\n"
    head, rest = text.split(LOOPS_BEGIN, 1)
    tail = rest.split(LOOPS_END, 1)[1]
    LOOPS_DOC.write_text(head + "\n".join(section) + tail)
    print("\n".join(summary))
    print(f"wrote the results section of {LOOPS_DOC}")
    return 0


def _replace_section(path: Path, begin: str, end: str, section: list[str], title: str) -> None:
    text = path.read_text() if path.exists() else f"# {title}\n\n{begin}\n{end}\n"
    if begin not in text or end not in text:
        text = text.rstrip("\n") + f"\n\n{begin}\n{end}\n"
    head, rest = text.split(begin, 1)
    path.write_text(head + "\n".join(section) + rest.split(end, 1)[1])


def sharding_label(sc) -> str:
    pl, lp = sc.parallel, sc.loop
    what = "MeZO" if sc.method == "mezo" else f"BP {lp.name} ({sc.optimizer} {sc.optimizer_impl})"
    return f"{pl.sharding}{' + offload' if pl.offload_optimizer else ''}, {what}"


def run_sharding(presets: list[str] | None) -> int:
    """Rank 0 (zero1: the heaviest rank) of every case of the sharding matrix traced with
    torch's own DDP / FSDP2 under a fake process group (capacity.validation.sharded,
    extrapolated exactly from 3- and 4-layer traces) beside capacity's per-device
    prediction; replaces the results section of docs/sharding.md."""
    from capacity.validation.sharded import compare_sharded
    rows = []
    t0 = time.time()
    for preset, sc in sharding_matrix():
        if presets and preset not in presets:
            continue
        r = compare_sharded(preset, sc, steps=3)
        rows.append((preset, sc, r["measured_peak_bytes"], r["predicted_peak_bytes"], r["error_pct"],
                     r.get("predicted_phase"), r.get("host_peak_bytes", 0), r["trace_mode"], r["trace_seconds"]))
        print(f"{preset:12s} N={sc.parallel.devices:<3d} {sharding_label(sc):45s} traced {r['measured_peak_bytes']:>16,} "
              f"predicted {r['predicted_peak_bytes']:>16,}  {r['error_pct']:+.3f}%  ({time.time() - t0:.0f} s)", flush=True)
    seconds = time.time() - t0
    errs = [abs(r[4]) for r in rows]
    summary = ["| cases | median abs error | worst abs error | within 1% | within 3% |", "|---|---|---|---|---|",
               f"| {len(errs)} | {statistics.median(errs):.3f}% | {max(errs):.3f}% | {sum(e <= 1 for e in errs)}/{len(errs)} | "
               f"{sum(e <= 3 for e in errs)}/{len(errs)} |"]
    detail = ["| model | devices | sharding, method | traced per-rank peak | predicted | error | predicted peak moment | "
              "host (offload) | trace | trace s |", "|---|---|---|---|---|---|---|---|---|---|"]
    for preset, sc, meas, pred, err, phase, host, mode, secs in rows:
        detail.append(f"| {preset} | {sc.parallel.devices} | {sharding_label(sc)} | {meas:,} B ({meas / 1e9:.2f} GB) | "
                      f"{pred:,} B | {err:+.3f}% | {phase} | {f'{host / 1e9:.2f} GB' if host else ''} | {mode} | {secs:.0f} |")
    section = [SHARDING_BEGIN, "",
               f"Produced by `python bench/accuracy.py --sharding` ({len(rows)} traced ranks in {seconds:.0f} s on "
               "2 shared cores): batch 1 per device, context 512, bf16 (BP: mixed precision), eager attention, "
               "target cpu. Error = (predicted − traced) / traced.", "",
               "### Summary", ""] + summary + ["", "### Every case", ""] + detail + ["", SHARDING_END]
    _replace_section(SHARDING_DOC, SHARDING_BEGIN, SHARDING_END, section, "Many devices")
    print("\n".join(summary))
    print(f"wrote the results section of {SHARDING_DOC}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
