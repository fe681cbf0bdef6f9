"""Fast trace: the peak of a whole model's step from traces of the same model with 3-4 layers.

Why it is exact. The decoder layers of a model are identical, so the timeline of a step
(the live bytes that MemTracker sees after every operation) of a model with more layers is
the timeline of a smaller one with more copies of its middle layers. Take the layers in
their two regions, checkpointed (the first c) and kept (the other k). Within a region every
layer other than the first and the last is a copy of its neighbours: the ops it runs, the
tensors it allocates and frees are the same, only shifted in time. So, op by op,

  * the live bytes after an op of a non-layer part (embedding, head and loss, the
    optimizer step, ...) are affine in (c, k): each more layer adds its weights, its
    optimizer states, its saved activations (forward) or its gradients (backward);
  * the live bytes after the t-th op of the j-th layer of a region are affine in (c, k)
    and in j, so over the middle layers their maximum is at the second layer (j = 1) or
    the one before last (j = n - 2).

A layer's timeline is therefore named by its role: its region, and first, second, before
last or last in it (a layer can have two roles). Traces of (c0, k0), (c0+1, k0) and
(c0, k0+1) layers, with c0 = min(c, 3) and k0 = min(k, 3) (a region of at most 3 layers
is traced as it is), give every op of every role at three points, from which its live
bytes (total and per MemTracker category) at (c, k) follow exactly; the peak is their
maximum. Ops are matched across the traces by (phase, role, position); a part whose op
count changes with the layer count (MeZO's perturbation passes, whose ops run over every
weight; each op there holds the weights plus one z chunk) is matched by its maximum (a
part inside a layer never is).
If the parts of the traces do not match, the fast trace gives up and the whole model is
traced (`NotExtrapolable`).

The tracked steps (2, and 3 when the run has 3 steps or more: steps after the third repeat
it) start from what step 1 left (weights, optimizer states), as a whole trace does; the
token batches of all later steps are live, as there; MeZO's z chunk size is the whole
model's (it depends on the parameter count).
"""

from __future__ import annotations

import copy
import json
import time

import torch
from torch.distributed._tools.mem_tracker import MemTracker, _MemRefType

from .models import (TORCH_DTYPES, checkpoint_first_layers, construct, decoder_layers, hf_config,
                     num_checkpointed_layers)
from .mezo import default_chunk_elements
from .steps import Stepper

# A region (checkpointed or kept layers) of more layers than this is extrapolated from
# traces with SAMPLE_LAYERS and SAMPLE_LAYERS + 1 layers in it. 3 is the least that has a
# middle layer (first, middle, last).
SAMPLE_LAYERS = 3

_REFS = (_MemRefType.PARAM, _MemRefType.BUFFER, _MemRefType.GRAD, _MemRefType.OPT,
         _MemRefType.ACT, _MemRefType.TEMP, _MemRefType.OTH)
_TOTAL = "Total"


class NotExtrapolable(Exception):
    """The model or its traces do not have the structure the fast trace needs."""


def plan(num_layers: int, checkpointed: int) -> list[tuple[int, int]]:
    """The (checkpointed, kept) layer counts of the traces that the fast trace runs."""
    c, k = checkpointed, num_layers - checkpointed
    c0, k0 = min(c, SAMPLE_LAYERS), min(k, SAMPLE_LAYERS)
    out = [(c0, k0)]
    if c > SAMPLE_LAYERS:
        out.append((c0 + 1, k0))
    if k > SAMPLE_LAYERS:
        out.append((c0, k0 + 1))
    return out


def worthwhile(num_layers: int, checkpointed: int) -> bool:
    """Whether the traces of `plan` hold fewer layers than the model (else trace it whole)."""
    samples = plan(num_layers, checkpointed)
    return len(samples) > 1 and sum(c + k for c, k in samples) < num_layers


def _roles(j: int, m: int, extrapolated: bool) -> tuple:
    """The roles of the j-th of m layers of a region (see the module docstring)."""
    if not extrapolated:
        return (("layer", j),)
    roles = []
    if j == 0:
        roles.append("first")
    if j == 1:
        roles.append("second")
    if j == m - 2:
        roles.append("before last")
    if j == m - 1:
        roles.append("last")
    return tuple(roles)


