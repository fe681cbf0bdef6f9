"""Measure the peak memory of a few real steps and set it beside the prediction.

Devices:
  cuda   real tensors on the GPU. Peak statistics are reset after the first step; the result
         reports torch.cuda.max_memory_allocated (what the memory model predicts),
         max_memory_reserved (the caching allocator's pool) and the device's used memory
         from torch.cuda.mem_get_info (total − free: CUDA context and other processes
         included), each labelled. The term-by-term breakdown comes from one extra step run
         under MemTracker, so that the timed steps carry no tracking overhead.
  cpu    real tensors on the CPU, accounted by torch's MemTracker.
  trace  the same under FakeTensorMode: no real memory, any model size.

`measure(...)` returns the measurement; `compare(...)` adds the prediction of
`capacity.estimate` and the error in percent.
"""

from __future__ import annotations

import contextlib
import logging
import time
from dataclasses import replace

import torch
from torch._subclasses.fake_tensor import FakeTensor, FakeTensorMode, unset_fake_temporarily
from torch.distributed._tools.mem_tracker import _MemRefType

from ..scenario import Scenario
from . import host
from .allocator import CpuAllocatorPeak
from .data import Batches
from .experts import RoutingRun, eager_loop_traced
from .faithful import real_run_code_paths
from .models import (TORCH_DTYPES, build_model, decoder_layers, enable_checkpointing, hf_config,
                     is_out_of_memory, num_checkpointed_layers, read_model_dir, resolve_model, with_layers)
from .preflight import (check_tensor_sizes, host_bytes_needed, host_memory_refusal, predict, predict_or_reason,
                        with_target)
from .steps import Stepper
from . import peft_models
from .tracker import Tracker

DEVICES = ("auto", "cuda", "cpu", "trace")

# MemTracker's categories -> the names of the measured breakdown.
_CATEGORIES = {
    _MemRefType.PARAM: "weights", _MemRefType.BUFFER: "buffers", _MemRefType.GRAD: "gradients",
    _MemRefType.OPT: "optimizer_states", _MemRefType.ACT: "activations",
    _MemRefType.TEMP: "temporaries", _MemRefType.OTH: "other",
}

# A failed fake-tensor op is reported by the run in one line; torch would also log its
# traceback on stderr, which the app reads for progress and one-line errors.
logging.getLogger("torch._subclasses.fake_tensor").setLevel(logging.CRITICAL)

# `auto` picks trace instead of cpu when the predicted peak exceeds this share of the free RAM.
AUTO_RAM_SHARE = 0.5


class CudaUnavailable(Exception):
    """--device cuda on a machine without a usable CUDA GPU (exit code 3)."""


class OutOfMemory(Exception):
    """A step ran out of memory; carries the partial result."""

    def __init__(self, result: dict):
        super().__init__(result.get("message", "out of memory"))
        self.result = result


def choose_device(device: str, shape, scenario: Scenario, steps: int = 2) -> str:
    """Resolve `auto`: cuda when available, else cpu, or trace if the run would not fit in RAM
    (needs more than AUTO_RAM_SHARE of the available host memory). A quantized base runs on
    real tensors only (peft_models.check)."""
    if device == "cuda" and not torch.cuda.is_available():
        raise CudaUnavailable("CUDA was requested but torch finds no CUDA GPU on this machine")
    if device != "auto":
        return device
    if torch.cuda.is_available():
        return "cuda"
    if scenario.peft.weights_bits != 16:
        return "cpu"
    available = host.available_bytes()
    if available is None:
        return "trace"
    needed = host_bytes_needed(shape, scenario, steps, "cpu")
    return "cpu" if needed <= AUTO_RAM_SHARE * available else "trace"


# The layers transformers' configuration is checked with. Its classes validate per-layer
# lists element by element (seconds for a million layers); what they check does not depend
# on the layer count, and a failure is confirmed with the whole config.
CHECK_LAYERS = 4


