"""`python -m capacity validate`: measure a few real steps and compare with the prediction.

    python -m capacity validate (--config PATH | --preset NAME | --model-dir DIR)
        --method {bp,mezo,inference} [--optimizer {sgd,momentum,adam,adamw}] [--batch B]
        [--seq S] [--dtype {fp32,bf16,fp16}] [--keep R] [--attention {eager,sdpa}]
        [--steps N] [--device {auto,cuda,cpu,trace}] [--full-trace] [--mixed-precision]
        [--experts {grouped_mm,eager}] [--routing {measured,balanced,worst}]
        [--data PATH] [--timeout S] [--max-memory SIZE] [--dry-run] [--json]
        [--progress {bar,json,none}]
        [--peft {none,lora,prefix,freeze}] [--lora-rank R] [--lora-alpha A] [--lora-dropout P]
        [--lora-targets NAMES|all-linear] [--prefix-tokens P] [--trainable-layers K]
        [--weights-bits {16,8,4}] [--quant {nf4,fp4}] [--double-quant]
        [--devices N --sharding {ddp,zero1,zero2,fsdp} [--offload-optimizer] [--reduce-fp32]]
        [--loop {plain,trainer}] [--optimizer-impl {forloop,foreach,fused}] [--grad-accum K]
        [--hold-outputs | --drop-outputs] [--keep-zeroed-grads] [--use-cache | --no-use-cache]
        [--mezo-impl {chunked,reference}] [--mezo-n N]

With --sharding, rank 0 of N (zero1: the rank with the most optimizer state) is traced with
fake tensors and torch's fake process group (sharded.py) and its per-device peak reported.

This module imports neither torch nor transformers until a run starts, so that the
`capacity` command line stays quick for its other subcommands.

Exit codes (EXIT_CODES): 0 done; 2 bad input; 3 CUDA requested but not available; 4 model
folder missing or unreadable; 5 out of memory (the JSON result still comes, with
"oom": true); 6 timed out or cancelled. With --json the last line of stdout is one JSON
object; progress goes to stderr.

Input that cannot run is refused before anything is allocated: the arguments, the model's
config and the host memory a CPU run needs (preflight.py) are checked before torch is
imported; what only transformers can judge, right after. The signal handlers (SIGTERM,
SIGINT, the --timeout alarm) are installed first, so a stop at any point gives exit 6 and,
with --json, a result. A run started by runner.ValidationRun ends when its parent does.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import sys

from . import host

EXIT_OK, EXIT_BAD_INPUT, EXIT_NO_CUDA, EXIT_MODEL_DIR, EXIT_OOM, EXIT_STOPPED = 0, 2, 3, 4, 5, 6
EXIT_CODES = {
    EXIT_OK: "done", EXIT_BAD_INPUT: "bad input", EXIT_NO_CUDA: "CUDA requested but not available",
    EXIT_MODEL_DIR: "model folder missing or unreadable", EXIT_OOM: "out of memory",
    EXIT_STOPPED: "timed out or cancelled",
}
EXIT_INTERNAL = 1   # anything else: a bug, reported in one line (CAPACITY_DEBUG=1 shows the traceback)

MAX_STEPS = 1000                     # --steps: the peak is reached by step 3; the app caps at 100
MAX_TIMEOUT_SECONDS = 7 * 24 * 3600  # --timeout: a week

METHODS = ("bp", "mezo", "inference")
OPTIMIZERS = ("sgd", "momentum", "adam", "adamw")
DTYPES = ("fp32", "bf16", "fp16")
ATTENTIONS = ("eager", "sdpa")
DEVICES = ("auto", "cuda", "cpu", "trace")
PROGRESS = ("bar", "json", "none")
EXPERTS = ("grouped_mm", "eager")                  # capacity.scenario.EXPERTS
RUN_ROUTINGS = ("measured", "balanced", "worst")   # capacity.validation.experts.ROUTINGS

DESCRIPTION = """Run a short real fine-tune (BP or MeZO) or inference, measure the peak memory of
the steps after the first and set it beside capacity's prediction, term by term.
Devices: cuda (torch.cuda.max_memory_allocated, reserved and device-used memory),
cpu (real tensors, torch MemTracker), trace (fake tensors: any model size, no memory),
auto (cuda if available, else cpu, else trace when the run would not fit in RAM)."""

EPILOG = "exit codes: " + "; ".join(f"{code} {text}" for code, text in EXIT_CODES.items())


def add_arguments(p: argparse.ArgumentParser) -> None:
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--config", metavar="PATH", help="a Hugging Face config.json (random weights)")
    source.add_argument("--preset", metavar="NAME", help="a model preset (python -m capacity presets)")
    source.add_argument("--model-dir", metavar="DIR",
                        help="a local model folder (config.json, weights if present); never remote code")
    p.add_argument("--method", required=True, choices=METHODS)
    p.add_argument("--optimizer", default="adamw", choices=OPTIMIZERS, help="for bp (default adamw)")
    p.add_argument("--batch", type=int, default=1, help="sequences per step (default 1)")
    p.add_argument("--seq", type=int, default=128, help="tokens per sequence (default 128)")
    p.add_argument("--dtype", default="bf16", choices=DTYPES, help="default bf16")
    p.add_argument("--keep", type=float, default=1.0,
                   help="checkpoint ratio L'/L: share of layers keeping activations (default 1: none checkpointed)")
    p.add_argument("--attention", default="sdpa", choices=ATTENTIONS,
                   help="attention implementation (default sdpa: what transformers runs unless told otherwise)")
    p.add_argument("--steps", type=int, default=3, help=f"steps to run, 2 to {MAX_STEPS} (default 3)")
    p.add_argument("--device", default="auto", choices=DEVICES, help="default auto")
    p.add_argument("--full-trace", action="store_true",
                   help="trace: trace every layer of the model; by default the peak is extrapolated "
                        "exactly from traces of 3-4 layer models when that is faster")
    p.add_argument("--mixed-precision", action="store_true",
                   help="fp32 weights with autocast to --dtype (bf16 or fp16)")
    p.add_argument("--data", metavar="PATH",
                   help="a .txt or .jsonl file, or 'sample' for the shipped text (default: random tokens)")
    p.add_argument("--timeout", type=float, metavar="S",
                   help=f"stop after S seconds, counted from the start (exit 6); at most {MAX_TIMEOUT_SECONDS}")
    p.add_argument("--max-memory", metavar="SIZE",
                   help="cap this run's host memory, e.g. 8GiB (the process's data segment, RLIMIT_DATA, set "
                        "once torch is loaded; at least what the engine holds then, about 0.3 GB): a CPU run "
                        "predicted to need more is refused, an allocation beyond it is out of memory (exit 5)")
    p.add_argument("--dry-run", action="store_true",
                   help="check the input and the host memory the run needs, then stop before building "
                        "anything (exit 0, or 5 when it would not fit)")
    from ..parallel_args import add_parallel_arguments
    add_parallel_arguments(p, what="of the traced rank")
    p.add_argument("--reduce-fp32", action="store_true",
                   help="zero2/fsdp with --mixed-precision: reduce gradients in fp32 (accelerate reduces "
                        "in the 16-bit dtype)")
    p.add_argument("--experts", default="grouped_mm", choices=EXPERTS,
                   help="mixture of experts: the experts implementation to run, grouped_mm (transformers' default; "
                        "memory does not depend on the routing) or eager (the per-expert loop)")
    p.add_argument("--routing", default=None, choices=RUN_ROUTINGS,
                   help="mixture of experts: measured (the routers' own choices, recorded; real runs), or balanced or "
                        "worst (forced); default: measured on a real device, in a trace balanced for --experts eager "
                        "(grouped_mm needs none). The prediction is for the forced routing, else balanced")
    p.add_argument("--json", action="store_true", help="print the result as one JSON object (last line)")
    p.add_argument("--progress", default=None, choices=PROGRESS,
                   help="progress on stderr: a bar, JSON lines, or none (default: bar)")
    from ..peft_args import add_peft_arguments
    add_peft_arguments(p)
    from ..loop_args import add_loop_arguments
    add_loop_arguments(p)


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Add the `validate` subcommand to the capacity command line (sets func=run)."""
    p = subparsers.add_parser("validate", help="measure real steps against the prediction",
                              description=DESCRIPTION, epilog=EPILOG)
    add_arguments(p)
    p.set_defaults(func=run)
    return p


