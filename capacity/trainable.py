"""What is trained, and how every parameter tensor is stored: the one home of the trainable
set (issue 10).

`Scenario.peft` names a method; this module turns it into facts the shared memory model
reads, so that memory.py and activations.py never ask which method it is:

  parameter_classes(s, sc)   every class of parameter tensors of the model and of the
                             adapters: elements, tensors, stored bytes, trained or frozen
  layer_grads(s, sc, i)      which tensors of decoder layer i need a gradient (LayerGrads):
                             what autograd saves for backward follows from that alone
  layer_gradient_bytes(...)  the gradients one layer's trained parameters get

The methods, as peft 0.21.2 and transformers 5.23 run them:

  none    every parameter trained, in the model's dtype (fp32 under mixed precision).
  lora    peft.get_peft_model(model, LoraConfig(...)) (peft/tuners/lora): every base
          parameter frozen; each adapted linear of n_in -> n_out gets A (r x n_in) and
          B (n_out x r). Adapted: the linears whose module name is in target_modules
          (peft matches the last component of the module name, so GPT-2's "c_proj" names
          both its attention and its MLP output projections), "all-linear" every linear but
          the output head (tuners_utils._maybe_include_all_linear_layers), or when none are
          given peft's default for the model type (the family's `lora_targets`,
          peft/utils/constants.py TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING).
          get_peft_model(autocast_adapter_dtype=True) casts 16-bit adapters to fp32
          (tuners_utils.cast_adapter_dtype): adapters, their gradients and states are fp32.
  prefix  PrefixTuningConfig(num_virtual_tokens=P): one fp32 table of P x 2·L·K
          (PrefixEncoder.embedding, no projection), K = a_kv·d the key/value width
          (peft/utils/other.py _prepare_prompt_learning_config); every base parameter frozen.
  freeze  only the top `trainable_layers` decoder layers trained (embeddings, final norm
          and head frozen). An alternative reading of the paper's L'/L ("of L layers, L'
          are fine-tuned"), not its definition (the paper's L'/L is the checkpointing ratio,
          Scenario.keep).

Which layer inputs need a gradient (LayerGrads.input): a layer's input requires grad when
anything below it is trained (the embedding in full fine-tuning, an adapter or a prefix in a
lower layer, a trained lower layer). With any layer checkpointed, transformers makes the
input embedding's output require grad (modeling_utils.activation_checkpointing_enable calls
enable_input_require_grads), so then every layer's input does, even below the first trained
parameter.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .architecture import LayerKind
from .params import (Linear, embedding_params, head_params, layer_linears, layer_params, qk_norm_params,
                     parameter_count, parameter_tensor_count)
from .quantization import quantized_weight_bytes
from .scenario import Peft, Scenario
from .shape import ModelShape

FP32 = 4
# peft keeps LoRA adapters and the prefix table in fp32 under a 16-bit base
# (get_peft_model(..., autocast_adapter_dtype=True)), and in fp32 under an fp32 one.
ADAPTER_BYTES = FP32


def adapter_bytes(sc: Scenario) -> int:
    """Bytes per value of LoRA's adapters (and a prefix table), as stored and as they
    compute: fp32 (ADAPTER_BYTES, peft's default) or the model's dtype (Peft.adapter_dtype
    "model": get_peft_model(..., autocast_adapter_dtype=False))."""
    return ADAPTER_BYTES if sc.peft.adapter_dtype == "fp32" else sc.bytes_per_value
ALL_LINEAR = "all-linear"


# ------------------------------------------------------------------ per layer: what needs a gradient

@dataclass(frozen=True)
class LayerGrads:
    """Which tensors of one decoder layer need a gradient in backward.

    input: the layer's input requires grad (something below it is trained, or layers are
      checkpointed: see the module docstring).
    weights: the layer's own parameters (norms, linears, biases) are trained.
    lora: the module names of its linears that carry a LoRA adapter.
    prefix: its attention's keys and values carry a trainable prefix (prefix tuning).
    """

    input: bool = True
    weights: bool = True
    lora: frozenset = field(default_factory=frozenset)
    prefix: bool = False

    def output_grad(self, name: str, input_grad: bool) -> bool:
        """Whether the output of the linear `name` requires grad, given its input's."""
        return input_grad or self.weights or name in self.lora

    @property
    def trains_anything(self) -> bool:
        return self.weights or bool(self.lora) or self.prefix