def check_transformers_accepts(cfg: dict) -> None:
    """Build the transformers configuration object (no tensors): ValueError naming the
    problem when transformers refuses a config that capacity accepted."""
    try:
        hf_config(with_layers(cfg, CHECK_LAYERS))
    except ValueError:
        hf_config(cfg)   # the whole config decides (and names the problem)


def _tracker_snapshot(tracker: Tracker) -> tuple[int, dict]:
    """(peak bytes, breakdown) of a MemTracker's peak, summed over devices."""
    peak, breakdown = 0, {name: 0 for name in _CATEGORIES.values()}
    for dev_snap in tracker.get_tracker_snapshot("peak").values():
        peak += dev_snap["Total"]
        for ref, name in _CATEGORIES.items():
            breakdown[name] += dev_snap.get(ref, 0)
    return peak, breakdown


def measure(model, scenario: Scenario, steps: int = 2, device: str = "trace", data=None,
            model_dir=None, progress=None, lr: float | None = None, seed: int = 0,
            trace_mode: str = "auto", routing: str | None = None) -> dict:
    """Run `steps` steps (at least 2) of `scenario` and measure the peak of the steps after
    the first.

    trace_mode (device trace only): "full" traces the whole model; "extrapolated" traces
    models of 3-4 layers and extrapolates exactly (fast_trace.py); "auto" (the default)
    extrapolates when that traces fewer layers than the model has. result["trace_mode"]
    says which was used.

    model: a ModelShape, a preset name, a Hugging Face config dict or a config.json path
    (ignored when model_dir names a local model folder). progress(step, total, message) is
    called as the run goes. Raises CudaUnavailable, ModelDirError, ValueError, OutOfMemory.

    A mixture of experts runs its experts as scenario.experts says (the config's
    experts_implementation), under `routing` (experts.py): "measured" (the routers' own,
    recorded; real runs), "balanced" or "worst" (forced); None: measured on a real device,
    in a trace the scenario's routing for the eager loop and nothing forced for grouped_mm.
    result["moe"] says which, and what the prediction assumes.
    """
    if steps < 2:
        raise ValueError("steps: at least 2 (the peak is measured after the first step)")
    shape, cfg = read_model_dir(model_dir) if model_dir is not None else resolve_model(model)
    check_transformers_accepts(cfg)
    check_tensor_sizes(shape, scenario)
    device = choose_device(device, shape, scenario, steps)
    say = progress or (lambda step, total, message: None)
    if scenario.attention not in ("eager", "sdpa"):
        raise ValueError(f"attention: must be eager or sdpa, got {scenario.attention!r}")
    if scenario.method == "bp" and scenario.loop.name == "trainer":
        from .trainer_loop import trainer_refusal
        why = trainer_refusal(scenario, device)
        if why:
            raise ValueError(why)
    result = {
        "model": shape.name, "params": None,   # counted once the model is built
        "method": scenario.method, "optimizer": scenario.optimizer if scenario.method == "bp" else None,
        "batch": scenario.batch, "seq": scenario.seq, "dtype": scenario.dtype,
        "mixed_precision": scenario.mixed_precision, "keep": scenario.keep,
        "attention": scenario.attention, "device": device, "steps": steps,
        "peft": scenario.to_dict()["peft"], "trainable_params": None, "loop": scenario.to_dict()["loop"],
        "losses": [], "step_seconds": [], "oom": False,
    }
    refusal = host_memory_refusal(shape, scenario, steps, device)
    if refusal is not None:   # refused before anything is allocated
        result.update(oom=True, oom_step=0, oom_phase="model construction", oom_refused=True, **refusal)
        raise OutOfMemory(result)

    fake_mode = FakeTensorMode() if device == "trace" else None
    routing_run = None
    if shape.moe is not None:
        cfg = {**cfg, "experts_implementation": scenario.experts}
        routing_run = RoutingRun(routing, device, scenario.experts, scenario.routing, scenario.tokens)
    batches = Batches(shape.vocab_size, scenario.batch, scenario.seq, data=data, seed=seed)
    # Each step's micro-batches (K of them for BP, one otherwise); one spare step for cuda's extra step.
    k = scenario.loop.grad_accum if scenario.method == "bp" else 1
    if fake_mode is not None:
        # A trace's token ids are fake too: their values play no part in a fake step, and
        # real ones would take (steps + 1)·K·batch·seq·8 bytes of host memory.
        with fake_mode:
            ids_cpu = [[torch.empty((scenario.batch, scenario.seq), dtype=torch.long) for _ in range(k)]
                       for _ in range(steps + 1)]
    else:
        ids_cpu = [[batches.batch(i * k + j) for j in range(k)] for i in range(steps + 1)]
    where = {"step": 0, "stepper": None}
    try:
        with (fake_mode or contextlib.nullcontext()), (real_run_code_paths() if fake_mode else contextlib.nullcontext()), \
                peft_models.gpu_code_paths(scenario.peft, device), \
                (eager_loop_traced() if fake_mode and routing_run else contextlib.nullcontext()):
            _run(result, shape, cfg, scenario, device, ids_cpu, fake_mode, model_dir, steps,
                 say, lr, seed, where, trace_mode, routing_run)
    except Exception as err:  # noqa: BLE001 - only out-of-memory is turned into a result
        if not is_out_of_memory(err):
            raise
        phase = where["stepper"].phase if where["stepper"] is not None else "model construction"
        result.update(oom=True, oom_step=where["step"], oom_phase=phase, oom_error=str(err)[:300])
        if device == "cuda":
            result["measured_peak_bytes"] = int(torch.cuda.max_memory_allocated())
        raise OutOfMemory(result) from None
    return result