class Stopped(Exception):
    """The run's time limit passed, or it was asked to stop (SIGTERM, SIGINT)."""


class _StopSignals:
    """SIGTERM, SIGINT and the --timeout alarm raise Stopped in the main thread, once: a
    second signal while the run reports the first is ignored. `finish()` disarms them before
    the result is written; `restore()` puts the previous handlers back.

    A signal that lands while a finalizer (`__del__`) runs raises Stopped there, where Python
    swallows it (it reports it through sys.unraisablehook as "Exception ignored in ..."):
    that report is replaced by raising Stopped again a millisecond later, in the code that
    runs next, so the stop is neither lost nor printed as a traceback."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGALRM)
    REFIRE_S = 0.001

    def __init__(self):
        self.reason: str | None = None
        self._refire = False
        self.previous = {s: signal.signal(s, self._on_signal) for s in self.SIGNALS}
        self._previous_hook = sys.unraisablehook
        sys.unraisablehook = self._on_unraisable

    def _on_signal(self, signum, frame):
        if self.reason is not None and not self._refire:
            return
        if not self._refire:
            self.reason = {signal.SIGTERM: "cancelled (SIGTERM)", signal.SIGINT: "cancelled (Ctrl-C)"}.get(
                signum, "timed out")
        self._refire = False
        signal.setitimer(signal.ITIMER_REAL, 0)
        raise Stopped(self.reason)

    def _on_unraisable(self, unraisable) -> None:
        if isinstance(unraisable.exc_value, Stopped) and self.reason not in (None, "finished"):
            self._refire = True
            signal.setitimer(signal.ITIMER_REAL, self.REFIRE_S)
            return
        self._previous_hook(unraisable)

    def arm(self, seconds: float) -> None:
        signal.setitimer(signal.ITIMER_REAL, seconds)

    def finish(self) -> None:
        signal.setitimer(signal.ITIMER_REAL, 0)
        self._refire = False
        if self.reason is None:
            self.reason = "finished"

    def restore(self) -> None:
        self.finish()
        for s, handler in self.previous.items():
            signal.signal(s, handler)
        sys.unraisablehook = self._previous_hook


class Progress:
    """Progress events on stderr: a text bar for a person, or JSON lines for the app."""

    BAR_WIDTH = 30   # characters of the text bar

    def __init__(self, mode: str):
        self.mode = mode

    def __call__(self, step: int, total: int, message: str) -> None:
        if self.mode == "json":
            print(json.dumps({"event": "progress", "step": step, "total": total, "message": message}),
                  file=sys.stderr, flush=True)
        elif self.mode == "bar":
            filled = self.BAR_WIDTH * step // max(total, 1)
            bar = "#" * filled + "-" * (self.BAR_WIDTH - filled)
            print(f"[{bar}] {step}/{total} {message}", file=sys.stderr, flush=True)


def fail(code: int, message: str, as_json: bool, extra: dict | None = None) -> int:
    """One line on stderr (JSON with --progress json readers in mind: a plain line) and, with
    --json, a JSON object on stdout so that the last line is always a result."""
    print(f"error: {message}", file=sys.stderr, flush=True)
    if as_json:
        print(json.dumps(_jsonable({"error": EXIT_CODES.get(code, "internal error"), "exit_code": code,
                                    "message": message, **(extra or {})})), flush=True)
    return code


def _jsonable(obj):
    """Non-finite floats (a diverged fp16 loss) become null: strict JSON has no NaN."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    return obj