FULL = LayerGrads()      # full fine-tuning: every tensor needs a gradient


def layer_grads(s: ModelShape, sc: Scenario, i: int) -> LayerGrads:
    """What needs a gradient in decoder layer i (0 is next to the embedding)."""
    pf = sc.peft
    L = s.num_layers
    checkpointed = round(sc.keep * L) < L
    lora = lora_target_names(s, pf) if pf.method == "lora" else frozenset()
    if pf.method == "none":
        return FULL
    if pf.method == "freeze":
        first_trained = L - pf.trainable_layers
        return LayerGrads(input=checkpointed or i > first_trained, weights=i >= first_trained)
    # LoRA and prefix train something in every layer: only layer 0's input can go without.
    return LayerGrads(input=checkpointed or i > 0, weights=False, lora=lora, prefix=pf.method == "prefix")


def grad_runs(s: ModelShape, sc: Scenario) -> list[tuple[int, int, LayerGrads]]:
    """The layers as runs (first, last + 1, LayerGrads) of equal LayerGrads, bottom up: at
    most three (layer 0; the frozen layers; the first trained one; the rest)."""
    L = s.num_layers
    cuts = sorted({0, 1, L} | ({L - sc.peft.trainable_layers, L - sc.peft.trainable_layers + 1}
                               if sc.peft.method == "freeze" else set()))
    cuts = [c for c in cuts if 0 <= c <= L]
    runs: list[tuple[int, int, LayerGrads]] = []
    for first, last in zip(cuts, cuts[1:]):
        g = layer_grads(s, sc, first)
        if runs and runs[-1][2] == g:
            runs[-1] = (runs[-1][0], last, g)
        else:
            runs.append((first, last, g))
    return runs


def below_layers_grad(s: ModelShape, sc: Scenario) -> bool:
    """Whether the embedding's output requires grad (the embedding is trained, or layers are
    checkpointed and enable_input_require_grads makes it)."""
    return sc.peft.method == "none" or round(sc.keep * s.num_layers) < s.num_layers


# ------------------------------------------------------------------ LoRA targets

def lora_target_names(s: ModelShape, pf: Peft) -> frozenset:
    """The module names of a decoder layer's linears that get a LoRA adapter. ValueError when
    peft would refuse (no default targets for the model type, a name that matches no
    linear)."""
    from .families import family
    names = [lin.name for kind in s.layer_counts() for lin in layer_linears(s, kind)]
    targets = pf.lora_targets
    if targets == (ALL_LINEAR,):
        if s.embed_dim != s.hidden_size:
            raise ValueError("lora_targets: all-linear also adapts OPT's project_in and project_out, "
                             "which is not modelled; name the layers' linears instead")
        return frozenset(names)
    if ALL_LINEAR in targets:
        raise ValueError("lora_targets: all-linear cannot be combined with module names")
    if not targets:
        default = family(s.model_type).lora_targets
        if default is None:
            raise ValueError(f"lora_targets: peft has no default target modules for model type "
                             f"{s.model_type!r}; name them (e.g. --lora-targets "
                             f"{','.join(dict.fromkeys(names))} or all-linear)")
        targets = default
    unknown = [t for t in targets if t not in names]
    if unknown:
        raise ValueError(f"lora_targets: {', '.join(unknown)} is not a linear of a {s.model_type} decoder "
                         f"layer (its linears: {', '.join(dict.fromkeys(names))}, or all-linear)")
    return frozenset(targets)


def lora_linears(s: ModelShape, pf: Peft, kind: LayerKind | None = None) -> list[Linear]:
    """The adapted linears of one decoder layer of `kind`, in forward order."""
    if pf.method != "lora":
        return []
    names = lora_target_names(s, pf)
    return [lin for lin in layer_linears(s, kind) if lin.name in names]


