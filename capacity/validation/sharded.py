"""Per-rank memory of data-parallel training over N devices, measured with PyTorch's own
distributed code on this one CPU.

How. torch's fake process group (`FakeStore`, backend "fake": rank 0 of N, collectives that
move nothing) and fake tensors (no memory) let the real `DistributedDataParallel`,
`ZeroRedundancyOptimizer` and FSDP2 (`fully_shard`) code run a step as rank 0 of N would,
and a MemTracker (`FSDPMemTracker` for FSDP2, per module and phase) counts every tensor that
rank holds. Rank 0 holds the largest shard of every parameter (FSDP2 pads dim 0 to a
multiple of N; rank 0's chunk is always full), so its peak is the per-device peak.

What each sharding runs (`Parallel.sharding`):
  ddp    torch.nn.parallel.DistributedDataParallel(bucket_cap_mb=25) (gradients copied into
         flat buckets that live as long as the model: gradient_as_bucket_view=False, its
         default and accelerate's), the optimizer replicated on every rank.
  zero1  DDP as above with torch.distributed.optim.ZeroRedundancyOptimizer: each rank keeps
         the optimizer states of its own parameters (whole tensors, assigned greedily by
         size) and steps them; FSDP2 has no optimizer-only sharding. DeepSpeed ZeRO-1 is not
         installed: its flat-buffer version is modelled in the notes, not measured here.
  zero2  FSDP2 with reshard_after_forward=False everywhere (FSDP's SHARD_GRAD_OP):
         parameters all-gathered once per step and kept from forward to backward, gradients
         and optimizer states sharded. (DeepSpeed ZeRO-2 keeps the 16-bit parameters whole all
         the time; not measured.)
  fsdp   FSDP2 FULL_SHARD exactly as accelerate 1.15 (HF Trainer with fsdp_version 2) wraps a
         causal LM: accelerate's own `fsdp2_prepare_model` shards every decoder layer
         (reshard_after_forward=True), the input embedding, the [final norm, head] group
         (reshard_after_forward=False) and the root.
  offload_optimizer (zero2, fsdp): FSDP2's CPUOffloadPolicy: sharded parameters, their
         gradients, the optimizer states and step on the host.

Mixed precision (`Scenario.mixed_precision`): FSDP2 as accelerate sets it up, fp32 sharded
parameters and MixedPrecisionPolicy(param_dtype = reduce_dtype = output_dtype = the 16-bit
dtype), no autocast (accelerate's FSDP2 path adds none; `reduce_fp32=True` reduces in fp32
instead); ddp and zero1 run fp32 parameters under torch.autocast, as accelerate's DDP path.

Two traps of tracing this, and how they are handled:
  * DTensor works out an op's output shape by running the op on full-size fake tensors
    (ShardingPropagator._propagate_tensor_meta_non_cached) inside whatever fake mode is
    active: under our FakeTensorMode that is the same mode the tracker runs in, so a tracker
    counts a full-size unsharded tensor for every optimizer op on a sharded parameter. A real
    run does that propagation under its own throw-away fake mode, which the tracker skips;
    here it is marked (`_untracked_propagation`) and skipped the same way.
  * DDP's constructor and its bucket rebuild after the first step read parameter data
    (shape checks across ranks, broadcasts): with fake tensors there is nothing to check,
    and the rebuild only regroups the same parameters into buckets of the same total size,
    so both are skipped. The buckets are allocated at construction, before any tracking:
    they are collected from DDP's own communication hook and tracked from the start.

Offload: on this CPU-only machine "device" and "host" are one device to the tracker; the
host share is what CPUOffloadPolicy keeps there (sharded parameters and gradients, the
optimizer's states and step), counted op by op, and the device peak is the rest. The
host-to-device copy of a layer's shard before its all-gather and the device copy of its
reduced gradient shard before the copy to the host (each one layer's shard, P_layer/N
values) are no-ops on a CPU and not in the trace.

A whole model is traced in seconds up to a few billion parameters; bigger models are
extrapolated exactly from traces of 3 and 4 decoder layers (fast_trace.py's method: the
live bytes after every op are affine in the layer count, op by op).
"""

from __future__ import annotations

import contextlib
import time
import types
from dataclasses import replace

import torch
import torch.distributed as dist
from torch._subclasses.fake_tensor import FakeTensorMode

from ..scenario import Scenario
from .faithful import real_run_code_paths
from .fast_trace import (NotExtrapolable, SAMPLE_LAYERS, _expand, _mark_layers, _roles, _sample_config,
                         extrapolated_peak, plan)
from . import peft_models
from .mezo import MeZO, default_chunk_elements
from .models import (TORCH_DTYPES, checkpoint_first_layers, construct, decoder_layers, hf_config,
                     num_checkpointed_layers)
from .source import resolve_model
from .steps import DEFAULT_LR, MEZO_EPS, decay_parameter_groups, optimizer_class_and_kwargs