def _run(result, shape, cfg, scenario, device, ids_cpu, fake_mode, model_dir, steps, say, lr,
         seed, where, trace_mode="auto", routing_run=None):
    peft_models.check(scenario.peft, device, checkpointing=scenario.method == "bp"
                      and num_checkpointed_layers(shape.num_layers, scenario.keep) > 0)
    if device == "trace" and scenario.peft.method != "none" and trace_mode != "full":
        # The fast trace samples models of 3-4 layers built without peft: trace the whole model.
        result["trace_fallback"] = "a PEFT model is traced whole"
        trace_mode = "full"
    prepare = routing_run.prepare if routing_run is not None else None
    if device == "trace":
        from . import fast_trace
        if fast_trace.run_into(result, shape, cfg, scenario, ids_cpu, fake_mode, steps, say, lr,
                               seed, trace_mode, prepare_model=prepare):
            if routing_run is not None:
                result["moe"] = routing_run.summary(scenario.experts)
            return
    # On the CPU the allocator's own count is recorded from before the model is built
    # (allocator.py), beside MemTracker's.
    alloc = CpuAllocatorPeak() if device == "cpu" else None
    with (alloc or contextlib.nullcontext()):
        _build_and_run(result, shape, cfg, scenario, device, ids_cpu, fake_mode, model_dir, steps, say,
                       lr, seed, where, alloc, routing_run)
    if alloc is not None:
        result["allocator_peak_bytes"] = result.pop("_region_start_bytes") + alloc.rise_bytes()
        result["allocator_peak_source"] = ("CPU allocator (torch.profiler memory events): live bytes at the start "
                                           "of step 2 as MemTracker counts them, plus the allocator's highest "
                                           "rise over steps 2..N")
        if scenario.method == "mezo" and scenario.loop.mezo_impl == "reference":
            # Its forwards run under torch.inference_mode, where cross_entropy is one composite
            # op whose internal buffers MemTracker cannot see: the allocator's count is the peak.
            result["tracker_peak_bytes"] = result["measured_peak_bytes"]
            result["measured_peak_bytes"] = result["allocator_peak_bytes"]
            result["peak_source"] = ("CPU allocator (torch.profiler), steps 2..N (inference_mode hides op "
                                     "internals from MemTracker)")


