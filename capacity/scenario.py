"""What is being run: the method, the optimizer, the batch, the precision, checkpointing,
and how the user's own code runs it.

A `Scenario` is a frozen dataclass. Three parts of it are frozen dataclasses of their own,
each one home for one kind of variation:
  * `Loop`: the training loop (issue 8): optimizer implementation, whether the model output
    is held through backward, gradient accumulation, zero_grad, MeZO's implementation;
    named presets in LOOPS ("plain", "trainer").
  * `Peft`: what is trained and how the base weights are stored (issue 10): full, LoRA,
    prefix tuning, top layers only; 16-, 8- or 4-bit base weights.
  * `Parallel`: how many devices and how the model is sharded over them (issue 11).
`Estimate` is what the memory model returns for a (shape, scenario) pair.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace

METHODS = ("inference", "mezo", "bp")
OPTIMIZERS = ("sgd", "momentum", "adam", "adamw")
DTYPES = {"fp32": 4, "bf16": 2, "fp16": 2}   # bytes per element
ATTENTIONS = ("eager", "sdpa")
TARGETS = ("cuda", "cpu")
# How a mixture-of-experts layer runs its experts (transformers' `experts_implementation`):
# grouped_mm is its default; eager is the per-expert loop. And the routing the eager loop's
# memory is priced under (grouped_mm's does not depend on it): capacity/moe.py.
EXPERTS = ("grouped_mm", "eager")
ROUTINGS = ("balanced", "worst")

# Upper bounds that keep every product exact and every input meaningful.
MAX_BATCH = 2**20
MAX_SEQ = 2**22
MAX_GRAD_ACCUM = 2**16
MAX_MEZO_N = 2**10
MAX_DEVICES = 2**16


def _check_choice(name: str, value, allowed) -> None:
    if value not in allowed:
        raise ValueError(f"{name}: must be one of {', '.join(allowed)}, got {value!r}")


def _check_int(name: str, value, high: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= high:
        raise ValueError(f"{name}: must be a whole number in [1, {high}], got {value!r}")


def _check_bool(name: str, value) -> None:
    if not isinstance(value, bool):
        raise ValueError(f"{name}: must be true or false, got {value!r}")


# ------------------------------------------------------------------ the training loop

LOOP_NAMES = ("plain", "trainer")
OPTIMIZER_IMPLS = ("forloop", "foreach", "fused")
MEZO_IMPLS = ("chunked", "reference")


@dataclass(frozen=True)
class Loop:
    """How the user's code runs one optimizer step: one set of named settings, each with
    its own memory mechanism (docs/loops.md).

    name: the code that runs the step: "plain" (`out = model(...)`, `loss.backward()`,
      `opt.step()`, `opt.zero_grad()`) or "trainer" (transformers.Trainer.train()); "custom":
      settings put together by hand, run by the plain loop's code.
    optimizer_impl: torch.optim's implementation: "forloop" (one tensor at a time),
      "foreach" (grouped multi-tensor kernels), "fused"; None: what the loop's code gets
      (impl_defaults, else torch's default for the device; see resolved_optimizer_impl).
    impl_defaults: ((optimizer, impl), ...): the implementation the loop's code asks for
      when optimizer_impl is None (transformers.Trainer: optim="adamw_torch_fused").
    hold_outputs: whether the model output (its logits) is still referenced during
      backward() (`out = model(...); out.loss.backward()` holds it; Trainer.compute_loss
      returns the loss alone).
    grad_accum: micro-batches per optimizer step (K); `Scenario.batch` is one micro-batch.
      The K micro-batches of a step are on the device for the whole step (Trainer's
      get_batch_samples prefetches them). BP only.
    zero_grad_to_none: optimizer.zero_grad(set_to_none=True) (torch's default) frees the
      gradients; False keeps zeroed gradients alive through the next forward and backward.
    use_cache: whether BP forwards build transformers' KV cache (the config's use_cache,
      True for every supported family, applies unless the caller passes use_cache=False;
      transformers turns it off itself when gradient checkpointing is on).
    split_decay_groups: the optimizer holds two parameter groups, with and without weight
      decay (Trainer.create_optimizer: biases and norms without); a foreach step then works
      on one group at a time.
    separate_labels: the labels are a tensor of their own (Trainer's data collator stacks
      `labels` beside `input_ids`) rather than the input ids themselves.
    mezo_impl: "chunked" (ours: z regenerated chunk by chunk, in place) or "reference"
      (princeton-nlp/MeZO's trainer: a full-size z per parameter tensor drawn again in each
      pass, out-of-place updates, forwards under inference_mode with the config's use_cache).
    mezo_n: perturbations (pairs of forward passes) per MeZO step.
    """

    name: str = "plain"
    optimizer_impl: str | None = None
    impl_defaults: tuple = ()
    hold_outputs: bool = True
    grad_accum: int = 1
    zero_grad_to_none: bool = True
    use_cache: bool = False
    split_decay_groups: bool = False
    separate_labels: bool = False
    mezo_impl: str = "chunked"
    mezo_n: int = 1

    def __post_init__(self) -> None:
        validate_loop(self)


def loop_preset(name: str, **overrides) -> Loop:
    """A named loop, with any setting overridden (None leaves the preset's)."""
    if name not in LOOPS:
        raise ValueError(f"loop: must be one of {', '.join(LOOPS)}, got {name!r}")
    changes = {k: v for k, v in overrides.items() if v is not None}
    unknown = sorted(set(changes) - set(Loop.__dataclass_fields__) - {"name"})
    if unknown or "name" in changes:
        raise ValueError(f"loop: unknown setting {(unknown or ['name'])[0]!r}")
    return replace(LOOPS[name], **changes)


def validate_loop(lp: Loop) -> None:
    _check_choice("loop", lp.name, LOOP_NAMES + ("custom",))
    if lp.optimizer_impl is not None:
        _check_choice("optimizer_impl", lp.optimizer_impl, OPTIMIZER_IMPLS)
    if not isinstance(lp.impl_defaults, tuple) or not all(
            isinstance(d, tuple) and len(d) == 2 and d[0] in OPTIMIZERS and d[1] in OPTIMIZER_IMPLS
            for d in lp.impl_defaults):
        raise ValueError(f"impl_defaults: (optimizer, implementation) pairs, got {lp.impl_defaults!r}")
    for name in ("hold_outputs", "zero_grad_to_none", "use_cache", "split_decay_groups", "separate_labels"):
        _check_bool(name, getattr(lp, name))
    _check_int("grad_accum", lp.grad_accum, MAX_GRAD_ACCUM)
    _check_choice("mezo_impl", lp.mezo_impl, MEZO_IMPLS)
    _check_int("mezo_n", lp.mezo_n, MAX_MEZO_N)


# The named loops (docs/loops.md gives the code each one follows).
#   plain    out = model(input_ids=ids, labels=ids, use_cache=False); (out.loss / K).backward();
#            opt.step(); opt.zero_grad(), with foreach optimizers: the project's original semantics.
#   trainer  transformers.Trainer.train() with its defaults (transformers 5.23, torch 2.13):
#            optim="adamw_torch_fused" for AdamW (torch's default implementation otherwise),
#            compute_loss keeps only the loss, the config's use_cache, decay and no-decay
#            parameter groups, input_ids and labels collated as two tensors.
LOOPS = {
    "plain": Loop(name="plain", optimizer_impl="foreach", hold_outputs=True),
    "trainer": Loop(name="trainer", optimizer_impl=None, impl_defaults=(("adamw", "fused"),),
                    hold_outputs=False, use_cache=True, split_decay_groups=True, separate_labels=True),
}
DEFAULT_LOOP = "trainer"


# ------------------------------------------------------------------ what is trained

PEFT_METHODS = ("none", "lora", "prefix", "freeze")
WEIGHT_BITS = (16, 8, 4)
QUANT_TYPES = ("nf4", "fp4")
ADAPTER_DTYPES = ("fp32", "model")


@dataclass(frozen=True)
class Peft:
    """What is trained, and how the frozen base weights are stored.

    method: "none" (every parameter), "lora", "prefix" (trainable key/value prefixes),
      "freeze" (only the top `trainable_layers` decoder layers).
    lora_*: peft's LoraConfig (rank r, lora_alpha, lora_dropout, target_modules; an empty
      tuple means peft's default targets for the model type, ("all-linear",) every linear
      but the head).
    weights_bits: 16 (the model's dtype), 8 (bitsandbytes int8) or 4 (bitsandbytes 4-bit,
      `quant` nf4 or fp4, `double_quant` quantising the block statistics too).
    adapter_dtype (LoRA): the dtype LoRA's adapters are stored and computed in: "fp32"
      (get_peft_model's autocast_adapter_dtype=True, its default) or "model" (False: the
      model's dtype). FSDP's mixed precision computes them in the 16-bit dtype whatever
      they are stored in (capacity/sharding.py).
    """

    method: str = "none"
    lora_rank: int = 8
    lora_alpha: float = 8.0
    lora_dropout: float = 0.0
    lora_targets: tuple = ()
    prefix_tokens: int = 20
    trainable_layers: int = 1
    weights_bits: int = 16
    quant: str = "nf4"
    double_quant: bool = False
    adapter_dtype: str = "fp32"

    def __post_init__(self) -> None:
        validate_peft(self)


def validate_peft(pf: Peft) -> None:
    _check_choice("peft", pf.method, PEFT_METHODS)
    _check_int("lora_rank", pf.lora_rank, 2**16)
    if isinstance(pf.lora_alpha, bool) or not isinstance(pf.lora_alpha, (int, float)) \
            or not 0 < pf.lora_alpha <= 2**20:
        raise ValueError(f"lora_alpha: must be a positive number, got {pf.lora_alpha!r}")
    if isinstance(pf.lora_dropout, bool) or not isinstance(pf.lora_dropout, (int, float)) \
            or not 0.0 <= pf.lora_dropout < 1.0:
        raise ValueError(f"lora_dropout: must be a probability in [0, 1), got {pf.lora_dropout!r}")
    if not isinstance(pf.lora_targets, tuple) or not all(
            isinstance(t, str) and re.fullmatch(r"[A-Za-z0-9_.\-]{1,64}", t) for t in pf.lora_targets):
        raise ValueError(f"lora_targets: module names such as q_proj,v_proj or all-linear, got {pf.lora_targets!r}")
    _check_int("prefix_tokens", pf.prefix_tokens, 2**16)
    _check_int("trainable_layers", pf.trainable_layers, 2**24)
    if pf.weights_bits not in WEIGHT_BITS or isinstance(pf.weights_bits, bool):
        raise ValueError(f"weights_bits: must be one of 16, 8, 4, got {pf.weights_bits!r}")
    _check_choice("quant", pf.quant, QUANT_TYPES)
    _check_bool("double_quant", pf.double_quant)
    _check_choice("adapter_dtype", pf.adapter_dtype, ADAPTER_DTYPES)
    if pf.adapter_dtype != "fp32" and pf.method != "lora":
        raise ValueError(f"adapter_dtype: {pf.adapter_dtype!r} applies to LoRA adapters, not to peft {pf.method!r}")


# ------------------------------------------------------------------ many devices

SHARDINGS = ("none", "ddp", "zero1", "zero2", "fsdp")


@dataclass(frozen=True)
class Parallel:
    """Data-parallel training over `devices` devices of one kind.

    sharding: "none" (one device), "ddp" (replicated), "zero1" (optimizer states sharded),
      "zero2" (and gradients; FSDP SHARD_GRAD_OP), "fsdp" (and parameters; ZeRO-3, FSDP
      FULL_SHARD). offload_optimizer: optimizer states (and the step) on the host.
    """

    devices: int = 1
    sharding: str = "none"
    offload_optimizer: bool = False

    def __post_init__(self) -> None:
        validate_parallel(self)


def validate_parallel(pl: Parallel) -> None:
    _check_int("devices", pl.devices, MAX_DEVICES)
    _check_choice("sharding", pl.sharding, SHARDINGS)
    _check_bool("offload_optimizer", pl.offload_optimizer)
    if pl.sharding == "none" and pl.devices != 1:
        raise ValueError(f"sharding: {pl.devices} devices need a sharding (ddp, zero1, zero2 or fsdp)")


@dataclass(frozen=True)
class Scenario:
    """One fine-tuning (or inference) step.

    dtype: the precision the model is held and trained in (`model.to(dtype)`, a plain
    torch.optim optimizer whose states take the parameters' dtype). mixed_precision:
    16-bit compute with fp32 master weights, gradients and optimizer states (AMP-style:
    fp32 parameters, autocast to `dtype`). keep: the checkpoint ratio L'/L, the share of
    layers that keep their activations (1: no checkpointing). attention: the attention
    implementation, "sdpa" by default as transformers' from_pretrained/from_config choose it
    when none is given (torch.nn.functional.scaled_dot_product_attention), or "eager".
    target: the device whose
    kernels are modelled (CUDA fuses dropout into a 1-byte mask; the CPU keeps a full
    noise tensor). experts: how a mixture-of-experts model runs its experts (transformers'
    experts_implementation: "grouped_mm", its default, whose memory does not depend on the
    routing, or "eager", the per-expert loop); routing: the routing an eager loop is priced
    under, "balanced" (every expert gets top_k·tokens/E) or "worst" (every token to the same
    top_k experts). Both play no part for a dense model.
    """

    method: str = "bp"
    optimizer: str = "adamw"
    batch: int = 1
    seq: int = 512
    dtype: str = "bf16"
    mixed_precision: bool = False
    keep: float = 1.0
    attention: str = "sdpa"
    target: str = "cuda"
    experts: str = "grouped_mm"
    routing: str = "balanced"
    loop: Loop = field(default_factory=lambda: LOOPS[DEFAULT_LOOP])
    peft: Peft = field(default_factory=Peft)
    parallel: Parallel = field(default_factory=Parallel)

    def __post_init__(self) -> None:
        validate_scenario(self)

    @property
    def bytes_per_value(self) -> int:
        return DTYPES[self.dtype]

    @property
    def tokens(self) -> int:
        return self.batch * self.seq

    @property
    def optimizer_impl(self) -> str:
        """The optimizer implementation this step runs (the loop's, resolved)."""
        return resolved_optimizer_impl(self.loop, self.optimizer, self.target)

    def to_dict(self) -> dict:
        """Plain data (JSON-ready), the loop with its resolved optimizer implementation."""
        out = {f: getattr(self, f) for f in ("method", "optimizer", "batch", "seq", "dtype",
                                             "mixed_precision", "keep", "attention", "target",
                                             "experts", "routing")}
        out["loop"] = {**self.loop.__dict__, "optimizer_impl": self.optimizer_impl,
                       "impl_defaults": dict(self.loop.impl_defaults)}
        out["peft"] = {**self.peft.__dict__, "lora_targets": list(self.peft.lora_targets)}
        out["parallel"] = dict(self.parallel.__dict__)
        return out


def resolved_optimizer_impl(loop: Loop, optimizer: str, target: str) -> str:
    """The optimizer implementation the loop runs: its own setting; else what its code asks
    for this optimizer (impl_defaults); else torch's default (torch/optim/optimizer.py,
    _default_to_fused_or_foreach): foreach when every parameter is on CUDA, the per-tensor
    loop on the CPU (the CPU has no foreach kernels)."""
    if loop.optimizer_impl is not None:
        return loop.optimizer_impl
    asked = dict(loop.impl_defaults).get(optimizer)
    if asked is not None:
        return asked
    return "foreach" if target == "cuda" else "forloop"


def validate_scenario(s: Scenario) -> None:
    _check_choice("method", s.method, METHODS)
    _check_choice("optimizer", s.optimizer, OPTIMIZERS)
    _check_choice("dtype", s.dtype, tuple(DTYPES))
    _check_choice("attention", s.attention, ATTENTIONS)
    _check_choice("target", s.target, TARGETS)
    _check_choice("experts", s.experts, EXPERTS)
    _check_choice("routing", s.routing, ROUTINGS)
    _check_int("batch", s.batch, MAX_BATCH)
    _check_int("seq", s.seq, MAX_SEQ)
    if isinstance(s.keep, bool) or not isinstance(s.keep, (int, float)) or not 0.0 <= s.keep <= 1.0:
        raise ValueError(f"keep: the checkpoint ratio L'/L must be in [0, 1], got {s.keep!r}")
    if s.mixed_precision and s.dtype == "fp32":
        raise ValueError("mixed_precision: needs a 16-bit dtype (bf16 or fp16), got fp32")
    for name, value, kind in (("loop", s.loop, Loop), ("peft", s.peft, Peft), ("parallel", s.parallel, Parallel)):
        if not isinstance(value, kind):
            raise ValueError(f"{name}: expected a {kind.__name__}, got {type(value).__name__}")


@dataclass(frozen=True)
class Estimate:
    """The memory of one step.

    peak_bytes: bytes held by live tensors at the step's peak (what
    torch.cuda.max_memory_allocated reports for a step after the first).
    breakdown: the terms live at that peak; they add up to peak_bytes.
    phase: the phase of the step where the peak falls.
    phases: the peak of every phase (the step's peak is their maximum).
    textbook: the classic form, weights + gradients + optimizer states + Korthikanti
    activations, kept beside the detailed model as the explanation.
    Over several devices (Scenario.parallel) every figure is one device's (capacity/
    sharding.py); host_bytes is what optimizer offload keeps in host memory at its highest,
    host_breakdown its terms (0 and empty without offload).
    params: the parameter count, with what a PEFT method adds (adapters, a prefix);
    active_params: those one token's forward uses (a mixture of experts' router and top_k
    experts per layer; params for a dense model).
    moe_note: for a mixture of experts, which experts implementation and routing the figure
    is for ("" for a dense model).
    trainable_params: the parameters the step trains (BP or MeZO; 0 for inference).
    """

    peak_bytes: int
    breakdown: dict = field(default_factory=dict)
    phase: str = ""
    phases: dict = field(default_factory=dict)
    textbook: dict = field(default_factory=dict)
    params: int = 0
    host_bytes: int = 0
    host_breakdown: dict = field(default_factory=dict)
    active_params: int = 0
    moe_note: str = ""
    trainable_params: int = 0