def lora_params(lin: Linear, rank: int) -> int:
    """A (r x n_in) and B (n_out x r); peft's bias="none" adds no bias."""
    return rank * (lin.fan_in + lin.fan_out)


def lora_tensors(s: ModelShape, pf: Peft, kind: LayerKind | None = None) -> list[tuple[int, int]]:
    """The adapter tensors of one decoder layer as (rows, elements per row), in registration
    order: each adapted linear's lora_A.weight (r, n_in) then lora_B.weight (n_out, r)
    (peft/tuners/lora/layer.py: nn.Linear(n_in, r) and nn.Linear(r, n_out), whatever the
    base layer's own layout)."""
    r = pf.lora_rank
    return [t for lin in lora_linears(s, pf, kind) for t in ((r, lin.fan_in), (lin.fan_out, r))]


def classed_parameter_tensors(s: ModelShape, sc: Scenario, kind: LayerKind | None = None) -> dict:
    """params.parameter_tensors with each tensor's class, (rows, elements per row, trained),
    and the tensors a method adds where they are registered: LoRA's adapters in the decoder
    layer that holds their linear. What FSDP shards, unit by unit. Full fine-tuning trains
    every tensor; LoRA none of the base model's."""
    from .params import parameter_tensors
    base_trained = sc.peft.method == "none"
    out = {group: [(rows, row, base_trained) for rows, row in tensors]
           for group, tensors in parameter_tensors(s, kind).items()}
    if sc.peft.method == "lora":
        out["layer"] += [(rows, row, True) for rows, row in lora_tensors(s, sc.peft, kind)]
    # prefix tuning's table (PrefixEncoder.embedding: P x 2·L·K) belongs to the peft model
    # itself, outside the causal LM: FSDP's root unit
    out["prefix"] = [(sc.peft.prefix_tokens, 2 * s.num_layers * s.kv_dim, True)] if sc.peft.method == "prefix" else []
    return out


def prefix_params(s: ModelShape, pf: Peft) -> int:
    """PrefixEncoder.embedding: P x (2·L·K)."""
    return pf.prefix_tokens * 2 * s.num_layers * s.kv_dim


# ------------------------------------------------------------------ every parameter tensor

@dataclass(frozen=True)
class ParamClass:
    """A class of parameter tensors: how many values and tensors, how many bytes they are
    stored in, whether they are trained, and the bytes per value of their gradients and
    optimizer states when they are."""

    name: str
    elements: int
    tensors: int
    stored_bytes: int
    trainable: bool
    value_bytes: int


def _state_bytes(sc: Scenario) -> int:
    """Bytes per value of trained base parameters: the dtype, fp32 under mixed precision."""
    return FP32 if sc.mixed_precision else sc.bytes_per_value


def _quantized_linears(s: ModelShape, kind: LayerKind) -> list[Linear]:
    """The linears transformers replaces by bitsandbytes ones in a layer of `kind`."""
    return layer_linears(s, kind)


def _outside_linears(s: ModelShape) -> list[Linear]:
    """Linears outside the decoder layers that are quantized too: OPT-350m's project_in and
    project_out (nn.Linear without bias); the head never is."""
    if s.embed_dim == s.hidden_size:
        return []
    return [Linear("project_in", s.embed_dim, s.hidden_size, False),
            Linear("project_out", s.hidden_size, s.embed_dim, False)]


def base_weight_bytes(s: ModelShape, sc: Scenario) -> int:
    """The base model's parameters as stored: P·p (fp32 under mixed precision), or with a
    quantized base every linear of the decoder (and OPT's projections) in bitsandbytes'
    format and the rest (embeddings, norms, biases, head) in the dtype."""
    pf = sc.peft
    if pf.weights_bits == 16:
        return parameter_count(s) * _state_bytes(sc)
    # (linear, how many of it): each layer kind's linears once, times the layers of that kind
    # (each tensor is quantized on its own, so the count multiplies; closed form in L).
    quantized = [(lin, n) for kind, n in s.layer_counts().items() for lin in _quantized_linears(s, kind)]
    quantized += [(lin, 1) for lin in _outside_linears(s)]
    q_elements = sum(n * lin.fan_in * lin.fan_out for lin, n in quantized)
    q_bytes = sum(n * quantized_weight_bytes(lin, pf.weights_bits, pf.double_quant) for lin, n in quantized)
    return (parameter_count(s) - q_elements) * sc.bytes_per_value + q_bytes