def _build_and_run(result, shape, cfg, scenario, device, ids_cpu, fake_mode, model_dir, steps, say, lr,
                   seed, where, alloc, routing_run=None):
    build_dtype = "fp32" if scenario.mixed_precision else scenario.dtype
    say(0, steps, f"building {shape.name or shape.model_type} ({build_dtype}, {scenario.attention}) on {device}")
    torch.manual_seed(seed)
    with (torch.device("cuda") if device == "cuda" else contextlib.nullcontext()):
        # A trace never loads weights: fake tensors have no values to load into.
        model = build_model(cfg, build_dtype, scenario.attention,
                            model_dir=None if device == "trace" else model_dir)
    target = "cuda" if device == "cuda" else "cpu"
    if device == "cuda":
        model.to(target)   # weights loaded from a folder arrive on the CPU (no-op otherwise)
    base_params = sum(p.numel() for p in model.parameters())   # before quantization packs them
    model = peft_models.prepare(model, scenario.peft, device, TORCH_DTYPES[scenario.dtype])
    result["trainable_params"] = sum(p.numel() for p in peft_models.trainable_parameters(model))
    result["params"] = base_params + peft_models.added_parameters(scenario.peft, result["trainable_params"])
    if routing_run is not None:
        routing_run.prepare(model)
    if scenario.method == "bp" and scenario.loop.name == "trainer":
        _run_trainer(result, model, scenario, device, ids_cpu, fake_mode, steps, say, lr, seed, where, alloc)
        if routing_run is not None:   # the routing of every step (the Trainer runs them all)
            result["moe"] = routing_run.summary(getattr(model.config, "_experts_implementation", None))
        return
    result["checkpointed_layers"] = enable_checkpointing(model, scenario.keep) \
        if scenario.method == "bp" else []
    autocast_dtype = TORCH_DTYPES[scenario.dtype] if scenario.mixed_precision else None
    stepper = Stepper(model, scenario.method, scenario.optimizer, autocast_dtype, lr=lr, seed=seed,
                      loop=scenario.loop)
    where["stepper"] = stepper

    def to_device(batch):
        """A step's micro-batches on the device."""
        if fake_mode is not None:
            return [ids if isinstance(ids, FakeTensor) else fake_mode.from_tensor(ids) for ids in batch]
        return [ids.to(target) for ids in batch]

    def timed_step(i, ids):
        where["step"] = i + 1
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        loss = stepper.step(ids)
        if device == "cuda":
            torch.cuda.synchronize()
        seconds = time.perf_counter() - start
        result["losses"].append(loss if isinstance(loss, float) else None)
        result["step_seconds"].append(seconds)
        loss_text = f"loss {loss:.4f}" if isinstance(loss, float) else "loss n/a (fake tensors)"
        say(i + 1, steps, f"step {i + 1}/{steps}: {loss_text}, {seconds:.2f} s")

    # Step 1 warms up (optimizer states are created, kernels are chosen); its peak is not counted.
    timed_step(0, to_device(ids_cpu[0]))
    if routing_run is not None:
        routing_run.start_tracking()
        result["moe"] = routing_run.summary(getattr(model.config, "_experts_implementation", None))

    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
        for i in range(1, steps):
            timed_step(i, to_device(ids_cpu[i]))
        free, total = torch.cuda.mem_get_info()
        result["cuda"] = {
            "max_memory_allocated_bytes": int(torch.cuda.max_memory_allocated()),
            "max_memory_reserved_bytes": int(torch.cuda.max_memory_reserved()),
            "device_used_bytes": int(total - free),
            "device_total_bytes": int(total),
            "device_name": torch.cuda.get_device_name(),
        }
        result["measured_peak_bytes"] = result["cuda"]["max_memory_allocated_bytes"]
        if routing_run is not None:
            result["moe"] = routing_run.summary(getattr(model.config, "_experts_implementation", None))
        result["peak_source"] = "torch.cuda.max_memory_allocated (steps 2..N)"
        # The breakdown: one more step under MemTracker, outside the timed steps.
        ids = to_device(ids_cpu[steps])
        tracker = Tracker()
        tracker.track_external(model, stepper.optimizer, ids)
        tracker.track_weights(*peft_models.quant_state_tensors(model))
        stepper.reset_tracker = tracker.reset_mod_stats
        with tracker:
            stepper.step(ids)
        stepper.reset_tracker = lambda: None
        _, result["measured_breakdown"] = _tracker_snapshot(tracker)
        result["breakdown_source"] = "MemTracker, one extra step"
        return

    # cpu and trace: a fresh tracker after step 1 starts from what is live then (weights,
    # optimizer states, gradients kept by zero_grad(set_to_none=False)), so its peak is the
    # peak of the later steps.
    tracker = Tracker()
    ids_later = [to_device(ids) for ids in ids_cpu[1:steps]]
    tracker.track_external(model, stepper.optimizer, *ids_later)
    tracker.track_weights(*peft_models.quant_state_tensors(model))
    stepper.reset_tracker = tracker.reset_mod_stats
    result["_region_start_bytes"] = _tracker_total(tracker)
    with tracker, (alloc.region() if alloc is not None else contextlib.nullcontext()):
        for i in range(1, steps):
            timed_step(i, ids_later[i - 1])
    result["measured_peak_bytes"], result["measured_breakdown"] = _tracker_snapshot(tracker)
    if routing_run is not None:
        result["moe"] = routing_run.summary(getattr(model.config, "_experts_implementation", None))
    result["peak_source"] = "MemTracker peak (steps 2..N)" + (", fake tensors" if device == "trace" else "")
    result["breakdown_source"] = "MemTracker"