SHARDINGS = ("ddp", "zero1", "zero2", "fsdp")
DDP_BUCKET_CAP_MB = 25     # torch's default, and HF TrainingArguments' (ddp_bucket_cap_mb None)

# The measured breakdown's names, one per tracker category; the same name for the same kind
# of memory under every sharding. "Parameter"/"Gradient" are MemTracker's (ddp, zero1:
# replicated), the others FSDPMemTracker's.
CATEGORY_NAMES = {
    "Parameter": "weights", "Sharded Param": "weights", "Unsharded Param": "weights_unsharded",
    "All Gather": "all_gather_buffers", "Gradient": "gradients", "Sharded Grad": "gradients",
    "Unsharded Grad": "gradients_unsharded", "Reduce Scatter": "reduce_scatter_buffers",
    "Optstate": "optimizer_states", "OptState": "optimizer_states", "Activation": "activations",
    "Temp": "temporaries", "Buffer": "buffers", "Inputs": "inputs", "Other": "inputs",
    "Gradient buckets": "gradient_buckets",
}
# What CPUOffloadPolicy keeps on the host.
HOST_CATEGORIES = ("Sharded Param", "Sharded Grad", "OptState")
BUCKETS = "Gradient buckets"


# ------------------------------------------------------------------ the fake world

MESH_DIM = "dp_shard"