class _TimelineTracker(MemTracker):
    """A MemTracker that also keeps, for every op, the live bytes after it (total and per
    category), in parts keyed by (phase number, phase, unit)."""

    def __init__(self):
        super().__init__()
        self.parts: list[tuple[tuple, list]] = []
        self.phase_no, self.phase = 0, "entry"
        self._ops: list = []

    def vector(self) -> tuple:
        total, cats = 0, [0] * len(_REFS)
        for dev_snap in self._curr_mem_snap.values():
            total += dev_snap.get(_TOTAL, 0)
            for n, ref in enumerate(_REFS):
                cats[n] += dev_snap.get(ref, 0)
        return (total, *cats)

    def begin(self, unit) -> None:
        self._ops = []
        self.parts.append(((self.phase_no, self.phase, unit), self._ops))

    def on_phase(self, name: str) -> None:
        self.phase_no += 1
        self.phase = name
        self.begin(("start",))

    def _update_peak_stats(self, peak_state) -> None:
        # The per-module statistics of MemTracker are not needed here; the global peak is kept.
        # An op that leaves the live bytes as the previous op left them adds nothing to the
        # maximum and is not kept (so the optimizer's per-parameter bookkeeping ops, which
        # allocate nothing, do not make the op count depend on the layer count).
        v = self.vector()
        if not self._ops or self._ops[-1] != v:
            self._ops.append(v)
        for dev, dev_snap in self._curr_mem_snap.items():
            if self._peak_mem.get(dev, 0) < dev_snap[_TOTAL]:
                self._peak_mem[dev] = dev_snap[_TOTAL]


def _first_tensor(obj):
    if isinstance(obj, torch.Tensor):
        return obj
    if isinstance(obj, (tuple, list)):
        for x in obj:
            t = _first_tensor(x)
            if t is not None:
                return t
    return None


def _mark_layers(tracker: _TimelineTracker, layers, roles_of) -> list:
    """Hooks that start a new part of the timeline at each layer's forward, after it, and
    at the start of its backward (when the gradient of its output is ready). Forward
    passes run again in backward (checkpointed layers) stay in the backward part."""
    handles = []

    def in_forward():
        return tracker.phase == "forward"

    for i, layer in enumerate(layers):
        roles = roles_of(i)

        def pre(module, args, kwargs, roles=roles, first=(i == 0)):
            if not in_forward():
                return
            tracker.begin(("forward", roles))
            if first and torch.is_grad_enabled():
                hidden = _first_tensor(args) if args else kwargs.get("hidden_states")
                if hidden is not None and hidden.requires_grad:
                    hidden.register_hook(lambda grad: tracker.begin(("after backward",)))

        def post(module, args, output, roles=roles):
            if not in_forward():
                return
            tracker.begin(("after forward", roles))
            out = _first_tensor(output)
            if out is not None and torch.is_grad_enabled() and out.requires_grad:
                out.register_hook(lambda grad: tracker.begin(("backward", roles)))

        handles.append(layer.register_forward_pre_hook(pre, with_kwargs=True))
        handles.append(layer.register_forward_hook(post))
    return handles


_FULL_CONFIG: dict = {"key": None, "conf": None}   # the last whole-model config built


def _full_config(cfg: dict):
    """hf_config(cfg), built once per config: transformers validates per-layer lists element
    by element (a million layers take seconds), and the fast trace needs it several times."""
    key = json.dumps(cfg, sort_keys=True, default=repr)
    if _FULL_CONFIG["key"] != key:
        _FULL_CONFIG.update(key=None, conf=hf_config(cfg))
        _FULL_CONFIG["key"] = key
    return _FULL_CONFIG["conf"]


def _sample_config(cfg: dict, num_layers: int):
    """The transformers config of the model with `num_layers` decoder layers."""
    conf = copy.copy(_full_config(cfg))   # attributes set below replace, never mutate, shared values
    layer_types = getattr(conf, "layer_types", None)
    if isinstance(layer_types, (list, tuple)) and len(set(layer_types)) > 1:
        raise NotExtrapolable(f"layers differ ({sorted(set(layer_types))})")
    conf.num_hidden_layers = num_layers
    if isinstance(layer_types, (list, tuple)):
        conf.layer_types = list(layer_types[:1]) * num_layers
    return conf