# The last (shape, scenario) asked about and its classes: an estimate asks many times.
_last: tuple = (None, None, [])


def parameter_classes(s: ModelShape, sc: Scenario) -> list[ParamClass]:
    """Every class of parameter tensors: the base model ("model" in full fine-tuning, or
    the frozen base and what is trained)."""
    global _last
    last = _last
    if last[0] is s and last[1] is sc:
        return last[2]
    classes = _parameter_classes(s, sc)
    _last = (s, sc, classes)
    return classes


def _parameter_classes(s: ModelShape, sc: Scenario) -> list[ParamClass]:
    pf = sc.peft
    vb = _state_bytes(sc)
    out: list[ParamClass] = []
    if pf.method == "none":
        out.append(ParamClass("model", parameter_count(s), parameter_tensor_count(s),
                              base_weight_bytes(s, sc), True, vb))
        return out
    if pf.method == "freeze":
        k = pf.trainable_layers
        trained, tensors = _trained_top_params(s, k), _trained_top_tensors(s, k)
        out.append(ParamClass("frozen base", parameter_count(s) - trained, parameter_tensor_count(s) - tensors,
                              (parameter_count(s) - trained) * vb, False, vb))
        out.append(ParamClass(f"top {k} layers", trained, tensors, trained * vb, True, vb))
        return out
    out.append(ParamClass("frozen base", parameter_count(s), parameter_tensor_count(s),
                          base_weight_bytes(s, sc), False, sc.bytes_per_value))
    if pf.method == "lora":
        per_kind = {kind: sum(lora_params(lin, pf.lora_rank) for lin in lora_linears(s, pf, kind))
                    for kind in s.layer_counts()}
        n = sum(count * per_kind[kind] for kind, count in s.layer_counts().items())
        tensors = sum(count * 2 * len(lora_linears(s, pf, kind)) for kind, count in s.layer_counts().items())
        a = adapter_bytes(sc)
        out.append(ParamClass("lora adapters", n, tensors, n * a, True, a))
    else:
        n = prefix_params(s, pf)
        out.append(ParamClass("prefix", n, 1, n * ADAPTER_BYTES, True, ADAPTER_BYTES))
    return out


def _layer_tensors(s: ModelShape, kind: LayerKind) -> int:
    norm = 2 if s.arch.norm.bias else 1
    qk_norms = 2 if s.arch.attention.qk_norm else 0
    return sum(lin.tensors for lin in layer_linears(s, kind)) + s.arch.norms_per_layer * norm + qk_norms


def _trained_top_params(s: ModelShape, k: int) -> int:
    """Parameters of the top k layers, in closed form over the pattern of kinds."""
    L = s.num_layers
    return sum(s.layers_of_kind(kind, L - k, L) * layer_params(s, kind) for kind in s.layer_counts())


def _trained_top_tensors(s: ModelShape, k: int) -> int:
    L = s.num_layers
    return sum(s.layers_of_kind(kind, L - k, L) * _layer_tensors(s, kind) for kind in s.layer_counts())


# Where a PEFT method runs with mixed precision in the model: LoRA under FSDP, whose mixed
# precision computes the step in 16 bits without autocast (sharding._compute_scenario);
# one device runs autocast over the fp32 model (autocast_peft); DDP/ZeRO-1 are refused.
MIXED_PEFT_SHARDINGS = ("zero2", "fsdp")


def autocast_peft(sc: Scenario) -> bool:
    """A PEFT method under autocast over an fp32 model: mixed precision on one device (DDP and
    ZeRO-1 run autocast too, refused for now: check_peft; under fsdp/zero2 the mixed
    precision is FSDP's, without autocast)."""
    return sc.mixed_precision and sc.peft.method != "none" and sc.parallel.sharding not in MIXED_PEFT_SHARDINGS


