"""The command line: `python -m capacity {estimate,fit,presets,validate} ...`.

Bad input exits with status 2 and one line on stderr naming the problem; never a traceback.
Exit codes: 0 done; 2 bad input; 3, 4, 5 (validate: no CUDA, bad model folder, out of memory);
6 cancelled (Ctrl-C) or timed out; 1 only for a bug (one line; CAPACITY_DEBUG=1 shows the
traceback). docs/reliability.md lists what is checked.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import replace

from . import (ATTENTIONS, DTYPES, METHODS, OPTIMIZERS, CUDA_CONTEXT_BYTES, GB, GiB,
               Parallel, Scenario, attention_note, context_note, estimate, families, largest_batch, largest_preset,
               largest_scaled_model, load_hf_config, load_preset, longest_context, parameter_count,
               parse_bytes, preset_family, relative_model_size)
from .inverse import fits_table
from .loop_args import add_loop_arguments, loop_from_args
from .memory import describe_loop, resolved_loop
from .presets import find_family
from .inverse import DEVICE_COUNTS, fewest_devices, on_devices
from .parallel_args import add_parallel_arguments, parallel_from_args
from .scenario import EXPERTS, ROUTINGS
from .peft_args import add_peft_arguments, describe_peft, peft_from_args
from .shape import ModelShape


class BadArguments(Exception):
    """The command line could not be parsed (exit 2); main() reports it."""


class _Parser(argparse.ArgumentParser):
    """argparse whose errors main() reports on one line, exit code 2."""

    MAX_MESSAGE = 300   # characters: a 5000-digit value is not echoed in full

    def error(self, message: str):
        if len(message) > self.MAX_MESSAGE:
            message = message[:self.MAX_MESSAGE - 3] + "..."
        raise BadArguments(message)


def _add_model_args(p: argparse.ArgumentParser) -> None:
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--config", metavar="PATH", help="a Hugging Face config.json (or its folder)")
    src.add_argument("--preset", metavar="NAME", help="a preset; see `python -m capacity presets`")


def _add_scenario_args(p: argparse.ArgumentParser, method_required: bool = True) -> None:
    if method_required:
        p.add_argument("--method", required=True, choices=METHODS)
    p.add_argument("--optimizer", default="adamw", choices=OPTIMIZERS, help="BP optimizer (default adamw)")
    p.add_argument("--batch", type=int, default=1, help="sequences per step (default 1)")
    p.add_argument("--seq", type=int, default=512, help="tokens per sequence (default 512)")
    p.add_argument("--dtype", default="bf16", choices=tuple(DTYPES),
                   help="precision the model is held and trained in (default bf16)")
    p.add_argument("--mixed-precision", action="store_true",
                   help="fp32 master weights, gradients and optimizer states with 16-bit compute")
    p.add_argument("--keep", type=float, default=1.0,
                   help="checkpoint ratio L'/L: share of layers keeping activations (1: no checkpointing)")
    p.add_argument("--attention", default="sdpa", choices=ATTENTIONS,
                   help="attention implementation (default sdpa: what transformers runs unless told otherwise)")
    p.add_argument("--target", default="cuda", choices=("cuda", "cpu"),
                   help="kernels to model: cuda (default) or cpu")
    _add_experts_args(p)
    p.add_argument("--json", action="store_true", help="print one JSON object")
    add_peft_arguments(p)
    add_loop_arguments(p)
    add_parallel_arguments(p)


def _add_experts_args(p: argparse.ArgumentParser) -> None:
    """A mixture of experts' implementation and routing (no effect on a dense model)."""
    p.add_argument("--experts", default="grouped_mm", choices=EXPERTS,
                   help="mixture of experts: grouped_mm (transformers' default; memory does not depend on the "
                        "routing) or eager (the per-expert loop)")
    p.add_argument("--routing", default="balanced", choices=ROUTINGS,
                   help="mixture of experts under --experts eager: balanced (default) or worst (every token to the "
                        "same top-k experts)")


def _shape(args) -> ModelShape:
    return load_preset(args.preset) if args.preset is not None else load_hf_config(args.config)


def _scenario(args, method: str | None = None) -> Scenario:
    return Scenario(method=method or args.method, optimizer=args.optimizer, batch=args.batch,
                    seq=args.seq, dtype=args.dtype, mixed_precision=args.mixed_precision,
                    keep=args.keep, attention=args.attention, target=args.target,
                    peft=peft_from_args(args), loop=loop_from_args(args), parallel=parallel_from_args(args),
                    experts=args.experts, routing=args.routing)