def _trace_sample(cfg, scenario, checkpointed, kept, ids, extrapolate_c, extrapolate_k,
                  chunk_elements, lr, seed, prepare_model=None):
    """Timeline parts of steps 2 (and 3) of a model with checkpointed + kept layers.
    prepare_model(model), when given, runs on the model once it is built (a mixture of
    experts' forced routing)."""
    build_dtype = "fp32" if scenario.mixed_precision else scenario.dtype
    torch.manual_seed(seed)
    model = construct(_sample_config(cfg, checkpointed + kept), TORCH_DTYPES[build_dtype], scenario.attention)
    if prepare_model is not None:
        prepare_model(model)
    layers = decoder_layers(model)
    if len(layers) != checkpointed + kept:
        raise NotExtrapolable(f"{len(layers)} decoder layers found, {checkpointed + kept} configured")

    def roles_of(i):
        if i < checkpointed:
            return tuple(("checkpointed", r) for r in _roles(i, checkpointed, extrapolate_c))
        return tuple(("kept", r) for r in _roles(i - checkpointed, kept, extrapolate_k))

    if scenario.method == "bp" and scenario.loop.name == "trainer":
        return _trace_trainer_sample(model, layers, scenario, checkpointed, ids, roles_of, lr, seed)
    if scenario.method == "bp":
        checkpoint_first_layers(model, checkpointed)
    autocast_dtype = TORCH_DTYPES[scenario.dtype] if scenario.mixed_precision else None
    stepper = Stepper(model, scenario.method, scenario.optimizer, autocast_dtype, lr=lr, seed=seed,
                      mezo_chunk_elements=chunk_elements, loop=scenario.loop)
    stepper.step(ids[0])   # step 1: optimizer states are created; not counted

    tracker = _TimelineTracker()
    tracker.track_external(model, stepper.optimizer, *ids[1:])
    handles = _mark_layers(tracker, layers, roles_of)
    stepper.reset_tracker = tracker.reset_mod_stats
    stepper.on_phase = tracker.on_phase
    try:
        with tracker:
            tracker.begin(("entry",))
            tracker._ops.append(tracker.vector())
            # Steps 2 and 3: step 3 also holds what step 2 left (MeZO's projected gradient,
            # a 0-d tensor), which step 2 holds of step 1 untracked; later steps repeat step 3.
            for later in ids[1:3]:
                stepper.step(later)
    finally:
        for h in handles:
            h.remove()
        stepper.on_phase = lambda phase: None
    peak = sum(tracker._peak_mem.values())
    return _expand(tracker.parts), peak


def _trace_trainer_sample(model, layers, scenario, checkpointed, ids, roles_of, lr, seed):
    """The trainer loop's timeline: transformers.Trainer.train() on the sample model for
    steps 1..min(N, 3) (trainer_loop.py), the timeline restarted when step 2 begins; its
    phases are marked by Trainer's callbacks and hooks on the model (trainer_loop.run)."""
    from torch._subclasses.fake_tensor import unset_fake_temporarily
    from torch._guards import active_fake_mode
    from . import trainer_loop
    fake_mode = active_fake_mode()
    with unset_fake_temporarily():
        rows = [torch.randint(0, 2, (t.shape[1],)) for step in ids for t in step for _ in range(t.shape[0])]
    tracker = _TimelineTracker()
    handles = _mark_layers(tracker, layers, roles_of)

    def restart():
        tracker.parts, tracker.phase_no, tracker.phase = [], 0, "entry"
        tracker.begin(("entry",))
        tracker._ops.append(tracker.vector())
        tracker._peak_mem = {d: s["Total"] for d, s in tracker._curr_mem_snap.items()}

    class _Where:
        phase = "setup"

    try:
        trainer_loop.run(model, scenario, rows, min(len(ids), 3), "trace", fake_mode, lr, seed, tracker, None,
                         {"step": 0, "stepper": _Where()}, checkpointed=checkpointed,
                         on_phase=tracker.on_phase, on_measure_start=restart)
    finally:
        for h in handles:
            h.remove()
    peak = sum(tracker._peak_mem.values())
    return _expand(tracker.parts), peak


def _expand(parts) -> dict:
    """{(phase no, phase, unit with one role): op vectors}; a layer with two roles is
    listed under both."""
    out = {}
    for (phase_no, phase, unit), ops in parts:
        if len(unit) == 2 and isinstance(unit[1], tuple):
            keys = [(phase_no, phase, (unit[0], role)) for role in unit[1]]
        else:
            keys = [(phase_no, phase, unit)]
        for key in keys:
            if key in out:
                raise NotExtrapolable(f"part {key} appears twice in one trace")
            out[key] = ops
    return out


