"""Per-device memory of data-parallel training over N devices of one kind.

A sharding strategy is one function of N: it takes the model, the step and the number of
devices and returns the memory of one device (rank 0, whose shards are the largest; for
ZeRO-1 the rank with the most optimizer state) at every moment of the step where the
peak can fall, term by term. The step's activations are the single-device ones of the
per-device batch (capacity/memory.py: the same operators run on every rank); what a
strategy changes is the model state around them and the buffers it adds.

    ddp     torch.nn.parallel.DistributedDataParallel: everything replicated, plus its
            gradient buckets (`gradient_as_bucket_view=False`, the default: every gradient
            is copied into flat buckets that live as long as the model).
    zero1   DDP with torch.distributed.optim.ZeroRedundancyOptimizer: each rank keeps and
            steps the optimizer states of its own parameters, whole tensors assigned
            greedily by size (largest first, to the least loaded rank).
    zero2   FSDP2 with reshard_after_forward=False (FSDP's SHARD_GRAD_OP): parameters
            gathered once per step and kept from forward to each unit's post-backward;
            gradients and optimizer states sharded.
    fsdp    FSDP2 FULL_SHARD as accelerate 1.15 wraps a causal LM (what HF Trainer runs
            with fsdp_version 2): every decoder layer a unit resharded after its forward,
            the input embedding a unit unless tied, the [final norm, head] (tied:
            [final norm, embedding, head]) group a unit kept gathered after forward, the
            root the rest.
    offload_optimizer (zero2, fsdp): FSDP2's CPUOffloadPolicy: sharded parameters, their
            gradients, the optimizer states and the optimizer step on the host
            (Estimate.host_bytes); the device holds the gathered units, the collectives'
            buffers and the activations.

What FSDP2 does, per unit u of the wrapped model (torch/distributed/fsdp/_fully_shard/
_fsdp_param_group.py, _fsdp_collectives.py, read and checked against traces: docs/sharding.md):
  * every tensor is split along dim 0 into N chunks, each padded to the first:
    shard(t) = ceil(rows/N)·row elements on rank 0, gathered(t) = N·shard(t);
  * before a unit runs, its shards are all-gathered into one buffer (the all-gather
    output, b_c·G(u)) and copied out into the unit's parameters (b_c·G(u) again); in forward
    the buffer is kept until the next unit's all-gather is waited on, in backward it is
    freed after the copy-out; in backward the next unit (in reverse) is prefetched;
  * after a unit's backward its gradients (b_c·P(u), unpadded) are copied into a
    reduce-scatter input (b_r·G(u)), kept until the next unit's reduce-scatter, and the
    reduced shard (b_m·G(u)/N) is kept until the optimizer step;
  * mixed precision: accelerate's MixedPrecisionPolicy(param_dtype = reduce_dtype = 16-bit)
    with fp32 sharded parameters and no autocast: the step computes as a pure 16-bit model.
b_m bytes of the stored parameters (4 under mixed precision, else the dtype), b_c of the
compute dtype, b_r of the reduce dtype (b_c).

Parameter-efficient fine-tuning (LoRA, prefix tuning over a 16-bit base): every tensor is
classed trained or frozen (trainable.classed_parameter_tensors); a unit's frozen tensors are
sharded, gathered and stored like the others, in their own dtype, while only its trained
ones get unsharded gradients, a reduce-scatter input, a reduced shard and optimizer states
(_Bytes); DDP's buckets and ZeroRedundancyOptimizer's partition cover the trained tensors
only. Where accelerate puts the final norm depends on how peft wraps the model
(final_norm_in_tail). docs/sharding.md, "LoRA and prefix tuning over several devices".

MeZO over a sharded model gathers each unit to run it and never holds gradients (every unit
is resharded after each forward: a unit kept gathered would hold a stale copy that MeZO's
perturbation of the shards never reaches). Under ddp and zero1 MeZO runs the plain model.

Measured by torch's own code under a fake process group (capacity/validation/sharded.py);
what is modelled only (DeepSpeed's ZeRO, FSDP1's flat parameters) is in docs/sharding.md.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass, replace
from functools import lru_cache
from math import ceil

from . import memory
from . import optimizers as optim
from .memory import (FP32, BackwardThroughLayers, ForwardThroughLayers, _LayerSums, _PatternSum,
                     _bp_phases, _state_bytes_per_value, builds_kv_cache, inference_forward_moments,
                     mezo_chunk_elements)
from .params import parameter_count, parameter_tensors
from .scenario import Estimate, Parallel, Scenario
from .shape import ModelShape

# The breakdown of a sharded estimate, in display order: memory.TERMS and the terms a
# strategy adds.
SHARDING_TERMS = ("weights_unsharded", "all_gather_buffers", "gradients_unsharded",
                  "reduce_scatter_buffers", "gradient_buckets")
TERMS = ("weights", "master_weights", "trainable_weights", "weights_unsharded", "gradients", "gradients_unsharded",
         "gradient_buckets", "optimizer_states", "all_gather_buffers", "reduce_scatter_buffers",
         "activations", "logits_and_loss", "temporaries")
# What CPUOffloadPolicy keeps on the host.
HOST_TERMS = ("weights", "gradients", "optimizer_states", "temporaries")

# Adam and AdamW keep two states per parameter, momentum one, SGD none.
STATES_PER_PARAMETER = {"sgd": 0, "momentum": 1, "adam": 2, "adamw": 2}


# ------------------------------------------------------------------ FSDP's units

@dataclass(frozen=True)
class Unit:
    """One FSDP unit on rank 0 of N: its parameters unpadded (P(u), elements), all-gathered
    (G(u): every tensor's dim 0 padded to a multiple of N) and sharded (G(u)/N); and the
    same of its trained parameters only (trained_*: every tensor under full fine-tuning,
    LoRA's adapters under LoRA), which alone get gradients, reduce-scatters and optimizer
    states."""

    params: int = 0
    gathered: int = 0
    shard: int = 0
    tensors: int = 0
    trained_params: int = 0
    trained_gathered: int = 0
    trained_shard: int = 0
    trained_tensors: int = 0


def unit(tensors: list[tuple], devices: int) -> Unit:
    """The unit holding `tensors` ((rows, elements per row) each, or (rows, elements per
    row, trained); trained when not said) over `devices` ranks: FSDP2 chunks dim 0 and pads
    every chunk to the first (_fsdp_param.py, padded_sharded_param_size), so rank 0 holds
    ceil(rows/N) rows of every tensor."""
    tensors = [t if len(t) == 3 else (*t, True) for t in tensors]
    trained = [t for t in tensors if t[2]]
    shard = sum(ceil(rows / devices) * row for rows, row, _ in tensors)
    t_shard = sum(ceil(rows / devices) * row for rows, row, _ in trained)
    return Unit(params=sum(rows * row for rows, row, _ in tensors), gathered=devices * shard,
                shard=shard, tensors=len(tensors),
                trained_params=sum(rows * row for rows, row, _ in trained), trained_gathered=devices * t_shard,
                trained_shard=t_shard, trained_tensors=len(trained))


def _plus(*units: Unit) -> Unit:
    return Unit(*(sum(getattr(u, f) for u in units) for f in Unit.__dataclass_fields__))


@dataclass(frozen=True)
class FsdpLayout:
    """accelerate 1.15's FSDP2 units of a causal LM over N devices (fsdp_utils.
    fsdp2_prepare_model): each decoder layer; the input embedding unless tied to the head;
    the tail, [final norm, head] grouped in one unit ([final norm, embedding, head] when
    tied), the final norm only when accelerate finds it (final_norm_in_tail); the root,
    whatever is left (learned position tables, OPT's projections, a final norm accelerate
    does not find)."""

    devices: int
    root: Unit
    embedding: Unit          # empty when tied (the tail holds it)
    layer_units: tuple       # one Unit per position in ModelShape.layers
    tail: Unit
    tail_norm: Unit          # the final norm's share of the tail (empty when it is not there)
    head: Unit               # the head's share of the tail (tied: the shared table)
    tied: bool

    def layer(self, i: int) -> Unit:
        return self.layer_units[i % len(self.layer_units)]


def final_norm_in_tail(s: ModelShape, sc: Scenario | None = None) -> bool:
    """Whether accelerate puts the final norm in the tail unit. fsdp_utils._find_final_norm
    scans the direct children of `getattr(model, model.base_model_prefix)` for a class
    named *Norm: the causal LM's base model (LlamaModel: `model.norm`) when the norm is a
    direct child of it (Architecture.final_norm_in_base_model). A LoRA model
    (PeftModelForCausalLM) forwards both lookups through LoraModel to the causal LM, so
    the base model it scans is the causal LM itself, whose children hold no norm: the final
    norm stays in the root (checked on the wrapped model's units, tests/test_sharded.py)."""
    lora = sc is not None and sc.peft.method == "lora"
    return s.arch.final_norm and s.arch.final_norm_in_base_model and not lora


def fsdp_layout(s: ModelShape, devices: int, sc: Scenario | None = None) -> FsdpLayout:
    """The units of `s` over `devices` ranks, their tensors classed trained or frozen by
    `sc`'s PEFT method (trainable.classed_parameter_tensors; every tensor trained when sc
    is None)."""
    from .scenario import Scenario as _Scenario
    from .trainable import classed_parameter_tensors
    sc = sc if sc is not None else _Scenario()
    t = classed_parameter_tensors(s, sc)
    norm_in_tail = final_norm_in_tail(s, sc)
    norm = unit(t["final_norm"] if norm_in_tail else [], devices)
    head = unit(t["embedding"] + t["head"] if s.tie_embeddings else t["head"], devices)
    root = unit(t["positions"] + t["projections"] + ([] if norm_in_tail else t["final_norm"]) + t["prefix"], devices)
    kinds = {kind: unit(classed_parameter_tensors(s, sc, kind)["layer"], devices) for kind in dict.fromkeys(s.layers)}
    return FsdpLayout(devices=devices, root=root,
                      embedding=Unit() if s.tie_embeddings else unit(t["embedding"], devices),
                      layer_units=tuple(kinds[k] for k in s.layers), tail=_plus(norm, head),
                      tail_norm=norm, head=head, tied=s.tie_embeddings)


def sharded_elements(layout: FsdpLayout, s: ModelShape, field: str = "shard") -> int:
    """S: the elements rank 0 holds, every unit's shard (field "trained_shard": of the
    trained parameters only; "trained_tensors": how many trained tensors)."""
    layers = _PatternSum([getattr(u, field) for u in layout.layer_units])(s.num_layers)
    return getattr(layout.root, field) + getattr(layout.embedding, field) + layers + getattr(layout.tail, field)


# ------------------------------------------------------------------ bytes per value

@dataclass(frozen=True)
class _Bytes:
    """Bytes per value, of the trained parameters: m stored (sharded) and of their
    gradients and optimizer states; c gathered (the compute dtype) and of their unsharded
    gradients; r of the reduce-scatter; and of the frozen ones: f gathered, fs stored."""

    m: int
    c: int
    r: int
    f: int
    fs: int

    def stored(self, u: Unit) -> int:
        """Bytes rank 0 keeps of unit u (its shards)."""
        return self.m * u.trained_shard + self.fs * (u.shard - u.trained_shard)

    def gathered(self, u: Unit) -> int:
        """Bytes of u's all-gather output, and of its unsharded parameters (FSDP2 gathers
        mixed dtypes as bytes: _fsdp_collectives.foreach_all_gather's uint8 view)."""
        return self.c * u.trained_gathered + self.f * (u.gathered - u.trained_gathered)

    def grads(self, u: Unit) -> int:
        """Bytes of the unsharded gradients of u's trained parameters (unpadded)."""
        return self.c * u.trained_params

    def reduce_in(self, u: Unit) -> int:
        """Bytes of u's reduce-scatter input: the padded gradients of its trained
        parameters (FSDPParamGroup.post_backward reduces only parameters with a gradient)."""
        return self.r * u.trained_gathered

    def reduced(self, u: Unit) -> int:
        """Bytes of u's reduced gradient shard."""
        return self.m * u.trained_shard


def _bytes(sc: Scenario) -> _Bytes:
    """Under mixed precision accelerate upcasts the trainable parameters to fp32
    (fsdp2_prepare_model: `param.requires_grad and param.dtype != torch.float32`) and sets
    MixedPrecisionPolicy(param_dtype = reduce_dtype = the 16-bit dtype), which gathers every
    parameter in the 16-bit dtype; frozen parameters keep the dtype they were loaded in, fp32
    under mixed precision (a LoRA model's frozen base). Without it every parameter is
    gathered and reduced in its own dtype: LoRA's fp32 adapters in fp32 beside a 16-bit base."""
    from .trainable import trained_value_bytes
    m = _state_bytes_per_value(sc) if sc.peft.method == "none" else trained_value_bytes(sc)
    c = sc.bytes_per_value if sc.mixed_precision else m
    return _Bytes(m=m, c=c, r=c, f=sc.bytes_per_value, fs=_state_bytes_per_value(sc))


def _compute_scenario(sc: Scenario) -> Scenario:
    """The single-device step whose activations a rank of FSDP2 runs: accelerate's mixed
    precision casts the parameters to the 16-bit dtype without autocast, so the step
    computes as a pure 16-bit model, LoRA's adapters included (gathered in 16 bits: peft's
    `_cast_input_dtype(x, lora_A.weight.dtype)` then casts nothing)."""
    peft = sc.peft
    if sc.mixed_precision and peft.method == "lora":
        peft = replace(peft, adapter_dtype="model")
    return replace(sc, mixed_precision=False, parallel=Parallel(), peft=peft)


def _optimizer_state_bytes(sc: Scenario, elements: int, tensors: int, value_bytes: int | None = None) -> int:
    """The optimizer states of `elements` trained parameters in `tensors` tensors (memory.
    optimizer_state_bytes for a rank's share): k states per parameter in the parameters'
    dtype (`value_bytes`: the scenario's state dtype unless said), Adam's fp32 `step` per
    tensor where it is on the device (optimizers.adam_steps_on_device)."""
    if sc.method != "bp":
        return 0
    k = STATES_PER_PARAMETER[sc.optimizer]
    steps = FP32 * tensors if k == 2 and optim.adam_steps_on_device(sc) else 0
    return k * (value_bytes or _state_bytes_per_value(sc)) * elements + steps


def registration_order(s: ModelShape, sc: Scenario | None = None) -> list[tuple[int, int]]:
    """The trained parameter tensors (rows, elements per row) in the order model.parameters()
    gives them, for the pairs of consecutive tensors a per-tensor optimizer step sees: the
    embeddings, then each layer (its projections, each weight before its bias, then its
    norms: LlamaDecoderLayer and most registrations end with the norms; LoRA's adapters
    only, trainable.lora_tensors), the final norm, the head. Enough layers to show every
    pair of neighbouring kinds (one pattern period and one more), then the last layer.
    Every tensor when sc is None."""
    from .trainable import classed_parameter_tensors

    def trained(group: list) -> list:
        return [(rows, row) for rows, row, *how in group if not how or how[0]]
    t = parameter_tensors(s) if sc is None else classed_parameter_tensors(s, sc)
    out = trained(t["embedding"] + t["positions"] + t["projections"] + t.get("prefix", []))
    L, period = s.num_layers, len(s.layers)
    for i in sorted({*range(min(L, period + 1)), L - 1}):
        kind = s.layer_kind(i)
        out += trained((parameter_tensors(s, kind) if sc is None else classed_parameter_tensors(s, sc, kind))["layer"])
    return out + trained(t["final_norm"] + t["head"])


def _optimizer_step_temp_bytes(s: ModelShape, sc: Scenario, devices: int, elements: int) -> int:
    """What the optimizer step allocates beyond its states on a rank holding `elements`
    trained elements, every tensor sharded over `devices` (capacity/optimizers.py for one device):
    Adam/AdamW foreach the square root of every local tensor of its largest group at once
    (Trainer's decay and no-decay groups: 1-D tensors, norms and biases, are the no-decay
    ones); forloop 2·t_i + t_(i-1) over consecutive local tensors of a group; fused none.
    SGD and momentum none."""
    if sc.optimizer not in ("adam", "adamw") or sc.optimizer_impl == "fused":
        return 0
    local = [(ceil(rows / devices) * row, row == 1) for rows, row in registration_order(s, sc)]
    groups = ([[n for n, flat in local if not flat], [n for n, flat in local if flat]]
              if sc.loop.split_decay_groups else [[n for n, _ in local]])
    b = _bytes(sc).m
    if sc.optimizer_impl == "foreach":
        if not sc.loop.split_decay_groups:
            return b * elements
        # LoRA's adapters are all decayed (2-D, no norm or bias in their names)
        no_decay = _no_decay_elements(s, devices) if sc.peft.method == "none" else 0
        return b * max(elements - no_decay, no_decay)
    return b * max(2 * x + (g[i - 1] if i else 0) for g in groups for i, x in enumerate(g))


def _no_decay_elements(s: ModelShape, devices: int) -> int:
    """Rank 0's elements of the 1-D tensors (norms and biases: Trainer's no-decay group)."""
    t = parameter_tensors(s)
    flat = sum(ceil(rows / devices) for g, v in t.items() if g != "layer" for rows, row in v if row == 1)
    for kind, count in s.layer_counts().items():
        flat += count * sum(ceil(rows / devices) for rows, row in parameter_tensors(s, kind)["layer"] if row == 1)
    return flat


# ------------------------------------------------------------------ the activations

class _Activations:
    """The single-device activations of the per-device step at the moments a sharded step
    can peak (everything but model state: memory.py's terms)."""

    def __init__(self, s: ModelShape, sc: Scenario):
        phases = _bp_phases(s, sc)
        state = ("weights", "master_weights", "trainable_weights", "gradients", "optimizer_states")

        def non_state(name: str, also=()) -> int:
            return sum(v for k, v in phases[name].items() if k not in state and k not in also)

        self.loss_forward = non_state("forward")
        self.loss_backward = non_state("backward (loss)")
        # When the logits' gradient reaches the head (the head's pre-backward hook, where
        # FSDP2 prefetches the next unit): the loss's backward is done, its fp32 buffers
        # freed, and the logits' gradient (in the compute dtype) is live beside what the
        # forward saved and the loop holds.
        self.head_backward = phases["backward (loss)"]["activations"] \
            + phases["optimizer step"].get("logits_and_loss", 0) + sc.bytes_per_value * sc.tokens * s.vocab_size
        # Held from the loss to the end of the step (the output's logits when the loop
        # holds them): what the optimizer step sees beside the model state.
        self.held = non_state("optimizer step", also=("temporaries",))
        self.saved = phases["forward"]["activations"]
        layers = _LayerSums(s, sc)
        self.forward = ForwardThroughLayers(s, sc, layers)
        self.backward = BackwardThroughLayers(s, sc, layers)


# ------------------------------------------------------------------ the strategies

def _moment(**terms: int) -> dict[str, int]:
    return {k: v for k, v in terms.items() if v}


def ddp_phases(s: ModelShape, sc: Scenario) -> dict[str, dict[str, int]]:
    """DDP: the single-device step (autocast copies and all under mixed precision), plus
    the gradient buckets, gradient-sized, allocated with the model (reducer.cpp) and alive
    through every phase. MeZO and inference hold no gradients: DDP adds nothing."""
    phases = memory.single_device_phases(s, sc)
    if sc.method != "bp":
        return phases
    # Only parameters that require grad are bucketed (reducer.cpp builds the buckets from
    # them): LoRA's fp32 adapters, not the frozen base.
    from .trainable import trainable_value_bytes
    buckets = trainable_value_bytes(s, sc)
    return {name: {**terms, "gradient_buckets": buckets} for name, terms in phases.items()}


def zero1_phases(s: ModelShape, sc: Scenario) -> dict[str, dict[str, int]]:
    """ZeRO-1 as torch's ZeroRedundancyOptimizer: DDP, with the optimizer states (and the
    step's temporaries) of the heaviest rank's partition only."""
    phases = ddp_phases(s, sc)
    if sc.method != "bp":
        return phases
    rank, elements, tensors = _zero1_heaviest(s, sc.parallel.devices, sc.loop.split_decay_groups, sc.peft)
    states = _optimizer_state_bytes(sc, elements, tensors, _bytes(sc).m)
    out = {}
    for name, terms in phases.items():
        terms = {**terms, "optimizer_states": states}
        if name == "optimizer step":
            terms["temporaries"] = _zero1_step_temp_bytes(s, sc, rank)
        out[name] = terms
    return out


def zero1_partition(s: ModelShape, devices: int, split_groups: bool = False, peft=None) -> list[tuple[int, int]]:
    """(elements, tensors) of each rank's share under ZeroRedundancyOptimizer.
    _partition_parameters (split_groups: Trainer's decay and no-decay parameter groups,
    partitioned one after the other), of the trained tensors (`peft`: a Peft, every tensor
    when None: the optimizer is given only the parameters that require grad)."""
    return [(sum(e for e, _, _ in groups), sum(n for _, n, _ in groups))
            for groups in _zero1_shares(s, devices, split_groups, peft)]


@lru_cache(maxsize=256)
def _zero1_shares(s: ModelShape, devices: int, split_groups: bool, peft=None) -> list[list[tuple[int, int, list]]]:
    """Each rank's share of each parameter group: (elements, tensors, its two largest
    tensors). ZeroRedundancyOptimizer._partition_parameters takes the groups in turn, sorts
    a group's tensors by size, largest first (a stable sort), and gives each to the rank
    holding the fewest elements so far over all groups (the lowest index on a tie).

    Tensors of one size are placed in bulk: once every rank's load is within one tensor of
    the least loaded (strictly), the next N such tensors go one to each rank in the order
    of their loads, which leaves that order as it was; so whole rounds are placed at once
    and only the rest one by one (exact, and fast for thousands of layers)."""
    counts: list[dict[int, int]] = [{}, {}]           # group -> {size: how many}

    def add(rows: int, row: int, times: int) -> None:
        group = counts[1 if (split_groups and row == 1) else 0]
        group[rows * row] = group.get(rows * row, 0) + times

    from .scenario import Scenario as _Scenario
    from .trainable import classed_parameter_tensors
    sc = _Scenario() if peft is None else _Scenario(peft=peft)
    t = classed_parameter_tensors(s, sc)
    for name, tensors in t.items():
        if name != "layer":
            for rows, row, trained in tensors:
                if trained:
                    add(rows, row, 1)
    for kind, n in s.layer_counts().items():
        for rows, row, trained in classed_parameter_tensors(s, sc, kind)["layer"]:
            if trained:
                add(rows, row, n)
    if devices >= sum(n for group in counts for n in group.values()):
        # at least one rank per tensor: each goes to an empty rank, the largest to rank 0
        order = sorted(((size, g) for g, group in enumerate(counts) for size, n in group.items()
                        for _ in range(n)), key=lambda x: (x[1], -x[0]))
        shares = [[(0, 0, [])] * (2 if split_groups else 1) for _ in range(devices)]
        for r, (size, g) in enumerate(order):
            shares[r] = [(size, 1, [size]) if k == g else (0, 0, []) for k in range(2 if split_groups else 1)]
        return shares
    load = [0] * devices
    top = 0                               # the highest load (loads only grow)
    shares = [[] for _ in range(devices)]
    for sizes in counts[:2 if split_groups else 1]:
        elements, tensors, largest = [0] * devices, [0] * devices, [[] for _ in range(devices)]
        heap = [(load[r], r) for r in range(devices)]
        heapq.heapify(heap)
        for size in sorted(sizes, reverse=True):
            left = sizes[size]
            while left:
                if left >= devices:
                    if top - heap[0][0] < size:
                        rounds = left // devices
                        given = [rounds] * devices
                    else:
                        given = _water_fill(load, size, left)
                    for r, c in enumerate(given):
                        if c:
                            load[r] += c * size
                            elements[r] += c * size
                            tensors[r] += c
                            largest[r] += [size] * min(c, 2 - len(largest[r]))
                    heap = [(load[r], r) for r in range(devices)]
                    heapq.heapify(heap)
                    top = max(load)
                    left -= sum(given)
                    if sum(given):
                        continue
                _, r = heapq.heappop(heap)
                load[r] += size
                top = max(top, load[r])
                elements[r] += size
                tensors[r] += 1
                if len(largest[r]) < 2:
                    largest[r].append(size)
                heapq.heappush(heap, (load[r], r))
                left -= 1
        for r in range(devices):
            shares[r].append((elements[r], tensors[r], largest[r]))
    return shares


def _water_fill(load: list[int], size: int, items: int) -> list[int]:
    """How many of `items` tensors of `size` elements each rank takes while the greedy
    rule (the least loaded rank next) lifts every rank below a level to it: for the highest
    level λ with n(λ) = Σ ceil((λ - load_r) / size) over the ranks below λ at most `items`,
    those counts. Every rank below λ is the least loaded until it reaches λ, and one that
    reaches it is not taken again before all others have, so the greedy rule places exactly
    these n(λ) tensors first, whatever the order; the rest (fewer than the ranks) go one by
    one."""
    def needed(level: int) -> int:
        return sum(-(-(level - x) // size) for x in load if x < level)

    low, high = min(load), min(load) + items * size
    while low < high:
        mid = (low + high + 1) // 2
        if needed(mid) <= items:
            low = mid
        else:
            high = mid - 1
    return [-(-(low - x) // size) if x < low else 0 for x in load]


@lru_cache(maxsize=256)
def _zero1_heaviest(s: ModelShape, devices: int, split_groups: bool, peft=None) -> tuple[int, int, int]:
    """(rank, elements, tensors) of the rank with the most elements (the lowest index on a
    tie): the one the engine traces."""
    part = zero1_partition(s, devices, split_groups, peft)
    rank = max(range(len(part)), key=lambda r: (part[r][0], -r))
    return rank, *part[rank]


def _zero1_step_temp_bytes(s: ModelShape, sc: Scenario, rank: int) -> int:
    """The rank's local optimizer step over its own tensors (whole, in the partition's
    order, largest first): foreach, its largest group; forloop, 2·t_i + t_(i-1) at the
    group's first two tensors; fused, none."""
    if sc.optimizer not in ("adam", "adamw") or sc.optimizer_impl == "fused":
        return 0
    groups = _zero1_shares(s, sc.parallel.devices, sc.loop.split_decay_groups, sc.peft)[rank]
    b = _bytes(sc).m
    if sc.optimizer_impl == "foreach":
        return b * max(e for e, _, _ in groups)
    return b * max(max([2 * big[0]] + ([2 * big[1] + big[0]] if len(big) > 1 else [])) if big else 0
                   for _, _, big in groups)


def fsdp_phases(s: ModelShape, sc: Scenario) -> dict[str, dict[str, int]]:
    """FSDP2 FULL_SHARD (reshard after forward) as accelerate wraps the model."""
    return _fsdp_phases(s, sc, reshard=True)


def zero2_phases(s: ModelShape, sc: Scenario) -> dict[str, dict[str, int]]:
    """FSDP2 SHARD_GRAD_OP (no reshard after forward)."""
    return _fsdp_phases(s, sc, reshard=False)


def _fsdp_phases(s: ModelShape, sc: Scenario, reshard: bool) -> dict[str, dict[str, int]]:
    lay = fsdp_layout(s, sc.parallel.devices, sc)
    if sc.method == "bp":
        phases = _fsdp_bp_moments(s, sc, lay, reshard)
    else:
        # MeZO reshards every unit after each forward (module docstring); inference too.
        phases = _fsdp_forward_only_moments(s, sc, lay)
    return phases


def _moments(sc: Scenario) -> tuple[dict, callable]:
    """An empty table of moments and the function that keeps, for each moment, its highest
    instance on the device: with the optimizer offloaded, the host's terms (HOST_TERMS) are
    left out before comparing."""
    moments: dict[str, dict[str, int]] = {}
    offload = sc.parallel.offload_optimizer

    def keep(name: str, terms: dict) -> None:
        if offload:
            terms = {k: v for k, v in terms.items() if k not in HOST_TERMS}
        if name not in moments or sum(terms.values()) > sum(moments[name].values()):
            moments[name] = terms
    return moments, keep


def _fsdp_bp_moments(s: ModelShape, sc: Scenario, lay: FsdpLayout, reshard: bool) -> dict[str, dict[str, int]]:
    """Every moment of a BP step of rank 0 where the peak can fall (docs/sharding.md walks
    through them with FSDP2's event log), with the terms live at it."""
    L = s.num_layers
    b = _bytes(sc)
    acts = _Activations(s, _compute_scenario(sc))
    trained_S = sharded_elements(lay, s, "trained_shard")
    base = {"weights": _stored_bytes(lay, s, b),
            "optimizer_states": _optimizer_state_bytes(sc, trained_S, sharded_elements(lay, s, "trained_tensors"), b.m)}
    # Everything below in bytes: g(u) a unit's gathered parameters (and its all-gather
    # output), rs(u) its reduce-scatter input, gr(u) its unsharded gradients, red(u) its
    # reduced gradient shard.
    g, rs, gr, red = b.gathered, b.reduce_in, b.grads, b.reduced
    G = _PatternSum([g(u) for u in lay.layer_units])          # Σ g(layer j) for j < i
    reduced_layers = _PatternSum([red(u) for u in lay.layer_units])
    R, E, T = g(lay.root), g(lay.embedding), g(lay.tail)

    def gathered_in_forward(i: int) -> int:
        """Units gathered before layer i's forward besides the root: zero2 keeps the
        embedding and layers 0..i-1; a tied tail is gathered at the embedding and kept."""
        return (T if lay.tied else 0) + (0 if reshard else E + G(i))

    first_ag = T if lay.tied else E           # the unit all-gathered before layer 0
    moments, keep = _moments(sc)

    # ---- forward: the root is gathered from its pre-forward to its post-backward
    keep("forward (embedding)", _moment(**base, weights_unsharded=R + first_ag,
                                        all_gather_buffers=R + first_ag,
                                        activations=acts.forward.between(-1)))
    candidates = acts.backward.candidates(margin=1)
    for i in candidates:
        Gi = g(lay.layer(i))
        keep("forward (layers)", _moment(**base, weights_unsharded=R + gathered_in_forward(i) + Gi,
                                         all_gather_buffers=Gi, activations=acts.forward.inside(i)))
        previous = g(lay.layer(i - 1)) if i else first_ag
        keep("forward (layers)", _moment(**base, weights_unsharded=R + gathered_in_forward(i) + Gi,
                                         all_gather_buffers=previous + Gi,
                                         activations=acts.forward.between(i - 1)))
    top = g(lay.layer(L - 1))
    before_head = R + gathered_in_forward(L)
    if lay.tied:
        # the tail is gathered already; the last layer's all-gather output is held through
        # the head and the loss (no later all-gather frees it)
        keep("forward (head and loss)", _moment(**base, weights_unsharded=before_head,
                                                all_gather_buffers=top, activations=acts.loss_forward))
    else:
        keep("forward (head and loss)", _moment(**base, weights_unsharded=before_head + T,
                                                all_gather_buffers=top + T,
                                                activations=acts.forward.between(L - 1)))
        # the tail's all-gather output is held until the root's post-forward
        keep("forward (head and loss)", _moment(**base, weights_unsharded=before_head + T,
                                                all_gather_buffers=T, activations=acts.loss_forward))

    # ---- backward
    gathered_layers = lambda i: 0 if reshard else G(i)       # noqa: E731  (zero2: layers 0..i-1)
    zero2_embedding = 0 if reshard else E
    tied_head_grad = gr(lay.head) if lay.tied else 0  # waits in autograd's buffer
    # The first unit prefetched in backward: the tail's pre-backward prefetches the top
    # layer when the tail has no final norm (tied or not); with the norm grouped in, the
    # head's post-backward reshards the tail and the norm's backward gathers it again,
    # and only then is the top layer prefetched.
    norm = g(lay.tail_norm)
    prefetch_top = top if (reshard and not norm) else 0
    keep("backward (loss)", _moment(**base, weights_unsharded=R + zero2_embedding + gathered_layers(L) + T,
                                    activations=acts.loss_backward))
    keep("backward (loss)", _moment(**base, weights_unsharded=R + zero2_embedding + gathered_layers(L) + T,
                                    all_gather_buffers=prefetch_top, activations=acts.head_backward))
    if norm:
        # After the head's post-backward (its reduce-scatter input held, its shard reduced),
        # the norm's backward all-gathers the whole tail again (copy-out: buffer and
        # parameters), then the top layer is prefetched.
        head_reduced = Unit() if lay.tied else lay.head
        regather = max(T, top if reshard else 0)
        keep("backward (final norm)", _moment(
            **base, weights_unsharded=R + zero2_embedding + gathered_layers(L) + T,
            all_gather_buffers=regather,
            reduce_scatter_buffers=rs(head_reduced),
            gradients=red(head_reduced),
            gradients_unsharded=tied_head_grad,
            activations=acts.saved + acts.held))
    # reduced before the layers: the untied tail (head, then norm); tied: only the norm
    reduced_tail = red(lay.tail_norm) if lay.tied else red(lay.tail)
    # the reduce-scatter input the top layer's backward finds held: the norm's, or an
    # untied tail's without a norm; a tied tail without a norm reduces nothing yet
    above_top = rs(lay.tail_norm) if norm else (0 if lay.tied else rs(lay.tail))
    for i in candidates:
        Gi = g(lay.layer(i))
        prefetch = (g(lay.layer(i - 1)) if i else first_ag) if reshard else (0 if i or not lay.tied else T)
        rs_above = rs(lay.layer(i + 1)) if i < L - 1 else above_top
        done = reduced_tail + reduced_layers(L) - reduced_layers(i + 1)
        held_layers = zero2_embedding + (G(i + 1) if not reshard else Gi)
        keep("backward (layers)", _moment(
            **base, weights_unsharded=R + held_layers, all_gather_buffers=prefetch,
            reduce_scatter_buffers=rs_above, gradients=done, gradients_unsharded=tied_head_grad,
            activations=acts.backward.at(i) + acts.held))
        # the end of its backward, before its post-backward: every weight gradient of the
        # layer made (b_c, unsharded), the layer still gathered, the reduce-scatter input of
        # the unit above still held
        keep("backward (layers)", _moment(
            **base, weights_unsharded=R + held_layers, all_gather_buffers=prefetch,
            reduce_scatter_buffers=rs_above, gradients=done,
            gradients_unsharded=tied_head_grad + gr(lay.layer(i)),
            activations=acts.backward.after(i) + acts.held))
        # its post-backward: resharded, its gradients copied into its reduce-scatter input
        keep("backward (layers)", _moment(
            **base, weights_unsharded=R + held_layers - Gi, all_gather_buffers=prefetch,
            reduce_scatter_buffers=rs(lay.layer(i)), gradients=done,
            gradients_unsharded=tied_head_grad + gr(lay.layer(i)),
            activations=acts.backward.after(i) + acts.held))
    # the embedding's backward: gathered again (its prefetched all-gather output copied
    # out), layer 0's reduce-scatter input held; then its gradient, dense (tied: the head's
    # buffered one, the embedding's and their sum, made out of place); then its
    # post-backward, its gradient copied into its reduce-scatter input
    first = lay.tail if lay.tied else lay.embedding
    grads_first = 3 * tied_head_grad if lay.tied else gr(lay.embedding)
    layers_done = reduced_tail + reduced_layers(L)
    regathered = g(first) if (reshard or lay.tied) else 0     # zero2 keeps an untied embedding
    keep("backward (embedding)", _moment(
        **base, weights_unsharded=R + g(first), all_gather_buffers=regathered,
        reduce_scatter_buffers=rs(lay.layer(0)), gradients=layers_done,
        gradients_unsharded=tied_head_grad, activations=acts.backward.after(0) + acts.held))
    keep("backward (embedding)", _moment(
        **base, weights_unsharded=R + g(first), reduce_scatter_buffers=rs(lay.layer(0)),
        gradients=layers_done, gradients_unsharded=grads_first, activations=acts.held))
    keep("backward (embedding)", _moment(
        **base, weights_unsharded=R, reduce_scatter_buffers=rs(first),
        gradients=layers_done, gradients_unsharded=gr(first), activations=acts.held))
    # the last reduce-scatter input (the root's, or the embedding's or tail's) is freed at
    # the optimizer step
    last = rs(lay.root) if lay.root.params else rs(first)
    all_reduced = b.m * trained_S
    keep("backward end", _moment(**base, gradients=all_reduced, reduce_scatter_buffers=last,
                                 activations=acts.held))
    keep("optimizer step", _moment(**base, gradients=all_reduced, activations=acts.held,
                                   temporaries=_optimizer_step_temp_bytes(s, sc, lay.devices, trained_S)))
    return moments


def _fsdp_forward_only_moments(s: ModelShape, sc: Scenario, lay: FsdpLayout) -> dict[str, dict[str, int]]:
    """MeZO (and inference) on FSDP2: each forward gathers every unit in turn (three
    layer-sized buffers at a layer's pre-forward: the previous layer's all-gather output,
    its own and its gathered parameters); the perturbation touches the local shards."""
    L = s.num_layers
    b = _bytes(sc)
    g = b.gathered
    inf = inference_forward_moments(s, _compute_scenario(sc))
    base = {"weights": _stored_bytes(lay, s, b)}
    R, E, T = g(lay.root), g(lay.embedding), g(lay.tail)
    tail_held = T if lay.tied else 0
    first_ag = T if lay.tied else E
    moments, keep = _moments(sc)

    # A forward that fills a KV cache (prefix tuning: peft passes the prefix as a cache)
    # grows it at each layer: the layer's update (cache_utils.DynamicLayer.update) replaces
    # its entry, the prefix's P keys and values, by their concatenation with the s new ones,
    # 2·p·b·s·K more. inference_forward_moments' figures are the top layer's; a layer i
    # below it holds L - 1 - i such growths fewer.
    cache = 2 * sc.bytes_per_value * sc.batch * sc.seq * s.kv_dim if builds_kv_cache(s, sc) else 0

    def fewer_entries(i: int) -> int:
        return (L - 1 - i) * cache

    keep("forward (embedding)", _moment(**base, weights_unsharded=R + first_ag,
                                        all_gather_buffers=R + first_ag, activations=inf["between"] - L * cache))
    period = len(lay.layer_units)
    for i in sorted({*range(min(L, period + 1)), *range(max(0, L - period), L)}):
        Gi = g(lay.layer(i))
        previous = g(lay.layer(i - 1)) if i else first_ag
        keep("forward (layers)", _moment(**base, weights_unsharded=R + tail_held + Gi,
                                         all_gather_buffers=Gi, activations=inf["layer"] - fewer_entries(i)))
        # at layer i's pre-forward, layers 0..i-1 done
        keep("forward (layers)", _moment(**base, weights_unsharded=R + tail_held + Gi,
                                         all_gather_buffers=previous + Gi,
                                         activations=inf["between"] - fewer_entries(i) - cache))
    top = g(lay.layer(L - 1))
    head = sum(inf["head"])
    if lay.tied:
        keep("forward (head and loss)", _moment(**base, weights_unsharded=R + T,
                                                all_gather_buffers=top, activations=head))
    else:
        keep("forward (head and loss)", _moment(**base, weights_unsharded=R + T,
                                                all_gather_buffers=top + T, activations=inf["between"]))
        keep("forward (head and loss)", _moment(**base, weights_unsharded=R + T,
                                                all_gather_buffers=T, activations=head))
    if sc.method == "mezo":
        keep("perturbation", _moment(**base, temporaries=_mezo_shard_chunk_bytes(s, sc, lay.devices)))
    return moments


def _mezo_shard_chunk_bytes(s: ModelShape, sc: Scenario, devices: int) -> int:
    """MeZO's z over the local shards of the trained parameters (the engine's chunked
    update over the parameters that require grad): one chunk (memory.mezo_chunk_elements
    under full fine-tuning; of the trained parameters' count under PEFT, as
    memory.mezo_chunk_bytes), or the largest local trained tensor if smaller (full
    fine-tuning: the token table's shard)."""
    from .memory import MEZO_CHUNK_MAX, MEZO_CHUNK_MIN, MEZO_CHUNK_SHARE
    from .trainable import classed_parameter_tensors, trainable_params
    groups = list(classed_parameter_tensors(s, sc).values())
    groups += [classed_parameter_tensors(s, sc, kind)["layer"] for kind in s.layer_counts()]
    largest = max(ceil(rows / devices) * row for group in groups for rows, row, trained in group if trained)
    if sc.peft.method == "none":
        chunk = mezo_chunk_elements(s)
    else:
        chunk = max(MEZO_CHUNK_MIN, min(MEZO_CHUNK_MAX, trainable_params(s, sc) // MEZO_CHUNK_SHARE))
    return _bytes(sc).m * min(chunk, largest)


def _stored_bytes(lay: FsdpLayout, s: ModelShape, b: _Bytes) -> int:
    """The bytes rank 0 keeps of every unit's shards (weights)."""
    layers = _PatternSum([b.stored(u) for u in lay.layer_units])(s.num_layers)
    return b.stored(lay.root) + b.stored(lay.embedding) + layers + b.stored(lay.tail)


STRATEGIES = {"ddp": ddp_phases, "zero1": zero1_phases, "zero2": zero2_phases, "fsdp": fsdp_phases}


# ------------------------------------------------------------------ the estimate

def check_sharded(sc: Scenario) -> None:
    """Refuse, by name, the sharded settings that are not modelled."""
    pl, lp = sc.parallel, sc.loop
    if pl.offload_optimizer and pl.sharding not in ("zero2", "fsdp"):
        raise ValueError(f"offload_optimizer: modelled with FSDP2's CPUOffloadPolicy (zero2, fsdp), "
                         f"not with {pl.sharding}")
    if sc.method == "bp" and (lp.grad_accum > 1 or not lp.zero_grad_to_none):
        raise ValueError("grad_accum: gradient accumulation and kept zeroed gradients are not modelled over "
                         "several devices yet (DDP's no_sync, FSDP's unsynchronised gradients)")
    if sc.method == "mezo" and lp.mezo_impl == "reference" and pl.sharding in ("zero2", "fsdp"):
        raise ValueError("mezo_impl: MeZO over FSDP shards is modelled for the chunked update; the reference "
                         "trainer's whole-tensor z is not")


def host_bytes(s: ModelShape, sc: Scenario) -> dict[str, int]:
    """What CPUOffloadPolicy keeps on the host at its highest (the optimizer step, run
    there): the sharded parameters, their reduced gradients, the optimizer states and the
    step's temporaries. Empty without offload."""
    if not sc.parallel.offload_optimizer:
        return {}
    lay = fsdp_layout(s, sc.parallel.devices, sc)
    S = sharded_elements(lay, s, "trained_shard")
    b = _bytes(sc)
    weights = _stored_bytes(lay, s, b)
    if sc.method != "bp":
        return _moment(weights=weights, temporaries=_mezo_shard_chunk_bytes(s, sc, lay.devices))
    return _moment(weights=weights, gradients=b.m * S,
                   optimizer_states=_optimizer_state_bytes(sc, S, sharded_elements(lay, s, "trained_tensors"), b.m),
                   temporaries=_optimizer_step_temp_bytes(s, sc, lay.devices, S))


def textbook_bytes(s: ModelShape, sc: Scenario) -> dict[str, int]:
    """The ZeRO paper's per-device model states (Rajbhandari et al. 2020, Figure 1):
    replicated (ddp), optimizer states / N (zero1), gradients too (zero2), parameters too
    (fsdp), beside memory.textbook_bytes' activations of the per-device batch."""
    single = memory.textbook_bytes(s, sc)
    n = sc.parallel.devices
    split = {"ddp": (), "zero1": ("optimizer_states",), "zero2": ("optimizer_states", "gradients"),
             "fsdp": ("optimizer_states", "gradients", "weights")}[sc.parallel.sharding]
    return {k: (ceil(v / n) if k in split else v) for k, v in single.items()}


def estimate_sharded(s: ModelShape, sc: Scenario) -> Estimate:
    """Per-device peak of one step of `sc` over sc.parallel.devices devices."""
    check_sharded(sc)
    # Each rank's cuBLAS workspaces, as on one device: the collectives' streams run no matmul.
    from .cuda_runtime import with_workspaces
    phases = with_workspaces(STRATEGIES[sc.parallel.sharding](s, sc), s, sc)
    totals = {name: sum(terms.values()) for name, terms in phases.items()}
    phase = max(totals, key=totals.get)
    host = host_bytes(s, sc)
    from .params import active_parameter_count
    from .trainable import all_params, trainable_params
    return Estimate(peak_bytes=totals[phase], breakdown={t: phases[phase].get(t, 0) for t in TERMS},
                    phase=phase, phases=totals, textbook=textbook_bytes(s, sc), params=all_params(s, sc),
                    active_params=active_parameter_count(s) + all_params(s, sc) - parameter_count(s),
                    trainable_params=trainable_params(s, sc) if sc.method != "inference" else 0,
                    host_bytes=sum(host.values()), host_breakdown=host)
