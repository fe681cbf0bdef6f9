"""What is trained, on the command line, shared by `estimate`, `fit` and `validate`.

    --peft {none,lora,prefix,freeze}   train every parameter, LoRA adapters, a prefix, the top layers
    --lora-rank R --lora-alpha A --lora-dropout P --lora-targets NAMES|all-linear
    --prefix-tokens P                  prefix tuning's virtual tokens
    --trainable-layers K               --peft freeze: the top K decoder layers
    --weights-bits {16,8,4} --quant {nf4,fp4} --double-quant   the base weights (bitsandbytes)

The defaults are peft's (LoraConfig: r 8, alpha 8, dropout 0, the model type's default
targets); docs/peft.md describes each mechanism.
"""

from __future__ import annotations

import argparse
import math

from .scenario import PEFT_METHODS, QUANT_TYPES, WEIGHT_BITS, Peft


def add_peft_arguments(p: argparse.ArgumentParser) -> None:
    """What is trained and how the base weights are stored (capacity.scenario.Peft)."""
    g = p.add_argument_group("parameter-efficient fine-tuning (docs/peft.md)")
    g.add_argument("--peft", default="none", choices=PEFT_METHODS,
                   help="train LoRA adapters, a key/value prefix, or only the top layers (default none: every parameter)")
    g.add_argument("--lora-rank", type=int, default=8, metavar="R", help="LoRA rank r (default 8, peft's)")
    g.add_argument("--lora-alpha", type=float, default=8.0, metavar="A", help="LoRA alpha (default 8, peft's)")
    g.add_argument("--lora-dropout", type=float, default=0.0, metavar="P", help="dropout on the adapters' input (default 0, peft's)")
    g.add_argument("--lora-targets", default=None, metavar="NAMES",
                   help="peft's target_modules: comma-separated module names (q_proj,v_proj; c_attn) or all-linear "
                        "(default: peft's targets for the model type)")
    g.add_argument("--prefix-tokens", type=int, default=20, metavar="P", help="virtual tokens of the prefix (default 20)")
    g.add_argument("--trainable-layers", type=int, default=1, metavar="K",
                   help="--peft freeze: train only the top K decoder layers (default 1)")
    g.add_argument("--weights-bits", type=int, default=16, choices=WEIGHT_BITS,
                   help="base weights: 16 (the dtype), 8 (bitsandbytes LLM.int8) or 4 (bitsandbytes NF4/FP4) (default 16)")
    g.add_argument("--quant", default="nf4", choices=QUANT_TYPES, help="4-bit data type (default nf4)")
    g.add_argument("--double-quant", action="store_true", help="4-bit: quantize the block statistics too")


def peft_from_args(args) -> Peft:
    """capacity.scenario.Peft from parsed arguments (ValueError on bad values)."""
    targets = () if args.lora_targets is None else tuple(t.strip() for t in args.lora_targets.split(",") if t.strip())
    if args.lora_targets is not None and not targets:
        raise ValueError("--lora-targets: give module names (q_proj,v_proj) or all-linear")
    if not math.isfinite(args.lora_alpha) or not math.isfinite(args.lora_dropout):
        raise ValueError("--lora-alpha and --lora-dropout must be finite numbers")
    alpha = int(args.lora_alpha) if float(args.lora_alpha).is_integer() else args.lora_alpha
    return Peft(method=args.peft, lora_rank=args.lora_rank, lora_alpha=alpha, lora_dropout=args.lora_dropout,
                lora_targets=targets, prefix_tokens=args.prefix_tokens, trainable_layers=args.trainable_layers,
                weights_bits=args.weights_bits, quant=args.quant, double_quant=args.double_quant)


def describe_peft(pf: Peft, mixed_precision: bool = False) -> str:
    """One line: what is trained, and how the base weights are stored (fp32 under mixed
    precision)."""
    what = {"none": "every parameter",
            "lora": f"LoRA r={pf.lora_rank} alpha={pf.lora_alpha:g} dropout={pf.lora_dropout:g} "
                    f"targets={','.join(pf.lora_targets) or 'peft default'}",
            "prefix": f"prefix tuning, {pf.prefix_tokens} virtual tokens",
            "freeze": f"the top {pf.trainable_layers} layers"}[pf.method]
    bits = {16: ("fp32 base (mixed precision)" if mixed_precision else "16-bit base") if pf.method != "none" else "",
            8: "8-bit base (bitsandbytes LLM.int8)",
            4: f"4-bit {pf.quant} base{' with double quantization' if pf.double_quant else ''} (bitsandbytes)"}
    return ", ".join(x for x in (what, bits[pf.weights_bits]) if x)