def _affine(v0, v1, v2, dc, dk):
    """v0 + dc·(v1 − v0) + dk·(v2 − v0), element by element (v1, v2 may be None)."""
    out = list(v0)
    for n in range(len(out)):
        if v1 is not None:
            out[n] += dc * (v1[n] - v0[n])
        if v2 is not None:
            out[n] += dk * (v2[n] - v0[n])
    return out


def extrapolated_peak(timelines: list[dict], samples: list[tuple[int, int]], checkpointed: int,
                      kept: int) -> tuple[list, dict]:
    """The peak vector (total, then each category) at (checkpointed, kept) from the sample
    timelines, and statistics of the matching."""
    (c0, k0) = samples[0]
    t0 = timelines[0]
    tc = next((t for (c, k), t in zip(samples, timelines) if c == c0 + 1), None)
    tk = next((t for (c, k), t in zip(samples, timelines) if k == k0 + 1), None)
    dc, dk = checkpointed - c0, kept - k0
    for t in timelines[1:]:
        if set(t) != set(t0):
            missing = sorted(set(t0) ^ set(t), key=str)[:3]
            raise NotExtrapolable(f"the traces' parts differ: {missing}")
    best, stats = None, {"parts": len(t0), "ops": 0, "parts_matched_by_maximum": []}
    for key, ops0 in t0.items():
        opsc = tc[key] if tc is not None else None
        opsk = tk[key] if tk is not None else None
        if all(o is None or len(o) == len(ops0) for o in (opsc, opsk)):
            pairs = [(ops0[n], opsc[n] if opsc is not None else None,
                      opsk[n] if opsk is not None else None) for n in range(len(ops0))]
        else:   # matched by the maximum of the part (module docstring)
            if len(key[2]) == 2:   # a layer's part: its ops must match one to one
                raise NotExtrapolable(f"the ops of part {key} differ between the traces")
            stats["parts_matched_by_maximum"].append(f"{key[1]} #{key[0]}: {key[2][0]}")
            top = lambda ops: max(ops, key=lambda v: v[0]) if ops else None  # noqa: E731
            if not ops0 or (opsc is not None and not opsc) or (opsk is not None and not opsk):
                raise NotExtrapolable(f"part {key} is empty in some traces only")
            pairs = [(top(ops0), top(opsc) if opsc is not None else None,
                      top(opsk) if opsk is not None else None)]
        for v0, vc, vk in pairs:
            v = _affine(v0, vc, vk, dc, dk)
            stats["ops"] += 1
            if best is None or v[0] > best[0]:
                best = v
    stats["parts_matched_by_maximum"] = sorted(set(stats["parts_matched_by_maximum"]))
    return best, stats


def trace_extrapolated(cfg: dict, scenario, num_layers: int, ids: list, lr=None, seed: int = 0,
                       say=None, prepare_model=None) -> dict:
    """The whole model's step peak from traces of 3-4 layer models (run under an active
    FakeTensorMode). ids: the token batches of steps 1..N as fake tensors (the later ones
    are live during the tracked step, as in a whole trace).

    Returns {"peak_bytes", "breakdown", "params", "checkpointed_layers", "samples", ...}.
    Raises NotExtrapolable when the model does not have the needed structure.
    """
    from .measurement import _CATEGORIES
    say = say or (lambda step, total, message: None)
    c = num_checkpointed_layers(num_layers, scenario.keep) if scenario.method == "bp" else 0
    k = num_layers - c
    samples = plan(num_layers, c)
    if len(samples) == 1:
        raise NotExtrapolable("the model is small enough to be traced whole")
    extrapolate_c, extrapolate_k = c > SAMPLE_LAYERS, k > SAMPLE_LAYERS

    # The whole model's parameter count (MeZO's z chunk size depends on it): the smallest
    # sample's, plus the missing layers' (identical to its first layer's).
    t_start = time.perf_counter()
    model = construct(_sample_config(cfg, 1), TORCH_DTYPES["fp32"], scenario.attention)
    per_layer = sum(p.numel() for p in decoder_layers(model)[0].parameters())
    params = sum(p.numel() for p in model.parameters()) + (num_layers - 1) * per_layer
    del model
    chunk = default_chunk_elements(params) if scenario.method == "mezo" else None

    timelines, sample_info = [], []
    for n, (cs, ks) in enumerate(samples):
        start = time.perf_counter()
        timeline, peak = _trace_sample(cfg, scenario, cs, ks, ids, extrapolate_c, extrapolate_k,
                                       chunk, lr, seed, prepare_model)
        seconds = time.perf_counter() - start
        timelines.append(timeline)
        sample_info.append({"layers": cs + ks, "checkpointed": cs, "peak_bytes": peak,
                            "seconds": round(seconds, 3)})
        say(n + 1, len(samples), f"traced {cs + ks} layers ({cs} checkpointed): peak {peak:,} B, {seconds:.2f} s")
    best, stats = extrapolated_peak(timelines, samples, c, k)
    breakdown = {name: 0 for name in _CATEGORIES.values()}
    for n, ref in enumerate(_REFS):
        breakdown[_CATEGORIES[ref]] += best[1 + n]
    return {"peak_bytes": best[0], "breakdown": breakdown, "params": params,
            "checkpointed_layers": list(range(c)), "samples": sample_info,
            "ops_extrapolated": stats["ops"], "parts_matched_by_maximum": stats["parts_matched_by_maximum"],
            "seconds": time.perf_counter() - t_start}