def _tracker_total(tracker: Tracker) -> int:
    return sum(snap.get("Total", 0) for snap in tracker.get_tracker_snapshot("current").values())


class _Phase:
    """Where a trainer run is, for out-of-memory messages (set by its callbacks)."""

    phase = "setup"


def _run_trainer(result, model, scenario, device, ids_cpu, fake_mode, steps, say, lr, seed, where, alloc):
    """The trainer loop: transformers.Trainer.train() under the tracker (trainer_loop.py)."""
    from . import trainer_loop
    # On cuda the timed steps run untracked and one more step runs under MemTracker for the
    # breakdown (as the plain loop does), so the step times carry no tracking.
    extra = device == "cuda"
    rows = []   # the dataset: one row per sequence, real token ids (a trace's values play no part)
    with unset_fake_temporarily():
        for step in ids_cpu[:steps + 1 if extra else steps]:
            for ids in step:
                for r in range(scenario.batch):
                    rows.append(torch.zeros(scenario.seq, dtype=torch.long) if isinstance(ids, FakeTensor)
                                else ids[r].clone())
    where["stepper"] = _Phase()
    say(0, steps, "running transformers.Trainer")
    tracker = Tracker()

    def on_step(i, loss, seconds):
        result["losses"].append(loss)
        result["step_seconds"].append(seconds)
        loss_text = f"loss {loss:.4f}" if isinstance(loss, float) else "loss n/a (fake tensors)"
        say(i, steps, f"step {i}/{steps}: {loss_text}, {seconds:.2f} s")

    trainer, start_total = trainer_loop.run(model, scenario, rows, steps, device, fake_mode, lr, seed,
                                            tracker, alloc, where, on_step, track_extra_step=extra)
    result["checkpointed_layers"] = list(range(num_checkpointed_layers(len(decoder_layers(model)), scenario.keep)))
    inner = getattr(trainer.optimizer, "optimizer", trainer.optimizer)
    result["trainer_optimizer"] = type(inner).__name__
    result["trainer_optimizer_impl"] = ("fused" if inner.defaults.get("fused") else
                                        "foreach" if inner.defaults.get("foreach") else
                                        "default" if inner.defaults.get("foreach") is None else "forloop")
    result["_region_start_bytes"] = start_total
    result["measured_peak_bytes"], result["measured_breakdown"] = _tracker_snapshot(tracker)
    result["peak_source"] = "MemTracker peak (steps 2..N of transformers.Trainer.train())" + \
        (", fake tensors" if device == "trace" else "")
    result["breakdown_source"] = "MemTracker"
    if device == "cuda":
        free, total = torch.cuda.mem_get_info()
        result["cuda"] = {
            "max_memory_allocated_bytes": where["cuda_peak"],    # read at the end of step N
            "max_memory_reserved_bytes": int(torch.cuda.max_memory_reserved()),
            "device_used_bytes": int(total - free), "device_total_bytes": int(total),
            "device_name": torch.cuda.get_device_name(),
        }
        result["measured_peak_bytes"] = result["cuda"]["max_memory_allocated_bytes"]
        result["peak_source"] = "torch.cuda.max_memory_allocated (steps 2..N of transformers.Trainer.train())"
        result["breakdown_source"] = "MemTracker, one extra step"


