"""The training loop on the command line, shared by `estimate`, `fit` and `validate`.

    --loop {plain,trainer}            the named loop (default: DEFAULT_LOOP)
    --optimizer-impl {forloop,foreach,fused}   overrides the loop's
    --grad-accum K                    micro-batches per optimizer step
    --hold-outputs / --drop-outputs   overrides the loop's
    --keep-zeroed-grads               optimizer.zero_grad(set_to_none=False)
    --use-cache / --no-use-cache      whether BP forwards build the KV cache (overrides the loop's)
    --mezo-impl {chunked,reference}, --mezo-n N
"""

from __future__ import annotations

import argparse

from .scenario import DEFAULT_LOOP, LOOPS, MEZO_IMPLS, OPTIMIZER_IMPLS, Loop, loop_preset


def add_loop_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("training loop (docs/loops.md)")
    g.add_argument("--loop", default=DEFAULT_LOOP, choices=tuple(LOOPS),
                   help=f"the code that runs the step: plain (a hand-written loop) or trainer "
                        f"(transformers.Trainer with its defaults); default {DEFAULT_LOOP}")
    g.add_argument("--optimizer-impl", choices=OPTIMIZER_IMPLS, default=None,
                   help="torch.optim implementation (default: the loop's; trainer: fused AdamW, "
                        "else torch's default for the target: foreach on cuda, forloop on cpu)")
    g.add_argument("--grad-accum", type=int, default=None, metavar="K",
                   help="micro-batches of --batch sequences per optimizer step (default 1)")
    held = g.add_mutually_exclusive_group()
    held.add_argument("--hold-outputs", dest="hold_outputs", action="store_const", const=True, default=None,
                      help="the model output (logits) stays referenced through backward (plain's default)")
    held.add_argument("--drop-outputs", dest="hold_outputs", action="store_const", const=False,
                      help="only the loss is kept before backward (trainer's default)")
    g.add_argument("--keep-zeroed-grads", action="store_true",
                   help="optimizer.zero_grad(set_to_none=False): zeroed gradients stay allocated")
    cache = g.add_mutually_exclusive_group()
    cache.add_argument("--use-cache", dest="use_cache", action="store_const", const=True, default=None,
                       help="BP forwards build transformers' KV cache (trainer's default)")
    cache.add_argument("--no-use-cache", dest="use_cache", action="store_const", const=False,
                       help="BP forwards pass use_cache=False (plain's default)")
    g.add_argument("--mezo-impl", choices=MEZO_IMPLS, default=None,
                   help="MeZO: chunked (ours, default) or reference (princeton-nlp/MeZO's trainer)")
    g.add_argument("--mezo-n", type=int, default=None, metavar="N", help="MeZO perturbations per step (default 1)")


def loop_from_args(args) -> Loop:
    """The Loop the parsed arguments name. ValueError on a bad setting."""
    return loop_preset(args.loop, optimizer_impl=args.optimizer_impl, grad_accum=args.grad_accum,
                       hold_outputs=args.hold_outputs, use_cache=args.use_cache,
                       zero_grad_to_none=False if args.keep_zeroed_grads else None,
                       mezo_impl=args.mezo_impl, mezo_n=args.mezo_n)