def option_strings(parser: argparse.ArgumentParser, command: str | None = None) -> set[str]:
    """The flags of a parser, or of its subcommand `command`."""
    if command is not None:
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction) and command in action.choices:
                parser = action.choices[command]
    return {s for action in parser._actions for s in action.option_strings}


def flagged(message: str, flags) -> str:
    """'batch: must be ...' -> '--batch: must be ...' when --batch is one of `flags`, so that a
    message about a value given on the command line names the flag."""
    name, sep, rest = message.partition(":")
    flag = "--" + name.strip().replace("_", "-")
    return f"{flag}:{rest}" if sep and flag in flags else message


_FLAGS: set[str] = set()


def _flags() -> set[str]:
    if not _FLAGS:
        parser = argparse.ArgumentParser(add_help=False)
        add_arguments(parser)
        # not --config: "config: ..." messages are about the model's config, whatever its source
        _FLAGS.update(option_strings(parser) - {"--config"})
    return _FLAGS


def _check_numbers(args) -> None:
    """The flags' values, before anything else is read or imported."""
    for name in ("preset", "config", "model_dir", "data", "max_memory"):
        value = getattr(args, name, None)
        if value is not None and not value.strip():
            raise ValueError(f"--{name.replace('_', '-')}: must not be empty")
    if args.batch < 1:
        raise ValueError(f"--batch: must be at least 1, got {args.batch}")
    if args.seq < 2:
        raise ValueError(f"--seq: must be at least 2 (the loss predicts the next token), got {args.seq}")
    if not 2 <= args.steps <= MAX_STEPS:
        raise ValueError(f"--steps: must be between 2 (the peak is measured after the first step) and "
                         f"{MAX_STEPS}, got {args.steps}")
    if not (math.isfinite(args.keep) and 0.0 <= args.keep <= 1.0):
        raise ValueError(f"--keep: the checkpoint ratio L'/L must be in [0, 1], got {args.keep}")
    if args.timeout is not None and not (math.isfinite(args.timeout) and 0 < args.timeout <= MAX_TIMEOUT_SECONDS):
        raise ValueError(f"--timeout: must be a number of seconds above 0 and at most {MAX_TIMEOUT_SECONDS} "
                         f"(a week), got {args.timeout:g}")
    if args.data is not None and args.data != "sample" and not os.path.isfile(args.data):
        raise ValueError(f"--data: no file at {args.data!r}")
    if args.sharding != "none" and args.device not in ("auto", "trace"):
        raise ValueError(f"--sharding: ranks are traced (--device trace), not run on {args.device}")
    if args.sharding != "none" and args.model_dir is not None:
        raise ValueError("--sharding: traces a config (--config or --preset), not --model-dir")
    if (args.offload_optimizer or args.reduce_fp32) and args.sharding == "none":
        raise ValueError("--offload-optimizer and --reduce-fp32 need --sharding")