def compare(model, scenario: Scenario, steps: int = 2, device: str = "trace", **kwargs) -> dict:
    """measure(...) with the prediction beside it: predicted_peak_bytes, error_pct
    (100·(predicted − measured)/measured) and breakdown {"measured", "predicted"}.
    An out-of-memory run returns its partial result with oom=True and a message."""
    shape, _ = read_model_dir(kwargs["model_dir"]) if kwargs.get("model_dir") else resolve_model(model)
    try:
        result = measure(model, scenario, steps=steps, device=device, **kwargs)
    except OutOfMemory as oom:
        result = oom.result
    target = "cuda" if result["device"] == "cuda" else "cpu"
    if "moe" in result:   # the routing the prediction states (the forced one, else the scenario's)
        scenario = replace(scenario, routing=result["moe"]["predicted_routing"])
    estimate, why_not = predict_or_reason(shape, with_target(scenario, target))
    measured = result.get("measured_peak_bytes")
    result["predicted_target"] = target
    if estimate is not None:
        from ..memory import describe_loop, resolved_loop
        scenario_t = with_target(scenario, target)
        result["loop"] = resolved_loop(shape, scenario_t)
        result["loop_description"] = describe_loop(shape, scenario_t)
    if why_not is not None:
        result["prediction_unavailable"] = why_not
    result["predicted_peak_bytes"] = estimate.peak_bytes if estimate is not None else None
    result["predicted_phase"] = estimate.phase if estimate is not None else None
    result["error_pct"] = (100.0 * (estimate.peak_bytes - measured) / measured
                           if estimate is not None and measured else None)
    result["breakdown"] = {"measured": result.get("measured_breakdown"),
                           "predicted": dict(estimate.breakdown) if estimate is not None else None}
    if estimate is not None and result.get("measured_breakdown"):
        # Side by side in the classes both can name (the term names differ: MemTracker files
        # the logits with the activations and Adam's step temporary with its states).
        from ..memory import by_tracker_class, tracker_breakdown_by_class
        result["breakdown"]["comparable"] = {
            "measured": tracker_breakdown_by_class(result["measured_breakdown"]),
            "predicted": by_tracker_class(estimate)}
    if result["oom"]:
        from ..units import format_bytes
        if result.get("oom_refused") or result["oom_step"] == 0:
            at = result["oom_phase"]   # "model construction"
        else:
            at = f"step {result['oom_step']} ({result['oom_phase']})"
        if measured:
            at += f" after a peak of {format_bytes(measured)} allocated"
        predicted = format_bytes(estimate.peak_bytes) if estimate is not None else "n/a"
        result["message"] = f"out of memory at {at}, predicted {predicted}"
        if result.get("oom_refused"):
            result["message"] += (f"; refused before building: the run needs "
                                  f"{format_bytes(result['host_needed_bytes'])} of host memory, "
                                  f"{format_bytes(result['host_available_bytes'])} available")
    return result
