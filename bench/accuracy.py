"""Predicted against traced peak memory for every supported model type over the full
matrix (method, optimizer, L'/L, dtype, attention, batch and context); writes
docs/accuracy.md and prints the summary.

    python bench/accuracy.py            # full matrix, about 6 minutes on 2 cores
    python bench/accuracy.py --quick    # one context length, about 3 minutes
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from capacity.accuracy import accuracy_models, full_matrix, known_deviation  # noqa: E402
from capacity.validation import compare  # noqa: E402

OUT = Path(__file__).resolve().parents[1] / "docs" / "accuracy.md"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="only context 128")
    ap.add_argument("--out", default=str(OUT))
    args = ap.parse_args()
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
             "- **Checkpointing (L'/L < 1).** During backward, a checkpointed layer re-runs its "
             "forward; the model counts the layer's saved tensors again but not the recomputed "
             "forward's own temporaries (the fp32 softmax copy, the MLP intermediates before they "
             "are saved), so it under-predicts by up to about 6%.",
             "- **SDPA on the CPU.** The trace keeps one extra tensor of b·s² elements in the "
             "model's dtype per layer (found by scaling b, s, heads and layers; its source inside "
             "the CPU attention kernel is not identified). At s = 512 this is 3-11% of the peak. "
             "CUDA's flash kernel is a different code path; GPU measurements are still to be made "
             "(docs/validation.md).",
             "- **Gemma at long context** (head dim 64 x 8 heads wider than h) is over-predicted "
             "by 3-6%: the layer-backward transient of eager attention is modelled as a bound.",
             "- **GPT-2 and Phi forward-only in fp32** are under-predicted by 4-8%: the Python "
             "GELU composite's temporaries and fp32 attention copies in the forward are modelled "
             "coarsely.",
             "- Everything here is CPU kernel semantics (the trace cannot fake CUDA tensors "
             "without a GPU); the CUDA differences (1-byte dropout masks, fp32 LayerNorm "
             "statistics, Adam's `step` on the host) are modelled but not yet measured.",
             "", "## Every case", "",
             "| model type | method | optimizer | L'/L | dtype | attention | batch | seq | traced bytes | predicted bytes | error | peak phase | known deviation |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for mtype, sc, meas, pred, err, phase, known in rows:
        lines.append(f"| {mtype} | {sc.method} | {sc.optimizer if sc.method == 'bp' else '-'} | {sc.keep} | "
                     f"{sc.dtype} | {sc.attention} | {sc.batch} | {sc.seq} | {meas:,} | {pred:,} | "
                     f"{err:+.2f}% | {phase} | {'yes' if known else ''} |")
    path.write_text("\n".join(lines) + "\n")
    print("\n".join(_summary(rows)))
    print(f"wrote {path}")


if __name__ == "__main__":
    sys.exit(main())