def _row(label: str, n: int) -> str:
    return f"  {label:<24s} {n / GB:>12,.3f} GB {n / GiB:>12,.3f} GiB"


def cmd_estimate(args) -> int:
    shape, sc = _shape(args), _scenario(args)
    est = estimate(shape, sc)
    note = context_note(shape, sc.seq)
    pl = sc.parallel
    attn_note = attention_note(shape, sc)
    if args.json:
        print(_strict_json({"model": shape.name, "params": est.params, "active_params": est.active_params,
                            "trainable_params": est.trainable_params,
                            "moe_note": est.moe_note or None, "peak_bytes": est.peak_bytes,
                            "phase": est.phase, "breakdown": est.breakdown, "phases": est.phases,
                            "textbook": est.textbook, "host_bytes": est.host_bytes,
                            "host_breakdown": est.host_breakdown, "cuda_context_bytes": CUDA_CONTEXT_BYTES,
                            "context_note": note, "attention_note": attn_note, "loop": resolved_loop(shape, sc),
                            "scenario": sc.to_dict()}))
        return 0
    print(f"{shape.name}: {est.params:,} parameters; {sc.method}, batch {sc.batch}, seq {sc.seq}, "
          f"{sc.dtype}{' mixed' if sc.mixed_precision else ''}, L'/L={sc.keep}, {sc.attention}")
    print(f"Trained: {describe_peft(sc.peft, sc.mixed_precision)}; {est.trainable_params:,} trainable parameters")
    print(f"Loop: {describe_loop(shape, sc)}")
    if pl.sharding != "none":
        print(f"{pl.devices} devices, sharding {pl.sharding}"
              + (", optimizer offloaded to the host" if pl.offload_optimizer else "")
              + f"; every figure is one device's (batch {sc.batch} per device)")
    if est.active_params != est.params:
        print(f"Active parameters per token: {est.active_params:,} (mixture of experts: its top-k experts)")
    if est.moe_note:
        print(f"Mixture of experts, {est.moe_note}.")
    for n in (note, attn_note):
        if n:
            print(f"Note: {n}.")
    print(f"Peak at '{est.phase}' (live tensors; CUDA context of about "
          f"{CUDA_CONTEXT_BYTES / GiB:.2f} GiB not included):")
    for term, n in est.breakdown.items():
        if n:
            print(_row(term, n))
    print(_row("peak", est.peak_bytes))
    if pl.offload_optimizer:
        print("Host memory (optimizer offload), at its highest:")
        for term, n in est.host_breakdown.items():
            print(_row(term, n))
        print(_row("host", est.host_bytes))
    print("Textbook form (weights + gradients + optimizer states + Korthikanti activations"
          + (", ZeRO's per-device model states" if pl.sharding != "none" else "") + "):")
    for term, n in est.textbook.items():
        print(_row(term, n))
    return 0


def _devices_needed(shape: ModelShape, sc: Scenario, budget: int) -> dict:
    """The fewest devices (DEVICE_COUNTS) whose budget each holds one step of `sc`, with
    its sharding (fsdp when none is given)."""
    if sc.parallel.sharding == "none":
        sc = replace(sc, parallel=Parallel(devices=1, sharding="fsdp", offload_optimizer=False))
    try:
        n, est = fewest_devices(shape, sc, budget)
    except ValueError as err:   # a setting not modelled over several devices (e.g. PEFT)
        return {"devices": None, "sharding": sc.parallel.sharding, "not_modelled": str(err)}
    if n is None:
        return {"devices": None, "sharding": sc.parallel.sharding, "tried": list(DEVICE_COUNTS)}
    return {"devices": n, "sharding": on_devices(sc, n).parallel.sharding, "peak_bytes": est.peak_bytes,
            "host_bytes": est.host_bytes}