@contextlib.contextmanager
def fake_world(world_size: int, rank: int = 0):
    """A fake process group of `world_size` ranks in which this process is `rank`; yields
    its one-dimensional CPU device mesh (made outside any fake mode: it reads its ranks)."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.testing._internal.distributed.fake_pg import FakeStore
    if dist.is_initialized():
        raise RuntimeError("a process group is already initialized in this process")
    dist.init_process_group("fake", store=FakeStore(), rank=rank, world_size=world_size)
    try:
        yield init_device_mesh("cpu", (world_size,), mesh_dim_names=(MESH_DIM,))
    finally:
        dist.destroy_process_group()


_PROPAGATING = [0]   # > 0 while DTensor propagates shapes (see the module docstring)


@contextlib.contextmanager
def _untracked_propagation():
    """Mark DTensor's shape propagation, whose ops on full-size fake tensors a real run
    never allocates, so that the tracker skips them."""
    from torch.distributed.tensor._sharding_prop import ShardingPropagator
    original = ShardingPropagator._propagate_tensor_meta_non_cached

    def marked(self, op_schema):
        _PROPAGATING[0] += 1
        try:
            return original(self, op_schema)
        finally:
            _PROPAGATING[0] -= 1

    ShardingPropagator._propagate_tensor_meta_non_cached = marked
    try:
        yield
    finally:
        ShardingPropagator._propagate_tensor_meta_non_cached = original


# ------------------------------------------------------------------ the tracker

def _recording(base, frozen: bool = False):
    """A tracker class (MemTracker or FSDPMemTracker) that also keeps the live bytes after
    every op (total, then each category), in parts for the fast trace's extrapolation, and
    the peak of each phase of the step. frozen: the model has frozen parameters (PEFT),
    which take no gradient hook (tracker.FrozenParamsSafe)."""
    from .tracker import FrozenParamsSafe
    bases = (FrozenParamsSafe, base) if frozen else (base,)

    class Recording(*bases):
        def setup(self, categories):
            self.categories = list(categories)     # category names, in vector order
            self.parts, self._ops = [], []
            self.phase_no, self.phase = 0, "entry"
            self.phase_peaks: dict[str, tuple] = {}
            self.counting = True   # track_propagation=True counts DTensor's propagation (for the notes)
            self.skip_propagation = True

        def vector(self) -> tuple:
            cats = dict.fromkeys(self.categories, 0)
            for dev_snap in self._curr_mem_snap.values():
                for ref, value in dev_snap.items():
                    name = getattr(ref, "value", ref)
                    if name in cats:
                        cats[name] += value
            values = [cats[c] for c in self.categories]
            return (sum(values), *values)

        def begin(self, unit) -> None:
            # the live bytes at the boundary itself (a hook, between two ops) open the part
            self._ops = [self.vector()]
            self.parts.append(((self.phase_no, self.phase, unit), self._ops))

        def on_phase(self, name: str) -> None:
            self.phase_no += 1
            self.phase = name
            self.begin(("start",))
            self._record()

        def _record(self) -> None:
            v = self.vector()
            if not self._ops or self._ops[-1] != v:
                self._ops.append(v)
            best = self.phase_peaks.get(self.phase)
            if best is None or v[0] > best[0]:
                self.phase_peaks[self.phase] = v

        def _update_peak_stats(self, peak_state) -> None:
            super()._update_peak_stats(peak_state)
            self._record()

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if _PROPAGATING[0] and self.skip_propagation:
                return func(*args, **(kwargs or {}))
            return super().__torch_dispatch__(func, types, args, kwargs)

    return Recording


def _ddp_ref_type():
    """MemTracker's categories and one more, DDP's gradient buckets (a str enum: its members
    equal MemTracker's own, value for value)."""
    from torch.distributed._tools.mem_tracker import _MemRefType, _RefType
    return _RefType("_DDPRefType", {**{m.name: m.value for m in _MemRefType}, "BUCKETS": BUCKETS})


def _tracker(model, optimizer, fsdp: bool, buckets=()):
    from torch.distributed._tools.fsdp2_mem_tracker import FSDPMemTracker, _FSDPRefType
    from torch.distributed._tools.mem_tracker import MemTracker
    frozen = any(not p.requires_grad for p in model.parameters())
    if fsdp:
        tracker = _recording(FSDPMemTracker, frozen)(model, optimizer)
        tracker.setup([r.value for r in _FSDPRefType])
        return tracker
    tracker = _recording(MemTracker, frozen)()
    ref = _ddp_ref_type()
    tracker._ref_class = ref
    tracker.track_external(model, optimizer)
    # DDP's buckets exist from its construction: tracked from the start, so that the ops
    # that copy gradients into them do not count them anew.
    for bucket in buckets:
        tracker._update_and_maybe_create_winfos(bucket, ref.BUCKETS)
    tracker.setup([r.value for r in ref])
    return tracker


# ------------------------------------------------------------------ the sharded model

def _accelerate_fsdp2(model, mesh, reshard_after_forward: bool, mixed_dtype, reduce_fp32: bool,
                      offload: bool):
    """Shard `model` with accelerate 1.15's own fsdp2_prepare_model (what HF Trainer runs
    with fsdp_version 2), for a plugin with transformer-based wrapping."""
    from accelerate.utils import FullyShardedDataParallelPlugin
    from accelerate.utils.fsdp_utils import fsdp2_prepare_model
    from torch.distributed.fsdp import MixedPrecisionPolicy

    from torch.distributed.fsdp import CPUOffloadPolicy

    # accelerate's cpu_offload=True is CPUOffloadPolicy() (pinned host memory); pinning needs
    # an accelerator, and takes the same bytes, so the host copies here are not pinned.
    plugin = FullyShardedDataParallelPlugin(
        fsdp_version=2, reshard_after_forward=reshard_after_forward,
        auto_wrap_policy="transformer_based_wrap",
        cpu_offload=CPUOffloadPolicy(pin_memory=False) if offload else False,
        cpu_ram_efficient_loading=False, state_dict_type="SHARDED_STATE_DICT")
    mixed = "no"
    if mixed_dtype is not None:
        mixed = {torch.float16: "fp16", torch.bfloat16: "bf16"}[mixed_dtype]
        plugin.set_mixed_precision(mixed)          # what Accelerator(mixed_precision=...) does
        if reduce_fp32:
            plugin.mixed_precision_policy = MixedPrecisionPolicy(
                param_dtype=mixed_dtype, reduce_dtype=torch.float32, output_dtype=mixed_dtype)
    accelerator = types.SimpleNamespace(
        state=types.SimpleNamespace(fsdp_plugin=plugin), torch_device_mesh=mesh,
        parallelism_config=types.SimpleNamespace(fsdp_dim_names=(MESH_DIM,)),
        mixed_precision=mixed, is_main_process=True)
    return fsdp2_prepare_model(accelerator, model)


def _ddp(model):
    """DDP under the fake process group: (module, bucket buffers), see the module docstring."""
    import torch.nn.parallel.distributed as ddp_module
    from torch.nn.parallel import DistributedDataParallel

    skipped = {name: getattr(ddp_module, name) for name in
               ("_verify_param_shape_across_processes", "_sync_module_states")}
    for name in skipped:
        setattr(ddp_module, name, lambda *args, **kwargs: None)
    try:
        wrapped = DistributedDataParallel(model, bucket_cap_mb=DDP_BUCKET_CAP_MB, init_sync=False)
    finally:
        for name, fn in skipped.items():
            setattr(ddp_module, name, fn)
    buckets: dict[int, torch.Tensor] = {}

    def allreduce_hook(state, bucket):
        # DDP's default hook all-reduces the bucket in place; with a fake process group
        # that moves nothing, so the bucket is returned as it is (the same memory).
        buckets[bucket.index()] = bucket.buffer()
        done = torch.futures.Future()
        done.set_result(bucket.buffer())
        return done

    wrapped.register_comm_hook(None, allreduce_hook)

    class NoRebuild:
        def __init__(self, reducer):
            self._reducer = reducer

        def _rebuild_buckets(self):
            return False

        def __getattr__(self, name):
            return getattr(self._reducer, name)

    wrapped.reducer = NoRebuild(wrapped.reducer)
    return wrapped, buckets


class _ShardMeZO(MeZO):
    """MeZO over the local shards of FSDP2's parameters (each rank perturbs its own shard)."""

    def __init__(self, model, lr, eps, seed, chunk_elements):
        shards = [p.to_local() if hasattr(p, "to_local") else p for p in model.parameters() if p.requires_grad]
        with torch.no_grad():
            views = [torch.nn.Parameter(s.detach(), requires_grad=True) for s in shards]
        super().__init__(views, lr=lr, eps=eps, seed=seed, chunk_elements=chunk_elements)


class ShardedRun:
    """One rank's view of a data-parallel run: the model wrapped by `sharding`, its optimizer
    (BP) or MeZO, and a step that names its phases (tracker.on_phase)."""

    def __init__(self, cfg: dict, scenario: Scenario, sharding: str, mesh=None, checkpointed: int = 0,
                 reduce_fp32: bool = False, lr: float | None = None, seed: int = 0,
                 mezo_chunk_elements: int | None = None, config=None):
        self.scenario, self.sharding = scenario, sharding
        self.fsdp = sharding in ("zero2", "fsdp")
        mixed = TORCH_DTYPES[scenario.dtype] if scenario.mixed_precision else None
        build_dtype = "fp32" if mixed is not None else scenario.dtype
        torch.manual_seed(seed)
        model = construct(config if config is not None else hf_config(cfg), TORCH_DTYPES[build_dtype],
                          scenario.attention)
        self.params = sum(p.numel() for p in model.parameters())
        # A PEFT model as a user's code makes it: get_peft_model (or the frozen top layers)
        # before the wrap, as Trainer and accelerate see it (peft_models.prepare).
        model = peft_models.prepare(model, scenario.peft, "trace", TORCH_DTYPES[scenario.dtype])
        self.layers = decoder_layers(model)
        self.checkpointed = checkpoint_first_layers(model, checkpointed) if scenario.method == "bp" else []
        self.buckets: dict = {}
        self.autocast = contextlib.nullcontext
        if self.fsdp:
            # MeZO's forwards run without autograd: a unit that is not resharded after forward
            # would keep a stale unsharded copy that MeZO's perturbation of the shards never
            # reaches, so MeZO reshards every unit (see NOTES).
            reshard = True if scenario.method != "bp" else sharding == "fsdp"
            self.model = _accelerate_fsdp2(model, mesh, reshard, mixed,
                                           reduce_fp32, scenario.parallel.offload_optimizer)
        elif scenario.method == "bp":
            self.model, self.buckets = _ddp(model)
            if mixed is not None:
                self.autocast = lambda: torch.autocast("cpu", dtype=mixed)
        else:   # MeZO and inference under DDP: no gradients, so nothing DDP adds
            self.model = model
            if mixed is not None:
                self.autocast = lambda: torch.autocast("cpu", dtype=mixed)
        self.optimizer = self.mezo = None
        if scenario.method == "bp":
            self.model.train()
            impl = scenario.optimizer_impl
            # steps.py's optimizer, on the wrapped model's (sharded) parameters; with the
            # Trainer's decay and no-decay groups when the loop has them.
            params = (decay_parameter_groups(self.model) if scenario.loop.split_decay_groups
                      else [p for p in self.model.parameters() if p.requires_grad])
            cls, kwargs = optimizer_class_and_kwargs(scenario.optimizer, impl, lr)
            if sharding == "zero1":
                from torch.distributed.optim import ZeroRedundancyOptimizer
                self.optimizer = ZeroRedundancyOptimizer(params, optimizer_class=cls, **kwargs)
            else:
                self.optimizer = cls(params, **kwargs)
        elif scenario.method == "mezo":
            self.model.eval()
            chunk = mezo_chunk_elements or default_chunk_elements(self.params)
            self.mezo = _ShardMeZO(self.model, DEFAULT_LR["mezo"] if lr is None else lr, MEZO_EPS, seed, chunk)
        else:
            self.model.eval()
        self.tracker = None

    def _phase(self, name):
        if self.tracker is not None:
            self.tracker.on_phase(name)

    def _reset(self):
        if self.tracker is not None:
            self.tracker.reset_mod_stats()

    def step(self, ids) -> None:
        sc = self.scenario
        if sc.method == "bp":
            self._phase("forward")
            self._reset()
            with self.autocast():
                out = self.model(input_ids=ids, labels=ids, use_cache=sc.loop.use_cache)
            self._phase("backward")
            if sc.loop.hold_outputs:
                out.loss.backward()
            else:
                loss = out.loss
                del out
                loss.backward()
                out = loss
            self._phase("optimizer step")
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
            del out
            return
        if sc.method == "mezo":
            self._phase("perturbation")
            self.mezo.step(self._forward_loss)
            return
        self._forward_loss()

    def _forward_loss(self):
        previous = self.tracker.phase if self.tracker is not None else None
        self._phase("forward")
        self._reset()
        with torch.no_grad(), self.autocast():
            out = self.model(input_ids=self._ids, labels=self._ids, use_cache=False)
            loss = out.loss
            del out
        if self.fsdp:
            for module in self.model.modules():
                if hasattr(module, "reshard") and hasattr(module, "_get_fsdp_state"):
                    module.reshard()
        self._reset()
        if previous is not None and self.scenario.method == "mezo":
            self._phase(previous)
        return loss

    def run_step(self, ids) -> None:
        self._ids = ids
        self.step(ids)

    def track(self):
        """A tracker of this rank (entered by the caller around the tracked steps)."""
        tracker = _tracker(self.model, self.optimizer, self.fsdp, list(self.buckets.values()))
        self.tracker = tracker
        return tracker


# ------------------------------------------------------------------ measuring

def _names(categories: list[str], vector, device_only: bool = False) -> dict:
    out = {}
    for name, value in zip(categories, vector[1:]):
        if device_only and name in HOST_CATEGORIES:
            continue
        key = CATEGORY_NAMES.get(name, name)
        out[key] = out.get(key, 0) + value
    return out


def _device_vectors(categories: list[str], parts: dict) -> dict:
    """The parts with host-side categories (CPUOffloadPolicy) zeroed, and the total redone."""
    host = [n for n, c in enumerate(categories) if c in HOST_CATEGORIES]
    out = {}
    for key, ops in parts.items():
        new = []
        for v in ops:
            values = list(v[1:])
            for n in host:
                values[n] = 0
            new.append((sum(values), *values))
        out[key] = new
    return out


def _host_vectors(categories: list[str], parts: dict) -> dict:
    keep = [n for n, c in enumerate(categories) if c in HOST_CATEGORIES]
    out = {}
    for key, ops in parts.items():
        new = []
        for v in ops:
            values = [v[1 + n] if n in keep else 0 for n in range(len(categories))]
            new.append((sum(values), *values))
        out[key] = new
    return out


def _peak(parts: dict):
    best = None
    for ops in parts.values():
        for v in ops:
            if best is None or v[0] > best[0]:
                best = v
    return best


def _phase_peaks(parts: dict) -> dict:
    """{phase: the vector at the phase's peak}."""
    return {phase: v for phase, (v, _) in _phase_peak_places(parts).items()}


def _phase_peak_places(parts: dict) -> dict:
    """{phase: (the vector at the phase's peak, the part it falls in)}: the part names a
    decoder layer's forward, after forward or backward, or the start of the phase."""
    out = {}
    for key, ops in parts.items():
        phase = key[1]
        for v in ops:
            if phase not in out or v[0] > out[phase][0][0]:
                out[phase] = (v, key)
    return out


def trace_rank(cfg: dict, scenario: Scenario, mesh, num_layers: int | None = None, ids=None,
               reduce_fp32: bool = False, roles=None, seed: int = 0, lr=None,
               mezo_chunk_elements: int | None = None, steps: int = 3,
               skip_propagation: bool = True) -> dict:
    """Trace `steps` steps of rank 0 (the first untracked) under an active FakeTensorMode and
    fake process group. Returns the timeline parts, the categories and module statistics.
    num_layers: trace a model with this many decoder layers (the config's otherwise).
    roles: (extrapolate_c, extrapolate_k) to name the layers by role for extrapolation."""
    sc = scenario
    config = _sample_config(cfg, num_layers) if num_layers is not None else None
    L = num_layers if num_layers is not None else None
    if L is None:
        L = hf_config(cfg).num_hidden_layers
    c = num_checkpointed_layers(L, sc.keep) if sc.method == "bp" else 0
    run = ShardedRun(cfg, sc, sc.parallel.sharding, mesh=mesh, checkpointed=c, reduce_fp32=reduce_fp32, lr=lr,
                     seed=seed, mezo_chunk_elements=mezo_chunk_elements, config=config)
    run.run_step(ids[0])              # step 1: lazy init, optimizer states; not counted
    tracker = run.track()
    tracker.skip_propagation = skip_propagation
    if roles is not None:
        extrapolate_c, extrapolate_k = roles
        k = L - c

        def roles_of(i):
            if i < c:
                return tuple(("checkpointed", r) for r in _roles(i, c, extrapolate_c))
            return tuple(("kept", r) for r in _roles(i - c, k, extrapolate_k))
    else:
        def roles_of(i):
            return (("layer", i),)
    handles = _mark_layers(tracker, run.layers, roles_of)
    if hasattr(tracker, "track_inputs"):
        tracker.track_inputs(tuple(ids[1:steps]))
    else:
        tracker.track_external(*ids[1:steps])
    try:
        with tracker:
            tracker.begin(("entry",))
            tracker._record()
            for later in ids[1:steps]:
                run.run_step(later)
    finally:
        for h in handles:
            h.remove()
    rank_elements = None
    if sc.parallel.sharding == "zero1" and run.optimizer is not None:
        # ZeroRedundancyOptimizer's own partition (whole tensors, greedily by size)
        rank_elements = [sum(p.numel() for group in groups for p in group["params"])
                         for groups in run.optimizer._partition_parameters()]
    modules = {}
    for mod_stats in getattr(tracker, "memory_tracking", {}).values():
        peaks = {}
        for state, snaps in mod_stats.snapshots.items():
            name = getattr(state, "value", str(state))
            if name in ("Peak Forward", "Peak Backward") and snaps:
                peaks[name] = max(sum(d.get("Total", 0) for d in s.values()) for s in snaps)
        if peaks:
            modules[mod_stats.mod_fqn] = peaks
    return {"parts": _expand(tracker.parts), "categories": tracker.categories, "params": run.params,
            "checkpointed": c, "modules": modules,
            "bucket_bytes": sum(b.untyped_storage().nbytes() for b in run.buckets.values()),
            "rank_elements": rank_elements}


def measure_sharded(model, scenario: Scenario, steps: int = 3, trace_mode: str = "auto",
                    reduce_fp32: bool = False, data=None, seed: int = 0, lr=None, progress=None,
                    skip_propagation: bool = True) -> dict:
    """The per-rank peak of `steps` steps (the first not counted) of `scenario` over
    scenario.parallel.devices ranks, traced with fake tensors and a fake process group.

    trace_mode: "full" traces the whole model; "extrapolated" traces 3 and 4 layer models
    and extrapolates exactly; "auto" extrapolates when that traces fewer layers.
    Returns a result dict like measure()'s: measured_peak_bytes (the device's per-rank
    peak), measured_breakdown, measured_phases, host_peak_bytes (offload), per-module peaks.
    """
    pl = scenario.parallel
    if pl.sharding not in SHARDINGS:
        raise ValueError(f"sharding: one of {', '.join(SHARDINGS)} to trace ranks, got {pl.sharding!r}")
    if pl.offload_optimizer and pl.sharding not in ("zero2", "fsdp"):
        raise ValueError(f"offload_optimizer: traced with FSDP2's CPUOffloadPolicy (zero2, fsdp), "
                         f"not with {pl.sharding}")
    if steps < 2:
        raise ValueError("steps: at least 2 (the peak is measured after the first step)")
    if scenario.peft.weights_bits != 16:
        raise ValueError("sharding: quantized bases (QLoRA, 8-bit) are not traced over several devices")
    if scenario.peft.method == "freeze":
        raise ValueError("sharding: training the top layers is not traced over several devices")
    say = progress or (lambda step, total, message: None)
    from .measurement import check_transformers_accepts
    from .preflight import check_tensor_sizes
    shape, cfg = resolve_model(model)
    check_transformers_accepts(cfg)
    check_tensor_sizes(shape, scenario)
    L = shape.num_layers
    c = num_checkpointed_layers(L, scenario.keep) if scenario.method == "bp" else 0
    peft_models.check(scenario.peft, "trace", checkpointing=c > 0)     # e.g. a prefix with checkpointing
    steps_traced = min(steps, 3)     # steps after the third repeat it (fast_trace.py)
    # A trace's token ids are fake too (their values play no part in a fake step; `data`
    # is accepted for the command line's sake): (batch, seq) int64, one per traced step.
    ids_shape = (scenario.batch, scenario.seq)
    samples = plan(L, c)
    extrapolate = trace_mode != "full" and len(samples) > 1 and (
        trace_mode == "extrapolated" or sum(a + b for a, b in samples) < L)
    result = {"model": shape.name, "method": scenario.method,
              "optimizer": scenario.optimizer if scenario.method == "bp" else None,
              "batch": scenario.batch, "seq": scenario.seq, "dtype": scenario.dtype,
              "mixed_precision": scenario.mixed_precision, "keep": scenario.keep,
              "attention": scenario.attention, "device": "trace", "steps": steps,
              "parallel": dict(pl.__dict__), "peft": scenario.to_dict()["peft"],
              "reduce_dtype": ("fp32" if reduce_fp32 else scenario.dtype) if scenario.mixed_precision else None,
              "losses": [None] * steps, "step_seconds": [], "oom": False}
    if pl.sharding == "zero1":
        # ZeroRedundancyOptimizer assigns whole tensors to ranks greedily, so the share of a
        # rank is not affine in the layer count: traced whole, on the rank with the most.
        extrapolate = False
    start = time.perf_counter()
    chunk = None
    if scenario.method == "mezo":
        # MeZO's default chunk over the whole model's trained parameters (its own default
        # on one device: mezo.MeZO over the parameters that require grad)
        chunk = default_chunk_elements(_whole_params(cfg, L, scenario, trained=True))
    rank = 0
    while True:
        try:
            traces, info = _trace_samples(cfg, scenario, rank, ids_shape, samples if extrapolate else None,
                                          c, L, reduce_fp32, seed, lr, chunk, steps_traced,
                                          skip_propagation, say)
            summary = _summarize(traces, samples if extrapolate else None, c, L, pl.offload_optimizer)
        except NotExtrapolable as why:
            if not extrapolate:
                raise
            result["trace_fallback"] = str(why)
            say(0, steps, f"fast trace not possible ({why}): tracing the whole model")
            extrapolate = False
            continue
        shares = traces[0]["rank_elements"]
        if not shares or shares[rank] == max(shares):
            break
        rank = shares.index(max(shares))
    result["rank"] = rank
    if shares:
        result["rank_parameter_elements"] = shares
    categories = traces[0]["categories"]
    device_vec, device_phases, host_vec = summary
    params = traces[0]["params"] if not extrapolate else _whole_params(cfg, L, scenario)
    result.update(
        params=params, checkpointed_layers=list(range(c)),
        measured_peak_bytes=device_vec[0],
        measured_breakdown=_names(categories, device_vec, device_only=pl.offload_optimizer),
        measured_phases={phase: v[0] for phase, v in device_phases.items()},
        measured_phase_breakdown={phase: _names(categories, v, device_only=pl.offload_optimizer)
                                  for phase, v in device_phases.items()},
        host_peak_bytes=host_vec[0] if host_vec is not None else 0,
        host_breakdown=_names(categories, host_vec) if host_vec is not None else {},
        trace_mode="extrapolated" if extrapolate else "full", trace_samples=info,
        trace_seconds=round(time.perf_counter() - start, 3),
        modules=traces[-1]["modules"] if not extrapolate else {},
        peak_source=(f"{'FSDPMemTracker' if pl.sharding in ('zero2', 'fsdp') else 'MemTracker'} "
                     f"peak of rank {rank} of {pl.devices}, steps 2..{steps_traced}, fake tensors, fake process group"
                     + (f", extrapolated exactly from {' and '.join(str(i['layers']) for i in info)} layers to {L}"
                        if extrapolate else "")),
        breakdown_source="FSDPMemTracker categories" if pl.sharding in ("zero2", "fsdp") else "MemTracker categories")
    if traces[0]["bucket_bytes"]:
        result["gradient_bucket_bytes"] = traces[0]["bucket_bytes"]
    if not extrapolate and not pl.offload_optimizer:
        result["measured_phase_where"] = {
            phase: f"step {2 + (key[0] - 1) // _phases_per_step(scenario)}, {_unit_name(key[2])}"
            for phase, (_, key) in _phase_peak_places(traces[0]["parts"]).items() if phase != "entry"}
    return result


def _phases_per_step(scenario: Scenario) -> int:
    return {"bp": 3, "mezo": 5, "inference": 1}[scenario.method]


def _unit_name(unit) -> str:
    """("backward", ("layer", 3)) -> "backward of layer 3"; ("start",) -> "start"."""
    if unit[0] == "start" or len(unit) == 1:
        return unit[0]
    where, (kind, index) = unit
    return f"{where} of {kind} {index}"


def _summarize(traces, samples, c, L, offload: bool):
    """(device peak vector, device peak of each phase, host peak vector or None) of a whole
    trace (samples None) or extrapolated from the sample traces."""
    categories = traces[0]["categories"]

    def best_of(select):
        timelines = [select(categories, t["parts"]) for t in traces]
        if samples is None:
            return _peak(timelines[0]), _phase_peaks(timelines[0])
        vector, _ = extrapolated_peak(timelines, samples, c, L - c)
        phases = {}
        for phase in sorted({key[1] for key in timelines[0]}):
            sub = [{k: v for k, v in tl.items() if k[1] == phase} for tl in timelines]
            phases[phase] = extrapolated_peak(sub, samples, c, L - c)[0]
        return vector, phases

    if not offload:
        device_vec, device_phases = best_of(lambda cats, parts: parts)
        return device_vec, device_phases, None
    device_vec, device_phases = best_of(_device_vectors)
    return device_vec, device_phases, best_of(_host_vectors)[0]


def _trace_samples(cfg, scenario, rank, ids_shape, samples, c, L, reduce_fp32, seed, lr, chunk,
                   steps_traced, skip_propagation, say):
    """Traces of `rank`: of the whole model (samples None), or of each sample (checkpointed,
    kept) layer count of the fast trace. Returns (traces, timing info)."""
    pl = scenario.parallel
    fake = FakeTensorMode()
    traces, info = [], []
    with fake_world(pl.devices, rank) as mesh, fake, real_run_code_paths(), _untracked_propagation():
        ids = [torch.empty(ids_shape, dtype=torch.long) for _ in range(steps_traced)]
        if samples is None:
            t0 = time.perf_counter()
            traces.append(trace_rank(cfg, scenario, mesh, ids=ids, reduce_fp32=reduce_fp32, seed=seed,
                                     lr=lr, mezo_chunk_elements=chunk, steps=steps_traced,
                                     skip_propagation=skip_propagation))
            info.append({"layers": L, "checkpointed": c, "seconds": round(time.perf_counter() - t0, 3)})
            say(1, 1, f"traced {L} layers on rank {rank} of {pl.devices}")
            return traces, info
        ext_c, ext_k = c > SAMPLE_LAYERS, (L - c) > SAMPLE_LAYERS
        for n, (cs, ks) in enumerate(samples):
            t0 = time.perf_counter()
            sc = replace(scenario, keep=ks / (cs + ks)) if scenario.method == "bp" else scenario
            tr = trace_rank(cfg, sc, mesh, num_layers=cs + ks, ids=ids, reduce_fp32=reduce_fp32,
                            roles=(ext_c, ext_k), seed=seed, lr=lr, mezo_chunk_elements=chunk,
                            steps=steps_traced, skip_propagation=skip_propagation)
            if tr["checkpointed"] != cs:
                raise NotExtrapolable(f"{tr['checkpointed']} layers checkpointed, {cs} planned")
            traces.append(tr)
            info.append({"layers": cs + ks, "checkpointed": cs, "seconds": round(time.perf_counter() - t0, 3)})
            say(n + 1, len(samples), f"traced {cs + ks} layers on rank {rank} of {pl.devices}")
    return traces, info


def _whole_params(cfg: dict, L: int, scenario: Scenario, trained: bool = False) -> int:
    """The whole model's parameter count from a 1-layer model (layers are identical);
    trained: of the parameters the scenario's PEFT method trains (peft_models.prepare)."""
    with FakeTensorMode():
        model = construct(_sample_config(cfg, 1), torch.float32, scenario.attention)
        if trained:
            model = peft_models.prepare(model, scenario.peft, "trace", TORCH_DTYPES[scenario.dtype])

        def count(module) -> int:
            return sum(p.numel() for p in module.parameters() if p.requires_grad or not trained)
        return count(model) + (L - 1) * count(decoder_layers(model)[0])


def compare_sharded(model, scenario: Scenario, steps: int = 3, **kwargs) -> dict:
    """measure_sharded(...) with capacity's prediction beside it (predicted_peak_bytes None,
    with predicted_unavailable saying why, while the sharding model is not written)."""
    from dataclasses import replace as _replace
    shape, _ = resolve_model(model)
    result = measure_sharded(model, scenario, steps=steps, **kwargs)
    estimate, why = None, None
    try:
        import capacity
        estimate = capacity.estimate(shape, _replace(scenario, target="cpu"))
    except (ValueError, NotImplementedError, AttributeError) as err:
        why = str(err)
    measured = result.get("measured_peak_bytes")
    result["predicted_target"] = "cpu"
    result["predicted_peak_bytes"] = estimate.peak_bytes if estimate is not None else None
    result["predicted_phase"] = estimate.phase if estimate is not None else None
    if why is not None:
        result["predicted_unavailable"] = why
    result["error_pct"] = (100.0 * (estimate.peak_bytes - measured) / measured
                           if estimate is not None and measured else None)
    result["breakdown"] = {"measured": result.get("measured_breakdown"),
                           "predicted": dict(estimate.breakdown) if estimate is not None else None}
    if estimate is not None and result.get("measured_breakdown"):
        result["breakdown"]["comparable"] = comparable_breakdown(result["measured_breakdown"], estimate)
    return result


# What the tracker files as activations, temporaries, buffers or inputs, the model prices as
# activations, the logits and loss and temporaries (the names differ, the sum does not). A
# unit's unsharded gradients are temporaries to FSDPMemTracker (they are not yet any
# parameter's .grad) and gradients_unsharded to the model: the same class here.
_ACTIVATION_LIKE = ("activations", "temporaries", "buffers", "inputs", "other", "logits_and_loss",
                    "gradients_unsharded")


def comparable_breakdown(measured: dict, estimate) -> dict:
    """Measured and predicted per-device breakdowns in classes both sides name, each side
    adding up to its peak: the sharding's own terms (sharded and gathered weights, gradients,
    buckets, collective buffers, optimizer states) by name; mixed precision's fp32 master
    weights are the tracker's parameters; the optimizer step's temporaries are its states
    (as the one-device comparison files them, memory.by_tracker_class); the rest is
    activations_and_temporaries. (With a frozen 16-bit base and fp32 adapters in one FSDP
    unit the tracker files the unit's gathered parameters as activations: docs/sharding.md.)"""
    def classes(b: dict, step_temporaries: bool) -> dict:
        out: dict = {}
        for name, value in b.items():
            if not isinstance(value, (int, float)):
                continue
            if name in ("master_weights", "trainable_weights"):    # (a PEFT model's adapters too)
                name = "weights"
            elif name == "temporaries" and step_temporaries:
                name = "optimizer_states"
            elif name in _ACTIVATION_LIKE:
                name = "activations_and_temporaries"
            out[name] = out.get(name, 0) + int(value)
        return out
    m = classes(measured, False)
    p = classes(dict(estimate.breakdown), estimate.phase == "optimizer step")
    keep = [k for k in dict.fromkeys([*p, *m]) if m.get(k, 0) or p.get(k, 0)]
    return {"measured": {k: m.get(k, 0) for k in keep}, "predicted": {k: p.get(k, 0) for k in keep}}
