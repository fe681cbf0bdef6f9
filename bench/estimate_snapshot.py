"""Snapshot of every estimate over a grid, to check that a refactor changes no number.

Dumps `estimate()` (peak, phase, breakdown, phases, textbook, parameter count), the parameter
and tensor counts and the FLOPs of every preset, of the accuracy models
(capacity/data/accuracy_models.json) and of a few scaled shapes, over a grid of scenarios
(methods, optimizers, L'/L, dtypes, mixed precision, eager/SDPA, cuda/cpu, batch and
context), plus a few inverse answers; then compares two dumps record by record.

    python bench/estimate_snapshot.py dump before.json.gz      # on the old code
    python bench/estimate_snapshot.py dump after.json.gz       # on the new code
    python bench/estimate_snapshot.py compare before.json.gz after.json.gz

Contexts beyond a learned position table (GPT-2, OPT) are left out of the grid: the model
cannot run them (and `estimate` refuses them).
"""

from __future__ import annotations

import argparse
import gzip
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import capacity as cap  # noqa: E402
from capacity.accuracy import accuracy_models  # noqa: E402
from capacity.compute import forward_flops, flops_per_step  # noqa: E402
from capacity.inverse import scaled_shape  # noqa: E402
from capacity.params import largest_tensor_params, parameter_tensor_count  # noqa: E402

PRECISIONS = [("fp32", False), ("bf16", False), ("fp16", False), ("bf16", True), ("fp16", True)]
TOKENS = [(1, 1), (1, 128), (2, 512), (8, 1000), (4, 2048), (1, 4096)]
# Learned position tables of the config's family: (key, transformers' default).
LEARNED_LIMIT = {"gpt2": ("n_positions", 1024), "opt": ("max_position_embeddings", 2048)}


def context_limit(cfg: dict) -> int | None:
    key_default = LEARNED_LIMIT.get(cfg["model_type"])
    if key_default is None:
        return None
    return cfg.get(key_default[0], key_default[1])


def scenarios(limit: int | None):
    for batch, seq in TOKENS:
        if limit is not None and seq > limit:
            continue
        for dtype, mixed in PRECISIONS:
            for attention in ("eager", "sdpa"):
                for target in ("cuda", "cpu"):
                    common = dict(batch=batch, seq=seq, dtype=dtype, mixed_precision=mixed,
                                  attention=attention, target=target)
                    for opt in ("sgd", "momentum", "adam", "adamw"):
                        for keep in (0.0, 0.3, 0.5, 1.0):
                            yield cap.Scenario(method="bp", optimizer=opt, keep=keep, **common)
                    for method in ("mezo", "inference"):
                        yield cap.Scenario(method=method, optimizer="sgd", **common)


def scenario_id(sc) -> str:
    return (f"{sc.method}/{sc.optimizer}/k{sc.keep}/{sc.dtype}{'+mixed' if sc.mixed_precision else ''}/"
            f"{sc.attention}/{sc.target}/b{sc.batch}s{sc.seq}")


def models():
    """(label, shape, config dict) of every preset, accuracy model and a few scaled shapes."""
    out = []
    for name in cap.preset_names():
        out.append((f"preset:{name}", cap.load_preset(name), cap.preset_config(name)))
    for mtype, cfg in accuracy_models().items():
        out.append((f"accuracy:{mtype}", cap.from_hf_config(dict(cfg), name=mtype), dict(cfg)))
    for name in ("gpt2", "opt-350m", "llama-2-70b", "qwen2-0.5b", "pythia-160m", "gemma-2b", "phi-2"):
        base = cap.load_preset(name)
        for units in (1, 3, 17):
            out.append((f"scaled:{name}:{units}", scaled_shape(base, units), cap.preset_config(name)))
    return out


def dump(path: Path) -> None:
    t0 = time.time()
    records = {}
    for label, shape, cfg in models():
        records[f"{label}|params"] = [cap.parameter_count(shape), parameter_tensor_count(shape),
                                      largest_tensor_params(shape)]
        for sc in scenarios(context_limit(cfg)):
            est = cap.estimate(shape, sc)
            key = f"{label}|{scenario_id(sc)}"
            records[key] = [est.peak_bytes, est.phase, est.breakdown, est.phases, est.textbook, est.params]
            if sc.method == "bp" and sc.keep == 0.5 and sc.optimizer == "adamw":
                records[f"{key}|flops"] = [forward_flops(shape, sc), flops_per_step(shape, sc)]
    # Inverse answers on models without a learned position table.
    budget = 16 * 10**9
    for name in ("llama-2-7b", "qwen2-0.5b", "pythia-410m", "gemma-2b", "phi-2", "tiny-llama"):
        shape = cap.load_preset(name)
        for method in ("bp", "mezo"):
            sc = cap.Scenario(method=method, batch=2, seq=256)
            big, params = cap.largest_scaled_model(shape, budget, sc)
            records[f"fit:{name}|{method}"] = [
                params, big.num_layers if big else None, big.hidden_size if big else None,
                cap.longest_context(shape, sc, budget), cap.largest_batch(shape, sc, budget)]
    path.parent.mkdir(parents=True, exist_ok=True)
    with gzip.open(path, "wt") as f:
        json.dump(records, f, sort_keys=True)
    print(f"{len(records)} records written to {path} in {time.time() - t0:.0f} s")


def compare(before: Path, after: Path) -> int:
    with gzip.open(before, "rt") as f:
        a = json.load(f)
    with gzip.open(after, "rt") as f:
        b = json.load(f)
    missing = sorted(set(a) - set(b))
    extra = sorted(set(b) - set(a))
    differ = [k for k in sorted(set(a) & set(b)) if a[k] != b[k]]
    print(f"{len(a)} records before, {len(b)} after: {len(set(a) & set(b))} in both, "
          f"{len(differ)} differ, {len(missing)} missing, {len(extra)} new")
    for k in differ[:20]:
        print(f"  differ  {k}\n    before {a[k]}\n    after  {b[k]}")
    for k in missing[:10]:
        print(f"  missing {k}")
    for k in extra[:10]:
        print(f"  new     {k}")
    return 1 if differ or missing else 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    d = sub.add_parser("dump")
    d.add_argument("out", type=Path)
    c = sub.add_parser("compare")
    c.add_argument("before", type=Path)
    c.add_argument("after", type=Path)
    args = ap.parse_args()
    if args.cmd == "dump":
        dump(args.out)
        return 0
    return compare(args.before, args.after)


if __name__ == "__main__":
    sys.exit(main())