def _read_source(args):
    """(shape, config dict, source) of the model flags, read as data (standard library only):
    source is what compare() takes (a preset name or a config path; None with --model-dir)."""
    from ..presets import preset_names
    from .source import read_model_dir, resolve_model
    if args.model_dir is not None:
        return (*read_model_dir(args.model_dir), None)
    if args.preset is not None:
        if args.preset not in preset_names():
            raise ValueError(f"--preset: unknown model {args.preset[:100]!r}; run `python -m capacity presets` "
                             "for the list")
        return (*resolve_model(args.preset), args.preset)
    if not os.path.exists(args.config):
        raise ValueError(f"--config: no file at {args.config!r}")
    if args.config in preset_names():
        raise ValueError(f"--config: {args.config!r} is a preset's name; give a path such as ./{args.config}")
    return (*resolve_model(args.config), args.config)


def _max_positions(shape) -> int | None:
    """The longest sequence a learned position table allows (GPT-2, OPT), or None."""
    from ..context import longest_runnable_context
    return longest_runnable_context(shape)


def run(args) -> int:
    """Run one validation from parsed arguments; returns the exit code."""
    stop = _StopSignals()   # first: a signal from here on ends the run with exit 6
    try:
        return _run(args, stop)
    except Stopped as err:
        stop.finish()
        what = str(err) if "cancelled" in str(err) or not args.timeout else f"timed out after {args.timeout:g} s"
        return fail(EXIT_STOPPED, what, args.json, {"timed_out": "cancelled" not in str(err)})
    except KeyboardInterrupt:   # a Ctrl-C that came before the handlers (or during their restore)
        stop.finish()
        return fail(EXIT_STOPPED, "cancelled (Ctrl-C)", args.json, {"timed_out": False})
    finally:
        stop.restore()
        host.restore_memory_cap()