def cmd_fit(args) -> int:
    budget = parse_bytes(args.budget, what="budget", require_unit=True)
    shape = _shape(args) if (args.preset is not None or args.config is not None) else None
    out: dict = {"budget_bytes": budget, "loop": _scenario(args, "bp").to_dict()["loop"]}
    methods = [args.method] if args.method else ["bp", "mezo", "inference"]
    family = find_family(args.family) if args.family else (
        preset_family(args.preset) if args.preset is not None else None)
    # No model and no family: the largest preset of every family, and the largest of all.
    searched = [family] if family else (list(families()) if shape is None else [])
    for m in methods:
        sc = _scenario(args, m)
        res: dict = {}
        if searched:
            found, refused = {}, {}
            for f in searched:
                try:
                    found[f] = largest_preset(f, budget, sc)
                except ValueError as err:
                    if len(searched) == 1:
                        raise                 # the family asked for: its reason is the answer
                    found[f], refused[f] = (None, None), str(err)    # e.g. a context beyond its positions
            fitting = [(name, est) for name, est in found.values() if name is not None]
            name, est = max(fitting, key=lambda pair: pair[1].params, default=(None, None))
            res["largest_preset"] = name
            res["largest_preset_peak_bytes"] = est.peak_bytes if est else None
            if len(searched) > 1:
                res["largest_preset_by_family"] = {f: name for f, (name, _) in found.items()}
                if refused:
                    res["families_refused"] = refused
        if shape is not None:
            big, params = largest_scaled_model(shape, budget, sc)
            res["largest_scaled_params"] = params
            res["longest_context"] = longest_context(shape, sc, budget)
            res["largest_batch"] = largest_batch(shape, sc, budget)
            note = context_note(shape, res["longest_context"])
            if note:
                res["longest_context_note"] = note
            res["devices_needed"] = _devices_needed(shape, sc, budget)
        out[m] = res
    if shape is not None:
        out["relative_model_size_mezo_over_bp"] = relative_model_size(
            shape, budget, _scenario(args, "bp"), _scenario(args, "mezo"))
    # Every way of fine-tuning side by side (full, LoRA, QLoRA by BP; MeZO full, LoRA on a
    # 16-, 8- and 4-bit base), with the LoRA settings given.
    out["variants"] = fits_table(budget, _scenario(args, "bp"), shape=shape, family=family)
    if args.json:
        print(_strict_json(out))
        return 0
    pl = _scenario(args, methods[0]).parallel
    per = (f" per device, {pl.devices} device{'s' if pl.devices > 1 else ''}, sharding {pl.sharding}"
           if pl.sharding != "none" else "")
    print(f"Budget {budget / GB:,.2f} GB ({budget / GiB:,.2f} GiB), read from {args.budget!r}{per}; loop {args.loop}; "
          f"trained: {describe_peft(_scenario(args, 'bp').peft)}")
    for m in methods:
        print(f"{m}:")
        for k, v in out[m].items():
            if k == "devices_needed":
                shown = (f"{v['devices']} ({v['sharding']}, peak {v['peak_bytes'] / GB:,.2f} GB per device)"
                         if v["devices"] else f"not answered: {v['not_modelled']}" if "not_modelled" in v
                         else f"more than {max(DEVICE_COUNTS)} ({v['sharding']})")
                print(f"  {k:<26s} {shown}")
            elif isinstance(v, dict):
                print(f"  {k}:")
                refused = out[m].get("families_refused", {})
                for f, name in v.items():
                    shown = name if k == "families_refused" else name or ("n/a (below)" if f in refused else "none fits")
                    print(f"    {f:<24s} {shown}")
            else:
                print(f"  {k:<26s} {v if not isinstance(v, int) or v < 10**6 else f'{v:,}'}")
    if "relative_model_size_mezo_over_bp" in out:
        print(f"P_MeZO / P_BP = {out['relative_model_size_mezo_over_bp']:.2f}")
    _print_variants(out["variants"])
    return 0


def _print_variants(table: dict) -> None:
    print("Largest model that fits, by way of fine-tuning (LoRA settings as given; QLoRA: 4-bit NF4, double quant):")
    for row in table["rows"]:
        if "error" in row:
            print(f"  {row['variant']:<17s} cannot run: {row['error']}")
            continue
        parts = []
        if "largest_preset" in row:
            parts.append(f"preset {row['largest_preset'] or 'none'}")
        if "largest_scaled_params" in row:
            parts.append(f"scaled {row['largest_scaled_params'] / 1e9:,.2f}B parameters")
        print(f"  {row['variant']:<17s} {'; '.join(parts)}")
    if table["ratios"]:
        print("P_MeZO / P_BP (scaled models):")
        for r in table["ratios"]:
            print(f"  {r['mezo']:<17s} / {r['bp']:<8s} {r['ratio']:.2f}")