TRACE_MODES = ("auto", "extrapolated", "full")


def run_into(result: dict, shape, cfg: dict, scenario, ids_cpu: list, fake_mode, steps: int, say,
             lr, seed, trace_mode: str, prepare_model=None) -> bool:
    """measure()'s fast path for device trace: fills `result` and returns True, or returns
    False (the caller traces the whole model) when trace_mode is "full", when "auto" finds
    the model too small to gain anything, or when the model cannot be extrapolated."""
    if trace_mode not in TRACE_MODES:
        raise ValueError(f"trace_mode: one of {', '.join(TRACE_MODES)}, got {trace_mode!r}")
    result["trace_mode"] = "full"
    if trace_mode == "full":
        return False
    L = shape.num_layers
    try:
        configured = _full_config(cfg).num_hidden_layers
    except (AttributeError, ValueError, KeyError):
        configured = None
    if configured != L:
        result["trace_fallback"] = f"layer count unclear (shape {L}, config {configured})"
        return False
    if len(set(shape.layers)) > 1:
        # Sliding-window and full layers (Gemma 2/3) keep different tensors: a model of 3-4
        # layers is not the whole model with fewer copies of one middle layer.
        result["trace_fallback"] = "layers of more than one kind (the extrapolation needs identical layers)"
        return False
    c = num_checkpointed_layers(L, scenario.keep) if scenario.method == "bp" else 0
    if len(plan(L, c)) == 1 or (trace_mode == "auto" and not worthwhile(L, c)):
        return False
    ids = [[fake_mode.from_tensor(t) for t in step] for step in ids_cpu[:steps]]
    try:
        if len(set(shape.layers)) > 1:
            # Layers of different kinds (Qwen3-MoE's dense layers among sparse ones) are not
            # copies of one another: a sample with fewer layers would not have the pattern.
            raise NotExtrapolable(f"layers differ ({len(set(shape.layers))} kinds)")
        fast = trace_extrapolated(cfg, scenario, L, ids, lr=lr, seed=seed, say=say, prepare_model=prepare_model)
    except NotExtrapolable as why:
        result["trace_fallback"] = str(why)
        say(0, steps, f"fast trace not possible ({why}): tracing the whole model")
        return False
    result.update(
        trace_mode="extrapolated", params=fast["params"], checkpointed_layers=fast["checkpointed_layers"],
        losses=[None] * steps, step_seconds=[], measured_peak_bytes=fast["peak_bytes"],
        measured_breakdown=fast["breakdown"], trace_samples=fast["samples"],
        trace_seconds=round(fast["seconds"], 3),
        peak_source=(f"MemTracker peak of steps 2..{steps}, fake tensors, extrapolated exactly from traces of "
                     f"{' and '.join(str(s['layers']) for s in fast['samples'])} layers to {L}"),
        breakdown_source="MemTracker, extrapolated")
    if fast["parts_matched_by_maximum"]:
        result["trace_parts_matched_by_maximum"] = fast["parts_matched_by_maximum"]
    return True
