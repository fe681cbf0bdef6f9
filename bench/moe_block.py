"""One sparse mixture-of-experts block measured alone on real CPU tensors, against
capacity/moe.py's functions, byte for byte: what it keeps for backward, its forward peak
with autograd, its backward peak and its peak without autograd, for both experts
implementations (grouped_mm, eager) under balanced, worst and the router's own routing.

    python bench/moe_block.py            # 3 families x 4 shapes x 3 precisions x 2 x 3: 216 cases
    python bench/moe_block.py --quick    # the first shape only

Measured as MemTracker counts (each storage once, from the op that first returns it until it
is freed), above what exists before (the block's input x, the output gradient, the weights):
  saved     bytes the forward with autograd leaves alive, less its output
  forward   the most the forward with autograd holds at once
  backward  the most the backward holds above its start (saved set, output, its gradient),
            weight gradients included
  nograd    the most a forward without autograd holds, output included
The router's input under autocast (its 16-bit cast, N·h·2) and its cached weight copy (E·h·2)
are counted with the layer by the memory model, and are added here for the comparison.
Exit status 1 if any case misses.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import sys
import warnings
import weakref
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
from torch.utils._python_dispatch import TorchDispatchMode  # noqa: E402
from torch.utils._pytree import tree_flatten  # noqa: E402

from capacity import moe  # noqa: E402
from capacity.validation.experts import RoutingRun  # noqa: E402
from capacity.validation.models import TORCH_DTYPES, build_model  # noqa: E402

# One small config per family (h = 128, 8 experts, top 2); the shapes below override sizes.
FAMILIES = {
    "mixtral": {"model_type": "mixtral", "vocab_size": 512, "hidden_size": 128, "intermediate_size": 256,
                "num_attention_heads": 4, "num_key_value_heads": 2, "num_local_experts": 8,
                "num_experts_per_tok": 2},
    "qwen3_moe": {"model_type": "qwen3_moe", "vocab_size": 512, "hidden_size": 128, "intermediate_size": 256,
                  "moe_intermediate_size": 64, "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 32,
                  "num_experts": 8, "num_experts_per_tok": 2, "norm_topk_prob": True},
    "olmoe": {"model_type": "olmoe", "vocab_size": 512, "hidden_size": 128, "intermediate_size": 128,
              "num_attention_heads": 4, "num_key_value_heads": 4, "num_experts": 8, "num_experts_per_tok": 2,
              "pad_token_id": 0, "eos_token_id": 1},
}
EXPERTS_KEY = {"mixtral": "num_local_experts", "qwen3_moe": "num_experts", "olmoe": "num_experts"}
WIDTH_KEY = {"mixtral": "intermediate_size", "qwen3_moe": "moe_intermediate_size", "olmoe": "intermediate_size"}
# (h, I or None for the family's, E, k, batch, seq): k from 1 to 4, E from 4 to 16, E not dividing k·N.
SHAPES = [(128, None, 8, 2, 4, 128), (64, 96, 4, 1, 3, 40), (64, 32, 16, 4, 2, 48), (64, 32, 6, 2, 1, 37)]
PRECISIONS = [("fp32", False), ("bf16", False), ("bf16", True)]


class Live(TorchDispatchMode):
    """Live bytes of the storages ops return, from first sight until freed, and their peak."""

    def __init__(self, *existing):
        super().__init__()
        self.seen = {id(t.untyped_storage()): 0 for t in existing}
        self.refs = {}
        self.live = self.peak = 0

    def _free(self, key):
        self.live -= self.seen.pop(key)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor):
                st = t.untyped_storage()
                if id(st) not in self.seen:
                    self.seen[id(st)] = st.nbytes()
                    self.refs[id(st)] = weakref.ref(st, lambda _r, key=id(st): self._free(key))
                    self.live += st.nbytes()
        self.peak = max(self.peak, self.live)
        return out


def measure(family, shape, dtype, mixed, experts, routing) -> dict:
    h, width, e, k, batch, seq = shape
    cfg = {**FAMILIES[family], "num_hidden_layers": 1, "experts_implementation": experts, "hidden_size": h,
           EXPERTS_KEY[family]: e, "num_experts_per_tok": k}
    if width:
        cfg[WIDTH_KEY[family]] = width
    torch.manual_seed(0)
    model = build_model(cfg, "fp32" if mixed else dtype, "sdpa").train()
    run = RoutingRun(routing, "cpu", experts, "balanced", batch * seq)
    run.prepare(model)
    block = model.model.layers[0].mlp
    x_dtype = torch.float32 if mixed else TORCH_DTYPES[dtype]   # the post-attention norm's output
    x = torch.randn(batch, seq, h, dtype=x_dtype, requires_grad=True)
    g = torch.randn(batch, seq, h, dtype=x_dtype)
    autocast = (lambda: torch.autocast("cpu", dtype=TORCH_DTYPES[dtype])) if mixed else contextlib.nullcontext
    weights = list(block.parameters())
    out = {}
    with Live(x, g, *weights) as live, torch.no_grad(), autocast():
        y = block(x)
    out["nograd"] = live.peak
    del y
    with Live(x, g, *weights) as live:
        with autocast():
            y = block(x)
        out["forward"] = live.peak
        out["saved"] = live.live - y.untyped_storage().nbytes()
        start = live.peak = live.live
        y.backward(g)
        out["backward"] = live.peak - start
        del y
    out["counts"] = run.log[0][1]
    return out


def predicted(family, shape, dtype, mixed, experts, counts) -> dict:
    h, width, e, k, batch, seq = shape
    width = width or FAMILIES[family][WIDTH_KEY[family]]
    p = 4 if dtype == "fp32" else 2
    wide = 4 if mixed else p
    b = moe.Block(N=batch * seq, h=h, I=width, E=e, k=k, be=wide, bc=p, bl=p, bw=4 if family == "mixtral" else p,
                  wb=wide, xb=wide, normalize=family == "mixtral" or FAMILIES[family].get("norm_topk_prob", False),
                  mixed=mixed)
    router_casts = (b.N * h * 2 + e * h * 2) if mixed else 0
    if experts == "grouped_mm":
        saved = moe.grouped_mm_saved_bytes(b) + router_casts
        return {"saved": saved, "forward": saved + moe.grouped_mm_forward_extra_bytes(b),
                "backward": moe.grouped_mm_backward_peak_bytes(b), "nograd": moe.grouped_mm_nograd_peak_bytes(b)}
    saved = moe.eager_saved_bytes(b, counts) + router_casts
    return {"saved": saved, "forward": saved + moe.eager_forward_extra_bytes(b, counts),
            "backward": moe.eager_backward_peak_bytes(b, counts), "nograd": moe.eager_nograd_peak_bytes(b, counts)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="the first shape only")
    args = ap.parse_args()
    warnings.filterwarnings("ignore")
    misses = cases = 0
    for family, shape, (dtype, mixed), experts, routing in itertools.product(
            FAMILIES, SHAPES[:1] if args.quick else SHAPES, PRECISIONS, ("grouped_mm", "eager"),
            ("balanced", "worst", "measured")):
        m = measure(family, shape, dtype, mixed, experts, routing)
        p = predicted(family, shape, dtype, mixed, experts, m["counts"])
        wrong = {q: (m[q], v) for q, v in p.items() if m[q] != v}
        cases += 1
        misses += bool(wrong)
        h, width, e, k, batch, seq = shape
        print(f"{family:9s} h={h} E={e} k={k} N={batch * seq} {dtype}{'+autocast' if mixed else ''} {experts} {routing}: "
              + ("OK " if not wrong else "MISS ") + " ".join(
                  f"{q}={m[q]:,}" + (f" (predicted {v:,})" if q in wrong else "") for q, v in p.items()), flush=True)
    print(f"{cases - misses} of {cases} cases byte for byte")
    return 1 if misses else 0


if __name__ == "__main__":
    sys.exit(main())