def scenario_from_args(args):
    """The Scenario a validate command line runs (its prediction's target: cuda on
    --device cuda, else cpu)."""
    from ..loop_args import loop_from_args
    from ..peft_args import peft_from_args
    from ..scenario import Parallel, Scenario
    return Scenario(method=args.method, optimizer=args.optimizer, batch=args.batch, seq=args.seq,
                    dtype=args.dtype, mixed_precision=args.mixed_precision, keep=args.keep,
                    attention=args.attention, target="cuda" if args.device == "cuda" else "cpu",
                    experts=args.experts,
                    routing=args.routing if args.routing in ("balanced", "worst") else "balanced",
                    peft=peft_from_args(args), loop=loop_from_args(args),
                    parallel=Parallel(devices=args.devices, sharding=args.sharding,
                                      offload_optimizer=args.offload_optimizer))


def _run(args, stop: _StopSignals) -> int:
    from ..units import parse_bytes
    from .preflight import check_tensor_sizes, host_memory_refusal
    from .source import ModelDirError
    parent = host.parent_to_watch()
    if parent is not None:
        host.end_with_parent(parent, EXIT_STOPPED)
    progress_mode = args.progress or "bar"
    say = Progress(progress_mode)
    max_memory = getattr(args, "max_memory", None)
    dry_run = getattr(args, "dry_run", False)

    # 1. Refused before anything is imported or allocated: the flags, the model, the host memory.
    try:
        _check_numbers(args)
        if args.timeout is not None:
            stop.arm(args.timeout)
        if max_memory is not None:
            max_memory = parse_bytes(max_memory, what="max-memory")
        scenario = scenario_from_args(args)
        shape, cfg, source = _read_source(args)
        limit = _max_positions(shape)
        if limit is not None and args.seq > limit:
            raise ValueError(f"--seq: {shape.model_type} has {limit} learned positions; got --seq {args.seq}")
        check_tensor_sizes(shape, scenario)
        if scenario.peft.method == "lora" and not scenario.peft.lora_targets:
            # peft's own refusal ("Please specify `target_modules`") names no module: name them.
            from ..trainable import lora_target_names
            lora_target_names(shape, scenario.peft)
        if args.device == "cpu":
            refusal = host_memory_refusal(shape, scenario, args.steps, "cpu", cap=max_memory)
            if refusal is not None:
                return _refused(shape, scenario, args, refusal)
    except ModelDirError as err:
        return fail(EXIT_MODEL_DIR, str(err), args.json)
    except ValueError as err:
        return fail(EXIT_BAD_INPUT, flagged(str(err), _flags()), args.json)
    except MemoryError:
        return fail(EXIT_OOM, "out of memory while reading the input"
                    + (f" (--max-memory {args.max_memory})" if max_memory else ""), args.json, {"oom": True})
    except OSError as err:   # an unreadable config file or folder
        where = f" {str(err.filename)!r}" if err.filename else ""
        return fail(EXIT_BAD_INPUT, f"cannot read{where}: {err.strerror or type(err).__name__}", args.json)

    # 2. The engine, and what only transformers can judge (still before anything is built).
    say(0, args.steps, "loading torch and transformers")
    try:
        from .measurement import CudaUnavailable, check_transformers_accepts, choose_device, compare
        import transformers
    except MemoryError:
        return fail(EXIT_OOM, "out of memory while loading torch and transformers"
                    + (f" (--max-memory {args.max_memory})" if max_memory else ""), args.json, {"oom": True})
    except ImportError as err:
        if max_memory is not None:   # a shared library that could not be mapped under the cap
            return fail(EXIT_OOM, f"out of memory while loading torch and transformers (--max-memory "
                        f"{args.max_memory}): {str(err)[:200]}", args.json, {"oom": True})
        return fail(EXIT_INTERNAL, f"the validation engine needs torch and transformers ({err})", args.json)
    transformers.logging.set_verbosity_error()   # keep stderr for progress and one-line errors
    transformers.logging.disable_progress_bar()
    if max_memory is not None:
        # The cap is set once the engine is loaded: a cap below what it takes by then is
        # refused here (under it, torch could only abort), and the run's own check (measure)
        # sees the room left under it.
        from ..units import format_bytes
        held = host.data_bytes() or 0
        if held >= max_memory:
            return _refused(shape, scenario, args, {"host_needed_bytes": held, "host_available_bytes": max_memory},
                            why=f"--max-memory {args.max_memory} is below the {format_bytes(held)} the engine "
                                "holds once torch is loaded")
        host.cap_memory(max_memory)

    try:
        check_transformers_accepts(cfg)
        sharded = args.sharding != "none"
        if dry_run and sharded:
            return _dry_run_sharded(shape, scenario, args)
        if dry_run:
            return _dry_run(shape, scenario, args, choose_device(args.device, shape, scenario, args.steps))
        if sharded and args.experts != "grouped_mm":
            raise ValueError("--experts: a sharded run uses transformers' default (grouped_mm); eager is run on one device")
        if sharded:
            from .sharded import compare_sharded
            result = compare_sharded(source, scenario, steps=args.steps, data=args.data, progress=say,
                                     trace_mode="full" if args.full_trace else "auto",
                                     reduce_fp32=args.reduce_fp32)
        else:
            result = compare(source, scenario, steps=args.steps, device=args.device, data=args.data,
                             model_dir=args.model_dir, progress=say,
                             trace_mode="full" if args.full_trace else "auto", routing=args.routing)
    except CudaUnavailable as err:
        return fail(EXIT_NO_CUDA, str(err), args.json)
    except ModelDirError as err:
        return fail(EXIT_MODEL_DIR, str(err), args.json)
    except ValueError as err:
        return fail(EXIT_BAD_INPUT, flagged(str(err), _flags()), args.json)
    except MemoryError:
        return fail(EXIT_OOM, "out of memory" + (f" (--max-memory {args.max_memory})" if max_memory else ""),
                    args.json, {"oom": True})
    except Stopped:
        raise
    except Exception as err:  # noqa: BLE001 - a bug: one line, the traceback on request
        if os.environ.get("CAPACITY_DEBUG"):
            raise
        return fail(EXIT_INTERNAL, f"{type(err).__name__}: {str(err)[:300]}", args.json)

    stop.finish()
    if args.json:
        print(json.dumps(_jsonable(result)), flush=True)
    else:
        print(format_result(result), flush=True)
    if result.get("oom"):
        print(f"error: {result['message']}", file=sys.stderr, flush=True)
        return EXIT_OOM
    return EXIT_OK