def check_peft(s: ModelShape, sc: Scenario) -> None:
    """ValueError for a PEFT setting this model cannot run (peft, bitsandbytes or
    transformers would refuse it), before anything is priced."""
    pf = sc.peft
    if pf.method == "none" and pf.weights_bits == 16:
        return
    if s.moe is not None:
        raise ValueError("peft: parameter-efficient or quantized fine-tuning of a mixture of experts "
                         "is not modelled yet")
    if s.arch.norm_placement in ("branch_out", "sandwich"):
        raise ValueError("peft: parameter-efficient or quantized fine-tuning of a model with norms on its "
                         "branch outputs (OLMo 2, Gemma 2 and 3) is not modelled yet")
    check_peft_sharded(sc)
    if sc.mixed_precision and pf.method == "prefix" and sc.parallel.sharding in MIXED_PEFT_SHARDINGS:
        # Traced: tests/test_sharding_peft.py::test_prefix_tuning_under_fsdp_mixed_precision_does_not_run.
        raise ValueError("prefix tuning with mixed precision under FSDP (fsdp, zero2) does not run: peft casts "
                         "the prefix keys and values to the stored fp32 (peft_model.py, get_prompt), FSDP computes "
                         "the keys in 16 bits, and attention refuses the mix")
    if sc.mixed_precision and pf.weights_bits != 16:
        raise ValueError("peft: mixed precision (fp32 weights under autocast) over a quantized base is not "
                         "modelled; use a 16-bit dtype without --mixed-precision")
    if sc.mixed_precision and sc.parallel.sharding in MIXED_PEFT_SHARDINGS and pf.method != "lora":
        raise ValueError("peft: mixed precision under fsdp/zero2 is modelled for LoRA (and full fine-tuning)")
    if autocast_peft(sc) and pf.method == "prefix" and not s.arch.attention.softmax_fp32:
        raise ValueError("peft: prefix tuning under autocast (mixed precision over an fp32 model) is not modelled "
                         f"for {s.model_type}: its attention casts the probabilities to the values' dtype, which "
                         "the fp32 prefix makes fp32; use a 16-bit model without --mixed-precision")
    if autocast_peft(sc) and sc.parallel.sharding != "none":
        raise ValueError("peft: a PEFT method under autocast (mixed precision over an fp32 model) is modelled on one "
                         "device; under ddp and zero1 a LoRA trace was 0.8% above the prediction (not found yet). "
                         "LoRA with mixed precision under fsdp or zero2 is modelled")
    if autocast_peft(sc) and sc.keep < 1:
        raise ValueError("peft: activation checkpointing (--keep below 1) with a PEFT method under autocast "
                         "(mixed precision over an fp32 model) is not modelled yet: traces of small models were "
                         "0.2% to 1.1% above the prediction (docs/peft.md); use --keep 1, or a 16-bit model "
                         "without --mixed-precision")
    if autocast_peft(sc) and pf.method == "lora" and pf.lora_dropout > 0:
        raise ValueError("peft: LoRA dropout under autocast (mixed precision over an fp32 model) is not "
                         "modelled; use --lora-dropout 0 (peft's default)")
    if pf.weights_bits != 16 and pf.method not in ("lora", "prefix"):
        raise ValueError(f"weights_bits {pf.weights_bits}: quantized base weights are frozen; train them with "
                         "--peft lora (QLoRA) or --peft prefix")
    if pf.weights_bits != 16 and sc.dtype == "fp32":
        raise ValueError(f"weights_bits {pf.weights_bits}: a quantized base computes in a 16-bit dtype here "
                         "(bf16 or fp16)")
    if pf.method == "freeze" and pf.trainable_layers > s.num_layers:
        raise ValueError(f"trainable_layers: the model has {s.num_layers} decoder layers, got {pf.trainable_layers}")
    if pf.method == "lora":
        lora_target_names(s, pf)
    if pf.method == "prefix" and sc.method == "bp" and round(sc.keep * s.num_layers) < s.num_layers:
        raise ValueError("prefix tuning with checkpointing (keep below 1) does not run: transformers drops "
                         "the prefix key/values in checkpointed layers (modeling_layers.py)")