def _strict_json(obj) -> str:
    """JSON without NaN or Infinity (not JSON; a ratio with nothing fitting is infinite): null."""
    from .validation.cli import _jsonable
    return json.dumps(_jsonable(obj), allow_nan=False)


def cmd_presets(args) -> int:
    fams = families()
    if args.json:
        print(json.dumps({f: {n: parameter_count(load_preset(n)) for n in names} for f, names in fams.items()}))
        return 0
    for f, names in fams.items():
        print(f"{f}: " + ", ".join(f"{n} ({parameter_count(load_preset(n)) / 1e9:.2f}B)" for n in names))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="python -m capacity", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    p = sub.add_parser("estimate", help="peak memory of one step, by term")
    _add_model_args(p)
    _add_scenario_args(p)
    p.set_defaults(func=cmd_estimate)
    p = sub.add_parser("fit", help="what fits a budget: largest model, context, batch; P_MeZO/P_BP")
    p.add_argument("--budget", required=True, help="with its unit: e.g. 16GB (10^9 bytes), 12GiB (2^30 bytes)")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--config", metavar="PATH")
    src.add_argument("--preset", metavar="NAME")
    p.add_argument("--family", help="a preset family, e.g. OPT, Llama-2, GPT-2 (any case); "
                                    "without a model or family: every family")
    p.add_argument("--method", choices=METHODS, help="one method (default: all)")
    _add_scenario_args(p, method_required=False)
    p.set_defaults(func=cmd_fit)
    p = sub.add_parser("presets", help="list the model presets")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_presets)
    from .validation.cli import add_parser   # standard library only until `validate` runs
    add_parser(sub)
    return parser


def _empty_source(args) -> str | None:
    """The first model-source flag given as an empty string (`--config ""` would otherwise
    read ./config.json), or None."""
    for name in ("preset", "config", "model_dir", "family"):
        value = getattr(args, name, None)
        if value is not None and not value.strip():
            return "--" + name.replace("_", "-")
    return None


def _unreadable(err: OSError) -> str:
    """One line for a file that exists but cannot be read (permissions, a folder, ...)."""
    where = f" {str(err.filename)!r}" if err.filename else ""
    return f"cannot read{where}: {err.strerror or type(err).__name__}"


def _bad_input(prog: str, message: str, argv: list[str]) -> int:
    """One line on stderr, exit 2; `validate --json` also gets its JSON result on stdout."""
    print(f"{prog}: error: {message}", file=sys.stderr, flush=True)
    if argv[:1] == ["validate"] and "--json" in argv:
        print(json.dumps({"error": "bad input", "exit_code": 2, "message": message}), flush=True)
    return 2


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except BadArguments as err:
        command = argv[0] if argv and argv[0] in ("estimate", "fit", "presets", "validate") else ""
        return _bad_input(f"python -m capacity {command}".rstrip(), str(err), argv)
    except KeyboardInterrupt:
        return _cancelled("")
    from .validation.cli import flagged, option_strings
    prog = f"python -m capacity {args.command}"
    empty = _empty_source(args)
    if empty:
        return _bad_input(prog, f"{empty}: must not be empty", argv)
    flags = option_strings(parser, args.command)
    try:
        return args.func(args)
    except ValueError as err:
        return _bad_input(prog, flagged(str(err), flags), argv)
    except BrokenPipeError:
        return 0
    except OverflowError as err:
        return _bad_input(prog, f"a size is too large ({err})", argv)
    except OSError as err:   # PermissionError, IsADirectoryError, ...: an unreadable input
        return _bad_input(prog, _unreadable(err), argv)
    except KeyboardInterrupt:
        return _cancelled(prog)
    except Exception as err:  # noqa: BLE001 - a bug: one line (exit 1), the traceback on request
        if os.environ.get("CAPACITY_DEBUG"):
            raise
        print(f"{prog}: internal error (a bug; CAPACITY_DEBUG=1 shows the traceback): "
              f"{type(err).__name__}: {str(err)[:300]}", file=sys.stderr)
        return 1


def _cancelled(prog: str) -> int:
    print(f"{prog or 'python -m capacity'}: cancelled (Ctrl-C)", file=sys.stderr)
    return 6