def _refused(shape, scenario, args, refusal: dict, why: str | None = None) -> int:
    """A run that would not fit in the host memory: exit 5 before anything is built, with
    the message and result keys of an out-of-memory run."""
    from ..units import format_bytes
    from .preflight import predict, with_target
    estimate = predict(shape, with_target(scenario, "cpu"))
    predicted = format_bytes(estimate.peak_bytes) if estimate is not None else "n/a"
    why = why or (f"the run needs {format_bytes(refusal['host_needed_bytes'])} of host memory, "
                  f"{format_bytes(refusal['host_available_bytes'])} available")
    message = f"out of memory at model construction, predicted {predicted}; refused before building: {why}"
    result = {"model": shape.name, "method": scenario.method, "batch": scenario.batch, "seq": scenario.seq,
              "dtype": scenario.dtype, "device": args.device, "steps": args.steps, "oom": True, "oom_step": 0,
              "oom_phase": "model construction", "oom_refused": True, **refusal,
              "predicted_target": "cpu", "measured_peak_bytes": None,
              "predicted_peak_bytes": estimate.peak_bytes if estimate is not None else None}
    return fail(EXIT_OOM, message, args.json, result)


def _dry_run(shape, scenario, args, device: str) -> int:
    """--dry-run: the plan of a run that passed every check (exit 0), or its refusal (exit 5)."""
    from ..units import format_bytes
    from . import host
    from .preflight import host_bytes_needed, host_memory_refusal, predict, with_target
    refusal = host_memory_refusal(shape, scenario, args.steps, device)
    if refusal is not None:
        return _refused(shape, scenario, args, refusal)
    estimate = predict(shape, with_target(scenario, "cuda" if device == "cuda" else "cpu"))
    plan = {"dry_run": True, "model": shape.name, "method": scenario.method, "device": device,
            "steps": args.steps, "predicted_peak_bytes": estimate.peak_bytes if estimate is not None else None,
            "host_needed_bytes": host_bytes_needed(shape, scenario, args.steps, device),
            "host_available_bytes": host.available_bytes(), "exit_code": EXIT_OK}
    if args.json:
        print(json.dumps(plan), flush=True)
    else:
        predicted = "n/a" if plan["predicted_peak_bytes"] is None else format_bytes(plan["predicted_peak_bytes"])
        print(f"{shape.name}: {scenario.method} on {device}: the input is accepted; predicted peak {predicted}; "
              f"host memory needed {format_bytes(plan['host_needed_bytes'])}", flush=True)
    return EXIT_OK