# What is modelled over several devices (capacity/sharding.py): LoRA and prefix tuning over a
# 16-bit base, their adapters or table the only parameters with gradients, reduce-scatters
# and optimizer states.
SHARDED_PEFT_METHODS = ("none", "lora", "prefix")


def check_peft_sharded(sc: Scenario) -> None:
    """ValueError, naming the setting, for a PEFT setting over several devices (--devices,
    --sharding, --offload-optimizer) that is not modelled: quantized bases (bitsandbytes'
    packed weights, which accelerate leaves out of FSDP2's sharding, and which the trace
    cannot build on fake tensors) and top layers (units wholly trained or wholly frozen,
    different from layer to layer: not modelled or traced over several devices yet)."""
    pl, pf = sc.parallel, sc.peft
    if pl.devices == 1 and pl.sharding == "none" and not pl.offload_optimizer:
        return
    if pf.weights_bits != 16:
        raise ValueError(f"weights_bits {pf.weights_bits}: a quantized base (QLoRA, 8-bit) over several devices "
                         "(--devices, --sharding, --offload-optimizer) is not modelled; LoRA or prefix tuning over "
                         "a 16-bit base is")
    if pf.method not in SHARDED_PEFT_METHODS:
        raise ValueError(f"peft {pf.method}: training the top layers over several devices (--devices, --sharding, "
                         "--offload-optimizer) is not modelled yet; LoRA and prefix tuning are")


# ------------------------------------------------------------------ totals the memory model reads

def trainable_params(s: ModelShape, sc: Scenario) -> int:
    return sum(c.elements for c in parameter_classes(s, sc) if c.trainable)


def trainable_tensor_count(s: ModelShape, sc: Scenario) -> int:
    return sum(c.tensors for c in parameter_classes(s, sc) if c.trainable)


def all_params(s: ModelShape, sc: Scenario) -> int:
    """The base model's parameters and what the method adds (adapters, prefix)."""
    return sum(c.elements for c in parameter_classes(s, sc))


def frozen_weight_bytes(s: ModelShape, sc: Scenario) -> int:
    return sum(c.stored_bytes for c in parameter_classes(s, sc) if not c.trainable)


def trainable_weight_bytes(s: ModelShape, sc: Scenario) -> int:
    return sum(c.stored_bytes for c in parameter_classes(s, sc) if c.trainable)


def trainable_value_bytes(s: ModelShape, sc: Scenario) -> int:
    """Bytes of one value of every trained parameter, gradient and optimizer state, summed:
    Σ elements·bytes per value (the gradients' total)."""
    return sum(c.elements * c.value_bytes for c in parameter_classes(s, sc) if c.trainable)


def largest_trainable_tensor(s: ModelShape, sc: Scenario) -> tuple[int, int]:
    """(elements, bytes per value) of the largest trained parameter tensor."""
    from .params import largest_tensor_params
    pf = sc.peft
    if pf.method == "none":
        return largest_tensor_params(s), _state_bytes(sc)
    if pf.method == "freeze":
        top = range(max(0, s.num_layers - min(pf.trainable_layers, len(s.layers))), s.num_layers)
        kinds = {s.layer_kind(i) for i in top}
        return max(lin.fan_in * lin.fan_out for kind in kinds for lin in layer_linears(s, kind)), _state_bytes(sc)
    if pf.method == "lora":
        return max(pf.lora_rank * max(lin.fan_in, lin.fan_out) for kind in s.layer_counts()
                   for lin in lora_linears(s, pf, kind)), adapter_bytes(sc)
    return prefix_params(s, pf), ADAPTER_BYTES


def layer_gradient_bytes(s: ModelShape, sc: Scenario, kind: LayerKind, g: LayerGrads, mlp_only: bool = False) -> int:
    """The gradients of one decoder layer's trained parameters (of its MLP only with
    mlp_only): its weights in their state dtype, its LoRA adapters in fp32. A prefix's
    gradient belongs to the one prefix table, complete only after the whole backward."""
    from .params import mlp_linears, mlp_params
    total = 0
    if g.weights:
        total += _state_bytes(sc) * (mlp_params(s, kind) if mlp_only else layer_params(s, kind))
    linears = mlp_linears(s, kind) if mlp_only else layer_linears(s, kind)
    total += sum(adapter_bytes(sc) * lora_params(lin, sc.peft.lora_rank) for lin in linears if lin.name in g.lora)
    return total


