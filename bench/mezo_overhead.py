"""MeZO's overhead over inference, from one run: memory and time.

    python bench/mezo_overhead.py [--preset gpt2] [--batch 1] [--seq 128] [--dtype fp32]
                                  [--device cpu] [--steps 4]

Prints two ratios:
  peak ratio  MeZO peak / inference peak (same model, batch, context): 1.00 means MeZO
              needs nothing beyond inference (target: at most 1.01);
  time ratio  MeZO step time / (2 × inference forward time): the cost of the in-place
              perturbations and the update beyond the two forward passes.
Peaks come from `measure` (on cuda torch.cuda.max_memory_allocated, on cpu MemTracker's).
Times come from a separate loop without MemTracker (its per-operation bookkeeping would
slow the many small perturbation ops far more than the forward's large ones): the median of
the steps after the first.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from capacity.scenario import Scenario  # noqa: E402
from capacity.validation import measure  # noqa: E402
from capacity.validation.data import Batches  # noqa: E402
from capacity.validation.models import build_model, resolve_model  # noqa: E402
from capacity.validation.steps import Stepper  # noqa: E402


def step_seconds(preset: str, method: str, batch: int, seq: int, dtype: str, device: str, steps: int) -> list:
    """Wall-clock seconds of each step, untracked."""
    import torch
    shape, cfg = resolve_model(preset)
    with torch.device(device):
        model = build_model(cfg, dtype)
    stepper = Stepper(model, method)
    batches = Batches(shape.vocab_size, batch, seq)
    out = []
    for i in range(steps):
        ids = batches.batch(i).to(device)
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        stepper.step(ids)
        if device == "cuda":
            torch.cuda.synchronize()
        out.append(time.perf_counter() - start)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="gpt2")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--dtype", default="fp32", choices=("fp32", "bf16", "fp16"))
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    p.add_argument("--steps", type=int, default=4)
    args = p.parse_args()

    sc = dict(batch=args.batch, seq=args.seq, dtype=args.dtype, target="cuda" if args.device == "cuda" else "cpu")
    runs = {m: measure(args.preset, Scenario(method=m, **sc), steps=2, device=args.device)
            for m in ("inference", "mezo")}
    peak = {m: r["measured_peak_bytes"] for m, r in runs.items()}
    # The first step warms up (allocations, kernel choice); the median of the rest.
    seconds = {m: statistics.median(step_seconds(args.preset, m, args.batch, args.seq, args.dtype,
                                                 args.device, args.steps)[1:])
               for m in ("inference", "mezo")}

    print(f"{args.preset}, batch {args.batch}, seq {args.seq}, {args.dtype}, device {args.device}, "
          f"{args.steps} timed steps each ({runs['mezo']['params']:,} parameters)")
    print(f"inference peak  {peak['inference']:>16,} B   forward   {seconds['inference']:.4f} s")
    print(f"MeZO peak       {peak['mezo']:>16,} B   step      {seconds['mezo']:.4f} s")
    print(f"peak ratio  MeZO / inference          = {peak['mezo'] / peak['inference']:.6f}")
    print(f"time ratio  MeZO step / (2 × forward) = {seconds['mezo'] / (2 * seconds['inference']):.3f}")


if __name__ == "__main__":
    main()