def _dry_run_sharded(shape, scenario, args) -> int:
    """--dry-run with --sharding: the input is accepted and a rank would be traced (fake
    tensors: no host memory to speak of); no prediction while capacity models one device."""
    plan = {"dry_run": True, "model": shape.name, "method": scenario.method, "device": "trace",
            "steps": args.steps, "parallel": dict(scenario.parallel.__dict__), "predicted_peak_bytes": None,
            "exit_code": EXIT_OK}
    if args.json:
        print(json.dumps(plan), flush=True)
    else:
        pl = scenario.parallel
        print(f"{shape.name}: {scenario.method}, {pl.devices} devices, sharding {pl.sharding}: the input is "
              "accepted; one rank would be traced (fake tensors, fake process group)", flush=True)
    return EXIT_OK


def format_result(r: dict) -> str:
    """A plain-text report: the peak and each term, measured against predicted."""
    from ..units import format_bytes

    # One unit for the whole report, chosen by its largest figure (MB for a tiny model).
    scale = max(int(r.get(k) or 0) for k in ("measured_peak_bytes", "predicted_peak_bytes", "peak_bytes"))

    def fmt(n):
        return "n/a" if n is None else format_bytes(int(n), scale=scale or None)

    lines = [f"{r['model']}: {r['method']}"
             + (f" ({r['optimizer']})" if r.get("optimizer") else "")
             + f", batch {r['batch']}, seq {r['seq']}, {r['dtype']}"
             + (" mixed precision" if r["mixed_precision"] else "")
             + f", L'/L {r['keep']:g}, {r['attention']} attention, device {r['device']}"]
    if r.get("loop_description"):
        lines.append(f"loop: {r['loop_description']}")
    if r.get("checkpointed_layers"):
        lines.append(f"checkpointed layers: {r['checkpointed_layers']}")
    if r.get("moe"):
        m = r["moe"]
        lines.append(f"experts: {m['experts_implementation']}, routing {m['routing']}"
                     + (f", imbalance {m['imbalance']:.2f} (most tokens to one expert over top_k·tokens/experts)"
                        if m.get("imbalance") is not None else "")
                     + f"; predicted for {m['predicted_routing']} routing"
                     + (" (grouped_mm: the same under any routing)" if m["experts_implementation"] == "grouped_mm" else ""))
    pf = r.get("peft") or {}
    if pf.get("method", "none") != "none" or pf.get("weights_bits", 16) != 16:
        what = {"lora": lambda: f"LoRA r={pf['lora_rank']} alpha={pf['lora_alpha']:g} dropout={pf['lora_dropout']:g} "
                                f"targets={','.join(pf['lora_targets']) or 'peft default'}",
                "prefix": lambda: f"prefix tuning, {pf['prefix_tokens']} virtual tokens",
                "freeze": lambda: f"top {pf['trainable_layers']} layers trained",
                "none": lambda: "every parameter"}[pf["method"]]()
        bits = {16: r["dtype"], 8: "8-bit (bitsandbytes)",
                4: f"4-bit {pf['quant']}" + (" double-quant" if pf.get("double_quant") else "") + " (bitsandbytes)"}
        lines.append(f"trained: {what}; base weights {bits[pf['weights_bits']]}; "
                     f"trainable parameters {r.get('trainable_params') or 0:,} of {r.get('params') or 0:,}")
    if r.get("parallel"):
        pl = r["parallel"]
        lines.append(f"devices {pl['devices']}, sharding {pl['sharding']}"
                     + (", optimizer offloaded to the host" if pl["offload_optimizer"] else "")
                     + f": the per-device peak of rank {r.get('rank', 0)}"
                     + (f"; host peak {fmt(r.get('host_peak_bytes'))}" if pl["offload_optimizer"] else ""))
        if r.get("measured_phases"):
            lines.append("phase peaks    " + ", ".join(f"{k} {fmt(v)}" for k, v in r["measured_phases"].items()))
        if r.get("predicted_unavailable"):
            lines.append(f"predicted      n/a ({r['predicted_unavailable']})")
    measured, predicted = r.get("measured_peak_bytes"), r.get("predicted_peak_bytes")
    lines.append(f"measured peak  {fmt(measured)}   [{r.get('peak_source', '')}]")
    if r.get("allocator_peak_bytes") is not None:
        lines.append(f"allocator peak {fmt(r['allocator_peak_bytes'])}   [CPU allocator, torch.profiler]")
    if r.get("trace_mode") == "extrapolated":
        samples = ", ".join(f"{s['layers']} layers {s['seconds']:.2f} s" for s in r.get("trace_samples", []))
        lines.append(f"trace mode     extrapolated ({samples}; {r.get('trace_seconds', 0):.2f} s in all); "
                     "--full-trace traces every layer")
    elif r.get("trace_mode") == "full":
        lines.append("trace mode     full" + (f" (fast trace not possible: {r['trace_fallback']})"
                                             if r.get("trace_fallback") else ""))
    lines.append(f"predicted peak {fmt(predicted)}   [capacity.estimate, target {r.get('predicted_target')}]"
                 + (f" ({r['prediction_unavailable']})" if r.get("prediction_unavailable") else ""))
    if r.get("error_pct") is not None:
        error = round(r["error_pct"], 2) or 0.0     # no "-0.00 %"
        lines.append(f"error          {error:+.2f} %  (100·(predicted − measured)/measured)")
    if "cuda" in r:
        c = r["cuda"]
        lines.append(f"cuda ({c['device_name']}): max_memory_allocated {fmt(c['max_memory_allocated_bytes'])}, "
                     f"max_memory_reserved {fmt(c['max_memory_reserved_bytes'])}, "
                     f"device used (total − free, CUDA context included) {fmt(c['device_used_bytes'])}")
    # Side by side in the classes both sides can name (MemTracker's), as the app shows them;
    # each side's own terms only when there is no such pair (no prediction, out of memory).
    pair = r["breakdown"].get("comparable") or r["breakdown"]
    m, p = pair["measured"] or {}, pair["predicted"] or {}
    if m or p:
        lines.append(f"{'term':<28}{'measured':>30}{'predicted':>30}")
        for term in list(dict.fromkeys([*m, *p])):
            if m.get(term) or p.get(term):
                lines.append(f"{term:<28}{fmt(m.get(term)):>30}{fmt(p.get(term)):>30}")
    losses = ", ".join("n/a" if x is None else f"{x:.4f}" for x in r["losses"])
    lines.append(f"losses: {losses}" + ("  (fake tensors carry no values)" if r["device"] == "trace" else ""))
    if r["step_seconds"]:
        lines.append("step seconds: " + ", ".join(f"{s:.3f}" for s in r["step_seconds"]))
    if r.get("oom"):
        lines.append(r["message"])
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """`python -m capacity.validation ...`: the same as `python -m capacity validate ...`."""
    from ..cli import main as capacity_main
    return capacity_main(["validate", *(sys.argv[1:] if argv is None else argv)])