def linear_gradient_bytes(s: ModelShape, sc: Scenario, lin: Linear, g: LayerGrads) -> int:
    """The gradients one linear's trained parameters get: its weight and bias in their state
    dtype when the layer's weights are trained, its LoRA adapter's in fp32."""
    total = _state_bytes(sc) * lin.params if g.weights else 0
    if lin.name in g.lora:
        total += adapter_bytes(sc) * lora_params(lin, sc.peft.lora_rank)
    return total


def embedding_trained(sc: Scenario) -> bool:
    return sc.peft.method == "none"


def head_trained(sc: Scenario) -> bool:
    return sc.peft.method == "none"


def head_gradient_params(s: ModelShape, sc: Scenario) -> int:
    return head_params(s) if head_trained(sc) else 0


def embedding_gradient_params(s: ModelShape, sc: Scenario) -> int:
    return embedding_params(s) if embedding_trained(sc) else 0


# ------------------------------------------------------------------ what the optimizer step sees

def trains_part(sc: Scenario) -> bool:
    """Whether the method trains a part of the model (a PEFT method), not all of it."""
    return sc.peft.method != "none"


def trained_value_bytes(sc: Scenario) -> int:
    """Bytes per value of the trained parameters (and their gradients and states) under a
    PEFT method: fp32 adapters and prefix; the top layers in their state dtype."""
    return _state_bytes(sc) if sc.peft.method == "freeze" else adapter_bytes(sc)


def no_decay_trained_params(s: ModelShape, sc: Scenario) -> int:
    """Trained parameters transformers.Trainer exempts from weight decay (norms, biases):
    the top layers' under `freeze`; none of LoRA's or a prefix's (their names hold neither
    `bias` nor a norm)."""
    if sc.peft.method != "freeze":
        return 0
    L, k = s.num_layers, sc.peft.trainable_layers
    per_kind = {kind: sum(lin.fan_out for lin in layer_linears(s, kind) if lin.bias)
                + s.arch.norms_per_layer * s.hidden_size * (2 if s.arch.norm.bias else 1) + qk_norm_params(s)
                for kind in s.layer_counts()}
    return sum(s.layers_of_kind(kind, L - k, L) * per_kind[kind] for kind in s.layer_counts())


def largest_group_params(s: ModelShape, sc: Scenario) -> int:
    """Trained parameters of the optimizer's largest parameter group (a foreach step works
    on one group at a time): all of them, or with decay and no-decay groups the larger."""
    total = trainable_params(s, sc)
    if not sc.loop.split_decay_groups:
        return total
    nd = no_decay_trained_params(s, sc)
    return max(total - nd, nd)


def forloop_pair_params(s: ModelShape, sc: Scenario) -> int:
    """max over consecutive trained tensors of 2·t_i + t_(i−1), in registration order (the
    per-tensor Adam step's temporaries: optimizers.forloop_adam_temp_params). LoRA registers
    each adapted linear's A then B (peft's lora_A, lora_B ModuleDicts), layer after layer; a
    prefix is one table; top layers pair their projections as full fine-tuning does."""
    pf = sc.peft
    if pf.method == "prefix":
        return 2 * prefix_params(s, pf)
    pairs = [0]
    for kind in s.layer_counts():
        if pf.method == "lora":
            seq = [t for lin in lora_linears(s, pf, kind)
                   for t in (pf.lora_rank * lin.fan_in, pf.lora_rank * lin.fan_out)]
            seq = seq + seq[:1]                      # the next layer's first A after this layer's last B
            pairs += [2 * t + prev for prev, t in zip(seq, seq[1:])]
        else:
            linears = layer_linears(s, kind)
            split = sc.loop.split_decay_groups
            for before, lin in zip(linears, linears[1:]):
                previous = before.fan_out if before.bias and not split else before.fan_in * before.fan_out
                pairs.append(2 * lin.fan_in * lin.fan_out + previous)
    return max(pairs)
