"""Peak memory of one step, as the maximum over the step's phases.

The step is the one after the first (optimizer states exist; gradients were freed by
`zero_grad(set_to_none=True)`), as `torch.cuda.max_memory_allocated` sees it after a
reset. Each phase sums the tensors live at its highest point:

BP      forward end   weights + optimizer states + saved activations + logits + loss
        backward      ... the loss gradient (3 fp32 tensors the size of the logits)
        layer i       gradients of the layers above, activations of the layers below,
                      layer i's own activations (recomputed if checkpointed) and the
                      gradients flowing through it
        backward end  weights + optimizer states + all gradients
        optimizer     weights + gradients + states + the optimizer's temporaries
MeZO /  forward       weights + the largest set of tensors live at once in one forward
inference             (nothing is kept across layers) + logits + loss

On a CUDA device every phase also holds cuBLAS's workspaces (capacity.cuda_runtime), in
the temporaries.

The breakdown of the winning phase is returned; its terms add up to the peak.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from itertools import accumulate

from . import activations as act
from . import cuda_runtime
from . import moe
from .architecture import LayerKind
from .context import check_context
from . import optimizers as optim
from . import quantization, trainable
from .params import (active_parameter_count, attention_linears, largest_tensor_params,
                     layer_params, linear_params, mlp_linears, parameter_count)
from .scenario import Estimate, Scenario
from .shape import ModelShape, repeating_pattern

FP32 = 4

# Breakdown terms, in display order.
TERMS = ("weights", "master_weights", "trainable_weights", "gradients", "optimizer_states",
         "activations", "logits_and_loss", "temporaries")

# MeZO regenerates z in chunks (capacity.validation.mezo), so its only temporary is one
# chunk, not a copy of the largest weight: at most 2**20 values and at most 1/1024 of the
# parameters, but not below 2**10 values.
MEZO_CHUNK_MAX = 2**20
MEZO_CHUNK_MIN = 2**10
MEZO_CHUNK_SHARE = 1024


def mezo_chunk_elements(s: ModelShape) -> int:
    """Elements of z drawn at once (the engine's default_chunk_elements)."""
    p = parameter_count(s)
    return min(largest_tensor_params(s), max(MEZO_CHUNK_MIN, min(MEZO_CHUNK_MAX, p // MEZO_CHUNK_SHARE)))

# The CUDA context plus the libraries and kernels PyTorch loads (cuBLAS, cuDNN), outside
# max_memory_allocated and the allocator's pool; nvidia-smi includes it. Measured on an H100
# (torch 2.11+cu130, driver 580; docs/gpu_table.md): device used (total − free) less
# max_memory_reserved over 90 training and MeZO runs, 1,210 to 1,356 MiB, median 1,296 MiB,
# which is kept. It varies with the GPU, driver and libraries loaded (older reports put
# the bare context at 300 to 600 MiB).
CUDA_CONTEXT_BYTES = 1296 * 2**20


# ---------------------------------------------------------------- model state terms
#
# What is trained and how each parameter is stored comes from one place, trainable.py:
# full fine-tuning trains every parameter in its dtype; a PEFT method trains a part (LoRA
# adapters, a prefix, the top layers) over a frozen base that may be quantized.

def _state_bytes_per_value(sc: Scenario) -> int:
    """Bytes per value of parameters, gradients and optimizer states: the dtype, or fp32
    under mixed precision (the master copy)."""
    return FP32 if sc.mixed_precision else sc.bytes_per_value


def weights_bytes(s: ModelShape, sc: Scenario) -> int:
    """The base model's weights as stored, less what trainable_weights_bytes counts apart:
    P·p in full fine-tuning (fp32 under mixed precision: those are the master weights, see
    master_weights_bytes); the frozen base under a PEFT method (quantized linears in
    bitsandbytes' format with weights_bits 8 or 4)."""
    if sc.peft.method == "none":
        return trainable.base_weight_bytes(s, sc)
    return trainable.frozen_weight_bytes(s, sc)


def trainable_weights_bytes(s: ModelShape, sc: Scenario) -> int:
    """Under a PEFT method, the weights it trains: LoRA's adapters and the prefix table (new
    parameters, fp32), or the top layers (in the dtype). 0 in full fine-tuning, where
    `weights` are all trained."""
    return 0 if sc.peft.method == "none" else trainable.trainable_weight_bytes(s, sc)


def compute_copy_bytes(s: ModelShape, sc: Scenario) -> int:
    """Mixed precision: autocast's 16-bit copies of the projections' weights and biases
    (params.linear_params · 2: the token table of an untied model, the position table and
    the norms are not cast), cached for the forward and kept by the matmuls until their
    backward. A mixture of experts' stacked experts have none (grouped_mm is not
    autocast-enabled, and the eager loop's weight slices are not leaves, which autocast
    does not cache: capacity/moe.py); its router is a projection."""
    return linear_params(s) * sc.bytes_per_value if sc.mixed_precision else 0


def head_copy_bytes(s: ModelShape, sc: Scenario) -> int:
    """Mixed precision: autocast's 16-bit copies of the projections after the last layer
    (the LM head, OPT's project_out), freed by their backward before the layers'. Under a
    PEFT method the head is frozen: its weight's cast is not cached, but the matmul keeps
    it for the gradient of its input, which always needs one (something below trains);
    a frozen bias's cast is kept by nothing."""
    if not sc.mixed_precision:
        return 0
    frozen = trainable.autocast_peft(sc)
    after = s.vocab_size * s.embed_dim + (s.vocab_size if s.arch.lm_head_bias and not frozen else 0)
    if s.embed_dim != s.hidden_size:
        after += s.embed_dim * s.hidden_size
    return sc.bytes_per_value * after


def _layer_copy_parts(s: ModelShape, sc: Scenario, kind: LayerKind,
                      g: trainable.LayerGrads = trainable.FULL) -> dict[str, int]:
    """Mixed precision: autocast's 16-bit copies of one decoder layer's projections that
    the step keeps, by part (attention, its output projection, MLP, its down projection;
    a mixture of experts' experts have none). A trained weight's cast is cached (a leaf
    that requires grad) and kept, with its bias's. Under a PEFT method (autocast over an
    fp32 model) a frozen weight's cast is made anew at each use and kept only by a matmul
    whose input needs a gradient (`W^T · grad`); a frozen bias's by nothing. LoRA's A and
    B (fp32 leaves that require grad) are cached casts, B's kept, A's when x needs a
    gradient."""
    if not sc.mixed_precision:
        return {"attention": 0, "attn_out": 0, "mlp": 0, "mlp_out": 0}
    p = sc.bytes_per_value
    attn_lin, mlp_lin = attention_linears(s, kind), mlp_linears(s, kind)
    if not trainable.autocast_peft(sc):
        return {"attention": p * sum(lin.params for lin in attn_lin), "attn_out": p * attn_lin[-1].params,
                "mlp": p * sum(lin.params for lin in mlp_lin), "mlp_out": p * mlp_lin[-1].params}
    f = act.layer_flow(s, g)
    reads = {**{lin.name: f.norm1_out for lin in attn_lin[:-1]}, attn_lin[-1].name: f.attn_ctx,
             **{lin.name: f.norm2_out for lin in mlp_lin[:-1]}, mlp_lin[-1].name: f.product}

    def kept(lin) -> int:
        if g.weights:
            own = lin.params
        else:
            own = lin.fan_in * lin.fan_out if reads[lin.name] else 0
        # A's cast is kept by its matmul for the gradient of x, when x needs one; B's always
        # (A's output needs a gradient).
        r = sc.peft.lora_rank
        adapter = r * lin.fan_out + (r * lin.fan_in if reads[lin.name] else 0) if lin.name in g.lora else 0
        return p * (own + adapter)
    return {"attention": sum(kept(lin) for lin in attn_lin), "attn_out": kept(attn_lin[-1]),
            "mlp": sum(kept(lin) for lin in mlp_lin), "mlp_out": kept(mlp_lin[-1])}


def _copies_total(s: ModelShape, sc: Scenario, layers) -> int:
    """Mixed precision: every 16-bit copy kept at the end of the forward if no layer were
    checkpointed: the projections' (compute_copy_bytes) in full fine-tuning; under a PEFT
    method the layers' kept ones and the head's."""
    if not trainable.autocast_peft(sc):
        return compute_copy_bytes(s, sc)
    return layers.copies(0, s.num_layers) + head_copy_bytes(s, sc)


def gradients_bytes(s: ModelShape, sc: Scenario) -> int:
    """Gradients of the trained parameters, in their dtype: P·p in full fine-tuning (P·4
    under mixed precision), fp32 for LoRA adapters and a prefix."""
    return trainable.trainable_value_bytes(s, sc)


def optimizer_state_bytes(s: ModelShape, sc: Scenario) -> int:
    """SGD: none. Momentum: one buffer. Adam/AdamW: exp_avg and exp_avg_sq, each in the
    trained parameters' dtype, plus one fp32 `step` per trained parameter tensor, which
    PyTorch keeps on the CPU (counted for target='cpu' only) unless the step is fused."""
    if sc.method != "bp" or sc.optimizer == "sgd":
        return 0
    values = trainable.trainable_value_bytes(s, sc)
    if sc.optimizer == "momentum":
        return values
    steps = FP32 * trainable.trainable_tensor_count(s, sc) if optim.adam_steps_on_device(sc) else 0
    return 2 * values + steps


def optimizer_step_temp_bytes(s: ModelShape, sc: Scenario) -> int:
    """What the optimizer step allocates beyond its states, by implementation
    (capacity/optimizers.py), over the trained parameters: Adam forloop 2 × the largest
    tensor, foreach the largest parameter group, fused none; SGD and momentum none."""
    return optim.optimizer_step_temp_bytes(s, sc, _state_bytes_per_value(sc))



# ---------------------------------------------------------------- the loop's own terms

def input_bytes(s: ModelShape, sc: Scenario) -> int:
    """Token tensors of a step beyond the ids the embedding keeps (counted with the
    activations): the step's K micro-batches are all on the device for the whole step
    (Trainer.get_batch_samples prefetches them), each with its labels as a tensor of their
    own when the loop collates them so (Loop.separate_labels): 8·N·(K·(1 + labels) − 1)."""
    per_batch = 2 if sc.loop.separate_labels else 1
    return act.INT64 * sc.tokens * (sc.loop.grad_accum * per_batch - 1)


def kv_cache_bytes(s: ModelShape, sc: Scenario) -> int:
    """One layer's entry of transformers' KV cache (cache_utils.DynamicLayer.update:
    torch.cat copies of the rotated keys and the values): 2·p·b·keys·K, keys = s, or P + s
    after a prefix (activations.key_length)."""
    return 2 * _cache_bytes_per_value(sc) * sc.batch * act.key_length(s, sc) * s.kv_dim


def _cache_bytes_per_value(sc: Scenario) -> int:
    """The cache's dtype: the keys' and values', or fp32 under autocast after a prefix,
    whose fp32 table (the model's stored dtype) promotes torch.cat's result."""
    return FP32 if trainable.autocast_peft(sc) and sc.peft.method == "prefix" else sc.bytes_per_value


def cache_is_extra(s: ModelShape, sc: Scenario) -> bool:
    """Whether the cache's entries are tensors attention does not keep: repeat_kv copies
    them (act.kv_repeat_copies), or under autocast after a prefix attention keeps 16-bit
    casts of the fp32 entries."""
    return act.kv_repeat_copies(s, sc) or _cache_bytes_per_value(sc) != sc.bytes_per_value


def builds_kv_cache(s: ModelShape, sc: Scenario) -> bool:
    """Whether the step's forwards fill a KV cache: prefix tuning always (peft passes the
    prefix as past key/values, a DynamicCache: peft_model.py get_prompt); BP when the loop
    lets the config's use_cache stand (Loop.use_cache) and no layer is checkpointed
    (transformers turns the cache off once gradient checkpointing is on); MeZO's reference
    trainer, whose compute_loss passes only the batch."""
    if sc.peft.method == "prefix":
        return True
    if sc.method == "bp":
        return sc.loop.use_cache and kept_layers(s, sc) == s.num_layers
    return sc.method == "mezo" and sc.loop.mezo_impl == "reference"


def bp_kv_cache_bytes(s: ModelShape, sc: Scenario) -> int:
    """BP: what the KV cache adds to the saved activations, from each layer's forward until
    the output is released. The attention keeps the cached tensors themselves (the cache's
    copy replaces the rotated original) unless it repeats grouped key/value heads into a
    copy (repeat_kv: eager, or SDPA with an explicit mask), which leaves the cache's entries
    as extra: L·2·p·b·keys·K."""
    if not builds_kv_cache(s, sc):
        return 0
    return s.num_layers * kv_cache_bytes(s, sc) if cache_is_extra(s, sc) else 0


def cache_above_bytes(s: ModelShape, sc: Scenario) -> int:
    """One layer's share of the KV cache that backward cannot free with the layer: with the
    output held, the cache still references the k and v the attention kept (when they are
    the cache's own tensors), after that layer's backward has run."""
    if not builds_kv_cache(s, sc) or not output_holds_cache(s, sc) or cache_is_extra(s, sc):
        return 0
    return kv_cache_bytes(s, sc)


def output_holds_cache(s: ModelShape, sc: Scenario) -> bool:
    """Whether the step's held output references the KV cache through backward: the loop
    holds its output, and the model returns the cache (with use_cache on, or always for the
    families that return whatever cache they were given: Architecture.
    output_cache_needs_use_cache). peft's prefix is a cache given with use_cache as the loop
    sets it; once the output drops it, the cache's entries live only in what attention keeps."""
    return sc.loop.hold_outputs and (sc.loop.use_cache or not s.arch.output_cache_needs_use_cache)


def gradients_live_at_forward(sc: Scenario) -> bool:
    """Whether some micro-batch's forward and backward run with every gradient already
    allocated: the 2nd..Kth of gradient accumulation (gradients live from the first
    micro-batch's backward to the optimizer step), or all of them when zero_grad keeps
    zeroed gradients (set_to_none=False)."""
    return sc.loop.grad_accum > 1 or not sc.loop.zero_grad_to_none


def resolved_loop(s: ModelShape, sc: Scenario) -> dict:
    """Every loop setting as this step runs it (JSON-ready): the Loop's fields with the
    optimizer implementation resolved, and whether a KV cache is built."""
    return {**sc.to_dict()["loop"], "kv_cache": builds_kv_cache(s, sc)}


def describe_loop(s: ModelShape, sc: Scenario) -> str:
    """One line naming the loop and the settings that apply to this step's method."""
    lp = sc.loop
    if sc.method == "bp":
        parts = [f"{sc.optimizer} {sc.optimizer_impl}",
                 "outputs held through backward" if lp.hold_outputs else "outputs dropped before backward",
                 f"{lp.grad_accum} micro-batches per step" if lp.grad_accum > 1 else "one micro-batch per step"]
        if not lp.zero_grad_to_none:
            parts.append("zeroed gradients kept")
        if builds_kv_cache(s, sc):
            parts.append("KV cache built")
    elif sc.method == "mezo":
        parts = [f"MeZO {lp.mezo_impl}", f"{lp.mezo_n} perturbation{'s' if lp.mezo_n > 1 else ''} per step"]
        if builds_kv_cache(s, sc):
            parts.append("KV cache built")
    else:
        parts = ["forward only"]
    return f"{lp.name} ({', '.join(parts)})"


# ---------------------------------------------------------------- BP phases

def kept_layers(s: ModelShape, sc: Scenario) -> int:
    """L' = round(keep · L): the layers that keep their activations (the last ones; the
    first L - L' are checkpointed)."""
    return round(sc.keep * s.num_layers)


def _outside_saved(s: ModelShape, sc: Scenario) -> int:
    """What the embedding and the head keep for backward: the token ids, what a trained
    embedding and head keep, the final norm."""
    embed = act.embedding_saved_bytes(s, sc, output_grad=trainable.below_layers_grad(s, sc),
                                      trained=trainable.embedding_trained(sc))
    return embed + act.head_saved_bytes(s, sc, trained=trainable.head_trained(sc))


def final_hidden_transient_bytes(s: ModelShape, sc: Scenario) -> int:
    """The final norm's output, alive while the logits and the loss are computed (the
    model's `hidden_states`), under a PEFT method with autocast: the frozen head keeps only
    its 16-bit cast of the fp32 output. (Elsewhere the forward's end is priced as before.)"""
    return act.stream_bytes(sc) * sc.tokens * s.hidden_size if trainable.autocast_peft(sc) else 0


def _bp_phases(s: ModelShape, sc: Scenario) -> dict[str, dict[str, int]]:
    n, p = sc.tokens, sc.bytes_per_value
    L, keep = s.num_layers, kept_layers(s, sc)
    ckpt = L - keep
    gp = _state_bytes_per_value(sc)
    layers = _LayerSums(s, sc)

    state = {
        # Mixed precision: autocast's 16-bit weight copies that the matmuls keep at the end
        # of forward. A checkpointed layer's forward keeps nothing, so its copies are freed
        # at once; only the kept layers' and the rest of the model's remain.
        "weights": weights_bytes(s, sc) if not sc.mixed_precision
        else _copies_total(s, sc, layers) - layers.copies(0, ckpt),
        "master_weights": weights_bytes(s, sc) if sc.mixed_precision else 0,
        "trainable_weights": trainable_weights_bytes(s, sc),
        "optimizer_states": optimizer_state_bytes(s, sc),
    }
    # At the end of the forward every layer is below: every shared tensor a layer holds is live.
    shared = _SharedTensors(s, sc, ckpt).held(L)
    outside = _outside_saved(s, sc) + shared + leaf_embedding_output_bytes(s, sc)
    # Layers 0..ckpt-1 keep only their input, the rest everything.
    saved = layers.saved(ckpt, L) + layers.checkpointed(0, ckpt) + outside
    logits = act.logits_bytes(s, sc)
    nv32 = FP32 * n * s.vocab_size
    loss = act.loss_saved_bytes(s, sc)
    fp32_copy = nv32 if p != FP32 else 0

    # The loop: outputs held through backward (their logits, and the KV cache if one is
    # built), the step's token tensors, gradients live before a micro-batch's forward.
    lp = sc.loop
    held = logits if lp.hold_outputs else 0
    cache = bp_kv_cache_bytes(s, sc)
    cache_held = cache if output_holds_cache(s, sc) else 0
    inputs = input_bytes(s, sc)
    g_all = gradients_bytes(s, sc)
    # Gradient accumulation with outputs held: the previous micro-batch's output is still
    # referenced (`out`) until the next forward returns.
    previous_out = logits + cache_held if lp.hold_outputs and lp.grad_accum > 1 else 0

    phases: dict[str, dict[str, int]] = {}
    forward = {**state, "activations": saved + inputs + cache + final_hidden_transient_bytes(s, sc),
               "logits_and_loss": logits + loss + fp32_copy}
    # log_softmax backward: its saved output, the incoming gradient and its result.
    backward_loss = {**state, "activations": saved + inputs + cache_held,
                     "logits_and_loss": held + loss + 2 * nv32}
    first = lp.zero_grad_to_none     # the first micro-batch runs without gradients
    if first:
        phases["forward"] = forward
        phases["backward (loss)"] = backward_loss
    if gradients_live_at_forward(sc):
        phases["forward (gradients live)"] = {**forward, "gradients": g_all,
                                              "logits_and_loss": forward["logits_and_loss"] + previous_out}
        phases["backward (loss, gradients live)"] = {**backward_loss, "gradients": g_all}

    # Through the layers, top to bottom. Gradients of a trained head are complete first. A
    # tied embedding's AccumulateGrad waits for both of its gradients, so the LM head's share
    # (V·e) waits in autograd's input buffer through the whole backward.
    head_trained = trainable.head_trained(sc)
    new_head_gradient = gp * s.vocab_size * s.embed_dim if head_trained else 0
    tied_head = new_head_gradient if s.tie_embeddings else 0
    g_head = gp * trainable.head_gradient_params(s, sc) + tied_head
    extra = inputs + cache_held       # held through the whole backward
    if first:
        phases["backward (layers)"] = _backward_through_layers(s, sc, layers, state, g_head, held, extra)
    if gradients_live_at_forward(sc):
        # With every gradient live, the head's new weight gradient is a transient beside the
        # logits' gradient (in dtype) and the head input's; a tied head's then waits in
        # autograd's input buffer through the layers, beside the existing gradient.
        phases["backward (head, gradients live)"] = {
            **state, "gradients": g_all, "activations": saved + inputs + cache_held,
            "logits_and_loss": held + p * n * s.vocab_size,
            "temporaries": new_head_gradient + p * n * s.embed_dim}
        phases["backward (layers, gradients live)"] = _backward_through_layers(
            s, sc, layers, state, g_head, held, extra, live_gradients=g_all + tied_head)

    # At the embedding: the buffered head gradient, the embedding's dense gradient and their
    # sum (made out of place) are live at once; g_all counts one of the three.
    # With gradients live, the embedding's new gradient (and a tied head's buffered one and
    # their sum) are all transients, added in place into the gradient that exists
    # (AccumulateGrad: `variable_grad += new_grad`).
    tied_extra = 2 * tied_head
    if gradients_live_at_forward(sc) and s.tie_embeddings:
        tied_extra += new_head_gradient
    end_state = {**state, "weights": 0 if sc.mixed_precision else state["weights"]}
    # A frozen embedding under checkpointing: the leaf it makes and its gradient, referenced
    # by the graph while the loss (or the held output) is (input_leaf_bytes).
    leaf = input_leaf_bytes(s, sc)
    phases["backward end"] = {**end_state, "gradients": g_all, "activations": inputs + cache_held + leaf,
                              "logits_and_loss": held, "temporaries": tied_extra}
    # A held output (its logits, a cache, the graph) is still referenced until the step ends.
    phases["optimizer step"] = {**end_state, "gradients": g_all,
                                "activations": inputs + cache_held + (leaf if lp.hold_outputs else 0),
                                "logits_and_loss": held, "temporaries": optimizer_step_temp_bytes(s, sc)}
    return phases


def leaf_embedding_output_bytes(s: ModelShape, sc: Scenario) -> int:
    """Under checkpointing with a frozen embedding, the leaf embedding output (see
    input_leaf_bytes) stays referenced by the graph through forward and backward; it is
    extra when the first layer reads another tensor made from it (learned positions added,
    Gemma's scaling, OPT-350m's project_in, an embedding dropout)."""
    if trainable.embedding_trained(sc) or not trainable.below_layers_grad(s, sc):
        return 0
    arch = s.arch
    if arch.positions == "learned" or arch.embedding_scale or s.embed_dim != s.hidden_size or s.embd_dropout > 0:
        return sc.bytes_per_value * sc.tokens * s.embed_dim
    return 0


def input_leaf_bytes(s: ModelShape, sc: Scenario) -> int:
    """A frozen embedding under checkpointing: enable_input_require_grads makes its output a
    leaf that requires grad (`output.requires_grad_(True)`), so backward ends by
    accumulating a gradient into it (pNh), and the graph's AccumulateGrad node keeps the leaf
    (pNh) and that gradient for as long as the loss's graph is referenced (to the end of
    backward; with the output held, through the optimizer step)."""
    if trainable.embedding_trained(sc) or not trainable.below_layers_grad(s, sc):
        return 0
    return 2 * sc.bytes_per_value * sc.tokens * s.embed_dim


# ---------------------------------------------------------------- backward through the layers
#
# The backward pass through layer i (top to bottom) holds: the gradients of the head and
# of the layers above i, the activations of the layers below i, layer i's own activations
# (recomputed if it is checkpointed) and the gradients flowing through it. Within the
# checkpointed layers (0..ckpt-1) and within the kept ones (ckpt..L-1), and for layers of
# one position in the repeating pattern of kinds, each of these terms is affine in i. So
# the largest total over a run is at one of its two ends: the peak is the largest of at
# most 4 totals per position in the pattern, whatever L is.


class _SharedTensors:
    """Tensors made once per forward and held by the layers that use them (rotary tables,
    masks), during the backward pass: through layer i, a shared tensor is live while a layer
    at or below i still holds it. Every layer's rotation keeps its table's cos and sin; only
    a checkpointed layer keeps its mask (as an input to its recomputation: the masked sum
    keeps nothing, and a float mask an SDPA layer converts is its own). A tensor's first
    holder is in the first period of the pattern of kinds, so the live set is the same for
    every layer past it."""

    def __init__(self, s: ModelShape, sc: Scenario, ckpt: int):
        first = {}
        for i, kind in enumerate(s.layers[:s.num_layers]):
            first.setdefault(("rope", kind.rope), i)
            if i < ckpt:
                first.setdefault(("mask", act.mask_kind(kind)), i)
        tables = act.rotary_tables(s, sc)
        masks = act.attention_masks(s, sc)
        self.items = [(i, tables[name] if what == "rope" else masks.get(name, 0))
                      for (what, name), i in first.items() if what == "mask" or name in tables]

    def held(self, i: int) -> int:
        """Bytes of the shared tensors live in the backward through layer i."""
        return sum(size for first, size in self.items if first <= i)


@dataclass(frozen=True)
class _LayerCosts:
    """What one decoder layer of one kind weighs in the backward pass, in bytes."""

    saved: int                # A_layer: what it keeps for backward
    saved_attention: int      # of which its attention part
    gradients: int            # its weight gradients
    gradients_mlp: int        # of which its MLP's
    gradients_attn_out: int   # of which its attention output projection's
    gradients_mlp_out: int    # of which its MLP output projection's
    copies: int               # mixed precision: autocast's 16-bit copies of its weights
    copies_mlp: int           # of which its MLP's (freed once the MLP's backward has run)
    copies_mlp_out: int       # of which its MLP output projection's
    copies_attn_out: int      # of which its attention output projection's
    mlp_backward: int         # MLP-width tensors live at once in the MLP's backward, before
                              # what the down projection's backward freed (mlp_freed)
    attention_backward: int   # beyond what it keeps, at the softmax's backward
    recompute: int            # beyond its attention part, at the peak of its recomputed forward
    recompute_end: int        # beyond what it keeps, at the end of its recomputed forward
    out_weight_backward: int  # beyond what it keeps, at the MLP output projection's backward
                              # when its weight gradient is a new tensor (gradients live)
    mlp_backward_live: int    # mlp_backward when every gradient exists already
    out_norm: int             # what a norm on one branch's output keeps (freed before that branch's backward)
    out_norm_backward: int    # beyond what it keeps, at that norm's backward (first in its branch's)
    checkpointed: int         # what it keeps when checkpointed: its input, and what escapes
                              # the checkpoint (an 8-bit base's kept inputs)
    escaped: int              # of which what escapes the checkpoint
    mlp_linear_backward: int  # beyond what it keeps, at the worst MLP linear's backward
                              # (a quantized weight dequantized)
    attention_linear_backward: int  # the same for the attention's linears
    mlp_freed: int            # of `saved`, what the down projection's backward frees before the
                              # MLP's activation backward (activations.mlp_freed_bytes)
    attention_freed: int      # of `saved_attention`, what the output projection's adapter
                              # frees before the softmax backward (activations.attention_freed_bytes)
    recompute_mlp: int        # what it holds at the worst point of its MLP's recompute
                              # (_recompute_mlp_bytes), in place of `saved`


def _layer_costs(s: ModelShape, sc: Scenario, kind: LayerKind, g: trainable.LayerGrads = trainable.FULL) -> _LayerCosts:
    p = sc.bytes_per_value
    copy_parts = _layer_copy_parts(s, sc, kind, g)
    parts = act.layer_saved_bytes(s, sc, kind, g)
    # MLP-width tensors the MLP's backward holds at its highest point, of which the down
    # projection's backward has freed its kept input (mlp_freed, unless the activation keeps
    # that too; its weight gradient exists, counted apart):
    # gated, at the product's backward: its incoming gradient and both factors' gradients
    # (3, the product freed); ReLU, at its backward: the incoming and the result gradients,
    # its output kept by ReLU itself (2); GELU (one op), the same and its output, which only
    # the down projection kept (2, freed); the gelu_new composite 0.5·x·(1 + tanh(...)), at
    # its last product's backward: incoming gradient and both factors' (3, the output freed).
    mlp = s.arch.mlp
    widths = 3 if mlp.gated else {"relu": 2, "gelu": 2, "gelu_tanh": 2, "silu": 2, "gelu_new": 3}[mlp.activation]
    mlp_backward = widths * p * sc.tokens * s.intermediate_size
    attn_lin, mlp_lin = attention_linears(s, kind), mlp_linears(s, kind)
    down = mlp_lin[-1]
    mlp_out_gradient = trainable.linear_gradient_bytes(s, sc, down, g)
    mlp_freed = act.mlp_freed_bytes(s, sc, kind, g)
    recompute = act.attention_forward_extra_bytes(s, sc)
    escaped = sum(act.quantized_inputs_bytes(s, sc, kind, g).values())
    if kind.moe:
        # A sparse block's backward walk (its weight gradients as they are made), and in a
        # recomputed forward its transients above the whole layer's rebuilt set. (PEFT is
        # not modelled on a mixture of experts: trainable.check_peft.)
        mlp_backward = moe.backward_extra_bytes(s, sc)
        mlp_out_gradient = mlp_freed = 0
        recompute = max(recompute, parts["mlp"] + moe.forward_extra_bytes(s, sc))
    return _LayerCosts(
        saved=sum(parts.values()), saved_attention=parts["attention"],
        gradients=trainable.layer_gradient_bytes(s, sc, kind, g),
        gradients_mlp=trainable.layer_gradient_bytes(s, sc, kind, g, mlp_only=True),
        gradients_attn_out=trainable.linear_gradient_bytes(s, sc, attn_lin[-1], g),
        gradients_mlp_out=mlp_out_gradient,
        copies=copy_parts["attention"] + copy_parts["mlp"],
        copies_mlp=copy_parts["mlp"],
        copies_mlp_out=copy_parts["mlp_out"],
        copies_attn_out=copy_parts["attn_out"],
        mlp_backward=mlp_backward,
        attention_backward=act.attention_backward_extra_bytes(s, sc, kind, g, v_held=cache_above_bytes(s, sc) > 0),
        recompute=recompute,
        recompute_end=act.recompute_end_extra_bytes(s, sc, kind),
        # A sparse block's walk holds its new weight gradients itself; with gradients live
        # they are added into the existing ones as they are made.
        out_weight_backward=0 if kind.moe else _new_weight_gradient_bytes(down, sc, g),
        mlp_backward_live=moe.backward_extra_bytes(s, sc, gradients_exist=True) if kind.moe else mlp_backward,
        out_norm=act.branch_output_norm_bytes(s, sc),
        out_norm_backward=act.branch_output_norm_backward_bytes(s, sc),
        checkpointed=act.checkpoint_saved_bytes(s, sc) + escaped, escaped=escaped,
        mlp_linear_backward=_quantized_backward_bytes(s, sc, mlp_lin),
        attention_linear_backward=_quantized_backward_bytes(s, sc, attn_lin),
        mlp_freed=mlp_freed, attention_freed=act.attention_freed_bytes(s, sc, kind, g),
        recompute_mlp=0 if kind.moe else _recompute_mlp_bytes(s, sc, kind, g))


def _new_weight_gradient_bytes(lin, sc: Scenario, g: trainable.LayerGrads = trainable.FULL) -> int:
    """A linear's backward when its weight's gradient is made anew beside the one that
    exists (accumulation, zeroed gradients kept): its input's gradient (p·N·fan_in) and the
    new weight gradient (g·fan_in·fan_out; a LoRA adapter's, fp32; none when frozen), beside
    the incoming gradient (counted apart)."""
    new = _state_bytes_per_value(sc) * lin.fan_in * lin.fan_out if g.weights else 0
    if lin.name in g.lora:
        new += trainable.adapter_bytes(sc) * trainable.lora_params(lin, sc.peft.lora_rank)
    return sc.bytes_per_value * sc.tokens * lin.fan_in + new


def _recompute_mlp_bytes(s: ModelShape, sc: Scenario, kind: LayerKind, g: trainable.LayerGrads) -> int:
    """A checkpointed layer's recompute, at the worst moment of its MLP when an MLP linear is
    adapted or the base is quantized: what the layer holds then beyond its kept input, in
    place of its saved tensors (compare with cost.saved). 0 otherwise.

    The recompute (torch.utils.checkpoint, non-reentrant) is triggered by the first node of
    the layer's backward that unpacks a saved tensor, and runs the layer's forward up to its
    last saved tensor. What waits meanwhile: with a LoRA adapter on the MLP output
    projection, its first backward nodes (the cast back to dtype, the sum with the base
    output, the scaling) need no saved tensor and run first, leaving the base branch's
    gradient in dtype and the scaled one in fp32 ((p + 4)·N·out; an fp32 base makes no
    cast); with a quantized, frozen output projection, whose kernels keep their tensors as
    ctx attributes, not saved tensors, its backward runs first and its input's gradient
    waits (p·N·I). The forward holds: the attention part's saved tensors; the MLP norm's;
    the block's locals (the residual after attention, unless the norm keeps it, or in a
    parallel block the attention output; the MLP's normalised input; GPT2Block's kept
    attention output); the saved tensors of the MLP so far; and the current call: at an
    input projection its base output and, with an adapter, lora_B's output and its scaled
    copy (8·N·out) and with dropout the fp32 cast of the input (peft/tuners/lora/layer.py
    Linear.forward), or a quantized weight's call (quantization.forward_peak_bytes); at the
    activation's end the product; at the output projection's adapter (its last saved
    tensor) the product, the base output and the dropout's cast input."""
    pf = sc.peft
    mlp_lin = mlp_linears(s, kind)
    ins, down = mlp_lin[:-1], mlp_lin[-1]
    quantized = pf.weights_bits != 16
    if not any(lin.name in g.lora for lin in mlp_lin) and not quantized:
        return 0
    n, h, p = sc.tokens, s.hidden_size, sc.bytes_per_value
    arch, mlp = s.arch, s.arch.mlp
    f = act.layer_flow(s, g)
    fp32_base = p == trainable.adapter_bytes(sc)
    dropout = pf.lora_dropout > 0
    width = p * n * s.intermediate_size
    down_adapted = down.name in g.lora
    if down_adapted:
        waiting = (0 if fp32_base else p * n * down.fan_out) + trainable.adapter_bytes(sc) * n * down.fan_out
    elif quantized:
        waiting = p * n * down.fan_in
    else:
        waiting = 0
    residual = p * n * h if arch.parallel_residual or not act.norm_keeps_layer_input(s, sc) else 0
    adapted_ins = [lin for lin in ins if lin.name in g.lora]
    mlp_in = 0 if fp32_base and adapted_ins and not dropout else p * n * h   # else an adapter keeps x itself
    held = act.layer_saved_bytes(s, sc, kind, g)["attention"] + residual + mlp_in + waiting \
        + (p * n * h if arch.forward_keeps_attention_output else 0)
    if not (arch.parallel_residual and arch.shared_norm):
        held += act.norm_saved_bytes(s, sc, with_input=not arch.parallel_residual,
                                     input_grad=f.norm2_in, weight_grad=g.weights)

    def call(lin) -> int:
        out = p * n * lin.fan_out
        base = quantization.forward_peak_bytes(lin, pf.weights_bits, pf.double_quant, n, p) if quantized else out
        if lin.name not in g.lora:
            return base
        cast = trainable.adapter_bytes(sc) * n * lin.fan_in if dropout and not fp32_base else 0
        return max(base, out + cast + 2 * trainable.adapter_bytes(sc) * n * lin.fan_out)

    worst = 0
    for i, lin in enumerate(ins):
        held += act.lora_saved_bytes(s, sc, [lin] if lin.name in g.lora else [], f.norm2_out)
        worst = max(worst, held + call(lin))
        if mlp.gated and i == 0:
            # act(gate) keeps gate's output; its own output waits for the product
            held += (width if f.mlp_in[lin.name] else 0) + width
    # The activation's end: its saved tensors and the product it makes (ReLU's output, the
    # product, is one of its saved tensors when kept).
    relu_kept = not mlp.gated and mlp.activation == "relu" and (f.product or g.weights)
    held += act.mlp_saved_bytes(s, sc, kind, g) - (2 * width if mlp.gated else 0) + (0 if relu_kept else width)
    worst = max(worst, held)
    if down_adapted:
        # The output projection's adapter, the recompute's last saved tensor: at lora_A's
        # output every saved tensor of the layer is there, with the base output and the
        # dropout's cast input; a quantized base dequantized its weight just before.
        down_saved = act.lora_saved_bytes(s, sc, [down], f.product)
        cast = trainable.adapter_bytes(sc) * n * down.fan_in if dropout and not fp32_base else 0
        worst = max(worst, held + down_saved + p * n * down.fan_out + cast)
        if quantized:
            worst = max(worst, held + quantization.forward_peak_bytes(down, pf.weights_bits, pf.double_quant, n, p))
    return worst


def _quantized_backward_bytes(s: ModelShape, sc: Scenario, linears) -> int:
    """A quantized base: the most one of `linears` holds in its backward beyond the incoming
    gradient, its dequantized weight and the input's gradient it makes (quantization.py)."""
    pf = sc.peft
    if pf.weights_bits == 16:
        return 0
    p = sc.bytes_per_value
    return max(quantization.backward_transient_bytes(lin, pf.weights_bits, pf.double_quant, p)
               + p * sc.tokens * lin.fan_in for lin in linears)


class _LayerSums:
    """Sums over runs of layers, in closed form: the layers repeat a pattern of kinds, and
    kinds that cost the same are merged first (every kind is priced alike today); layers
    that need different gradients (trainable.grad_runs) are summed run by run."""

    def __init__(self, s: ModelShape, sc: Scenario):
        self.runs = []
        for first, last, g in trainable.grad_runs(s, sc):
            costs = {kind: _layer_costs(s, sc, kind, g) for kind in dict.fromkeys(s.layers)}
            pattern = repeating_pattern([costs[kind] for kind in s.layers])
            sums = {name: _PatternSum([getattr(c, name) for c in pattern])
                    for name in ("saved", "gradients", "copies", "checkpointed")}
            self.runs.append((first, last, pattern, sums))

    def _run(self, i: int):
        for run in self.runs:
            if run[0] <= i < run[1]:
                return run
        return self.runs[-1]

    @property
    def pattern(self) -> tuple:
        """The longest pattern of layer costs among the runs."""
        return max((run[2] for run in self.runs), key=len)

    def stretches(self) -> list[tuple[int, int, int]]:
        """(first, last + 1, period) of each run of layers of equal costs."""
        return [(first, last, len(pattern)) for first, last, pattern, _ in self.runs]

    def costs(self, i: int) -> _LayerCosts:
        pattern = self._run(i)[2]
        return pattern[i % len(pattern)]

    def _sum(self, name: str, first: int, last: int) -> int:
        total = 0
        for lo, hi, _, sums in self.runs:
            a, b = max(first, lo), min(last, hi)
            if a < b:
                total += sums[name](b) - sums[name](a)
        return total

    def saved(self, first: int, last: int) -> int:
        """Activations kept by layers first..last-1."""
        return self._sum("saved", first, last)

    def gradients(self, first: int, last: int) -> int:
        return self._sum("gradients", first, last)

    def copies(self, first: int, last: int) -> int:
        return self._sum("copies", first, last)

    def checkpointed(self, first: int, last: int) -> int:
        """What layers first..last-1 keep when checkpointed."""
        return self._sum("checkpointed", first, last)


class _PatternSum:
    """sum(values[j % period] for j in range(i)), in closed form."""

    def __init__(self, values: list[int]):
        self.period, self.total = len(values), sum(values)
        self.prefix = [0, *accumulate(values)]

    def __call__(self, i: int) -> int:
        whole, rest = divmod(i, self.period)
        return whole * self.total + self.prefix[rest]


class BackwardThroughLayers:
    """The activations live in the backward pass through each decoder layer (top to
    bottom), layer by layer: the layers below keep theirs, the layer itself holds its own
    (recomputed if it is checkpointed) and the gradients flowing through it. Model state
    (weights, gradients, optimizer states) is not included: the caller adds it, one device's
    (_backward_through_layers) or one rank's of a sharded run (capacity/sharding.py)."""

    def __init__(self, s: ModelShape, sc: Scenario, layers: "_LayerSums"):
        self.s, self.sc, self.layers = s, sc, layers
        self.ckpt = s.num_layers - kept_layers(s, sc)
        self.c_layer = act.checkpoint_saved_bytes(s, sc)
        # The rotary tables and masks the layers at or below a layer hold (_SharedTensors).
        self.shared = _SharedTensors(s, sc, self.ckpt)
        # Before the first layer: what the embedding keeps, and a frozen embedding's leaf
        # output under checkpointing (leaf_embedding_output_bytes).
        self.embed_saved = act.embedding_saved_bytes(s, sc, output_grad=trainable.below_layers_grad(s, sc),
                                                     trained=trainable.embedding_trained(sc)) \
            + leaf_embedding_output_bytes(s, sc)
        # A held output's cache keeps the k and v of the layers above (cache_above_bytes).
        self.cache_above = cache_above_bytes(s, sc)
        # The gradient flowing down the residual stream, in the stream's dtype (fp32 under
        # mixed precision).
        self.grad_flow = act.stream_bytes(sc) * sc.tokens * s.hidden_size
        # A checkpointed layer keeps its input beside its recomputed activations, unless the
        # first norm keeps that same tensor.
        self.ckpt_input = 0 if act.norm_keeps_layer_input(s, sc) else self.c_layer

    def below(self, i: int) -> int:
        """What layers 0..i-1 (and the embedding) keep: the first `ckpt` only their input
        (and what escapes the checkpoint), the rest everything."""
        ckpt, layers = self.ckpt, self.layers
        return self.embed_saved + self.shared.held(i) + layers.checkpointed(0, min(i, ckpt)) \
            + layers.saved(ckpt, max(i, ckpt))

    def within(self, i: int, live_gradients: bool = False) -> int:
        """The highest point inside layer i's backward, beyond the layers below: its own
        activations, its input gradient flowing through it, and its MLP's weight gradients
        while its attention runs backward; with a held KV cache, the k and v of the layers
        above. live_gradients: every gradient already exists (gradient accumulation, zeroed
        gradients kept)."""
        return self.within_and_freed(i, live_gradients)[0]

    def within_and_freed(self, i: int, live_gradients: bool = False) -> tuple[int, int]:
        """within(i), and the layer's 16-bit weight copies (mixed precision) its backward
        has freed by that point: the pair whose activations less copies freed is highest."""
        cost, is_ckpt = self.layers.costs(i), i < self.ckpt
        kept_input = self.ckpt_input if is_ckpt else 0
        grad_flow = self.grad_flow
        # A norm on a branch's output (OLMo 2) runs its backward before the branch's own.
        # At the MLP's backward the down projection's backward has run: its kept input (and
        # adapter) freed, its weight gradient made, its copy freed; a quantized linear's
        # backward dequantizes its weight.
        at_mlp = cost.saved - cost.out_norm - cost.mlp_freed + kept_input + grad_flow \
            + max(cost.mlp_backward, cost.mlp_linear_backward) + cost.gradients_mlp_out
        # At the softmax's backward the MLP's and the output projection's gradients exist,
        # and their copies are freed.
        at_attn = cost.saved_attention - cost.out_norm - cost.attention_freed + kept_input + cost.gradients_mlp \
            + cost.gradients_attn_out + grad_flow + max(cost.attention_backward, cost.attention_linear_backward)
        # A checkpointed layer first re-runs its forward: its attention part is rebuilt
        # while the fp32 softmax copy is live (its output norm not yet run). During the
        # recompute, what an 8-bit base's original forward kept of this layer is there
        # beside the recompute's own copies (those go with the recompute's graph).
        at_recompute = cost.saved_attention - cost.out_norm + kept_input + cost.escaped + grad_flow \
            + cost.recompute if is_ckpt else 0
        # ... and at its end, every saved tensor rebuilt, what the layer still holds beside them.
        at_recompute_end = cost.saved + kept_input + cost.escaped + grad_flow + cost.recompute_end if is_ckpt else 0
        # Adapted or quantized MLP linears make the recompute's MLP heavier (_recompute_mlp_bytes).
        at_recompute_mlp = cost.recompute_mlp + kept_input + cost.escaped + grad_flow \
            if is_ckpt and cost.recompute_mlp else 0
        at_new_weight = 0
        new_mlp_gradients = cost.gradients_mlp
        if live_gradients:
            # Every gradient already exists: the MLP's are not extra at the attention, and
            # each new weight gradient is a transient, added in place into the one that
            # exists; the largest moment is the MLP output's, first in the layer's backward
            # (after its output norm's, OLMo 2).
            at_attn -= cost.gradients_mlp + cost.gradients_attn_out
            new_mlp_gradients = 0
            at_mlp = cost.saved - cost.out_norm - cost.mlp_freed + kept_input + grad_flow \
                + max(cost.mlp_backward_live, cost.mlp_linear_backward)
            at_new_weight = cost.saved - cost.out_norm + kept_input + grad_flow + cost.out_weight_backward
        # A norm on a branch's output (OLMo 2) runs its backward first, with the whole branch
        # still kept: at the MLP's with everything, at the attention's with the MLP freed.
        at_out_norm = max(cost.saved, cost.saved_attention + new_mlp_gradients) + kept_input + grad_flow \
            + cost.out_norm_backward if cost.out_norm_backward else 0
        points = [(at_mlp, cost.copies_mlp_out), (at_attn, cost.copies_mlp + cost.copies_attn_out),
                  (at_recompute, 0), (at_recompute_end, 0), (at_recompute_mlp, 0), (at_new_weight, 0),
                  (at_out_norm, 0)]
        within, freed = max(points, key=lambda point: point[0] - point[1])
        return within + (self.s.num_layers - 1 - i) * self.cache_above, freed

    def at(self, i: int, live_gradients: bool = False) -> int:
        """Activations at the highest point of layer i's backward."""
        return self.below(i) + self.within(i, live_gradients)

    def after(self, i: int) -> int:
        """Activations once layer i's backward is done: the layers below and the gradient
        of its input (and the cache of the layers from i up)."""
        return self.below(i) + self.grad_flow + (self.s.num_layers - i) * self.cache_above

    def candidates(self, margin: int = 0) -> list[int]:
        """Layers where a total that is affine in i along each run of layers can peak
        (_candidate_layers), and `margin` pattern periods in from the ends of each stretch
        (for terms that differ at the bottom and top layers)."""
        out = set(_candidate_layers(self.s.num_layers, self.ckpt, self.layers.stretches()))
        period = len(self.layers.pattern)
        for _ in range(margin):
            out |= {i + step for i in out for step in (period, -period)}
        return sorted((i for i in out if 0 <= i < self.s.num_layers), reverse=True)


def _backward_through_layers(s: ModelShape, sc: Scenario, layers: _LayerSums, state: dict,
                             g_head: int, logits: int, extra: int = 0,
                             live_gradients: int | None = None) -> dict[str, int]:
    """The terms live at the highest point of the backward pass through the layers: the
    worst layer's (the topmost one of equal totals). `logits`: the held output's; `extra`:
    other activations held throughout (the loop's). live_gradients: every gradient is
    already allocated (gradient accumulation, zeroed gradients kept): the gradients are
    that many bytes throughout, and a layer's own MLP gradients are among them."""
    L = s.num_layers
    through = BackwardThroughLayers(s, sc, layers)
    ckpt = through.ckpt
    # Mixed precision: the LM head's backward runs before the layers' and frees its 16-bit
    # weight copy (and OPT's project_out's).
    copies_above = head_copy_bytes(s, sc)

    def at_layer(i: int) -> tuple[int, int, int]:
        """(weight copies, gradients, activations) live in the backward through layer i."""
        cost, is_ckpt = layers.costs(i), i < ckpt
        within, freed = through.within_and_freed(i, live_gradients is not None)
        # Mixed precision: the 16-bit copies of kept layers not yet through backward, and a
        # checkpointed layer's own copies while it is recomputed.
        copies_left = state["weights"] - copies_above - layers.copies(max(i + 1, ckpt), L) \
            + (cost.copies if is_ckpt else 0) - freed
        gradients = g_head + layers.gradients(i + 1, L) if live_gradients is None else live_gradients
        return copies_left, gradients, through.below(i) + within + extra

    worst, worst_total = None, None
    for i in through.candidates():
        terms = at_layer(i)
        if worst is None or sum(terms) > worst_total:
            worst, worst_total = terms, sum(terms)
    copies_left, gradients, activations = worst
    return {**state, "weights": copies_left, "gradients": gradients, "activations": activations,
            "logits_and_loss": logits}


def _candidate_layers(num_layers: int, ckpt: int, stretches: list[tuple[int, int, int]]) -> list[int]:
    """The layers where the backward's peak can be, topmost first: the two ends of each run
    of layers of one position in the pattern, within each stretch of equal costs
    (first, last + 1, period), among the checkpointed layers and among the kept ones (along
    such a run every term is affine in the layer index, so its largest total is at an end,
    the top one on a tie)."""
    out = set()
    for lo_run, hi_run, period in stretches:
        for first, last in ((0, ckpt - 1), (ckpt, num_layers - 1)):
            first, last = max(first, lo_run), min(last, hi_run - 1)
            if first > last:
                continue
            for r in range(min(period, last - first + 1)):
                lo = first + r
                out.add(lo)
                out.add(lo + (last - lo) // period * period)
            # The shared tensors live (_SharedTensors) may change within the first period only:
            # past it, the run is affine from its second layer on.
            if lo + period <= last:
                out.add(lo + period)
    return sorted(out, reverse=True)


# ---------------------------------------------------------------- forward-only phases

def forward_live_bytes(s: ModelShape, sc: Scenario) -> dict[str, int]:
    """Largest set of tensors live at once in a forward pass without autograd.

    Throughout the layers: the token ids, the embedding output (the model's forward keeps
    a reference to it), the residual stream x, the normalised input y, the causal mask
    and the rotary tables. Attention adds the q, k, v projections (their rotated copies,
    and repeats for grouped-query eager attention) and, at the softmax, the scores, an
    fp32 copy of them (softmax(dtype=float32) converts first, except fp16 on CUDA) and the
    fp32 output (a softmax in dtype, GPT-2's, makes neither). The MLP adds its widest
    intermediates. After the last layer: the final hidden state, the logits, their fp32
    copy, the log_softmax output and the shifted labels. What a family's forward keeps
    referenced beyond this is in its description (Architecture.forward_keeps_*).
    A PEFT model adds, at each adapted or quantized linear, what its call makes
    (_linear_peak_bytes); prefix tuning attends over its P + s keys, from the cache.
    """
    m = inference_forward_moments(s, sc)
    head_peak, logits_loss = m["head"]
    if head_peak + logits_loss >= m["layer"]:
        return {"activations": head_peak, "logits_and_loss": logits_loss}
    return {"activations": m["layer"], "logits_and_loss": 0}


def inference_forward_moments(s: ModelShape, sc: Scenario) -> dict:
    """The live bytes of a forward pass without autograd at its moments (forward_live_bytes
    explains each): "between" two layers (what the model's forward holds and the residual
    stream), "layer" (the highest point inside a layer, the worst kind's) and "head" (the
    final hidden state and ids; the logits, their fp32 copy, the log_softmax output)."""
    n, h, p = sc.tokens, s.hidden_size, sc.bytes_per_value
    held = forward_held_bytes(s, sc)
    # A KV cache (builds_kv_cache) holds every earlier layer's entry at the last layer's
    # attention, and its own too by its MLP; at the attention the own entry's copies take the
    # place of k and v, unless those are views of a fused projection that stays alive
    # (own_kv_cache_extra_bytes). With a mixture of experts' auxiliary loss, the router
    # logits of the layers before (the current layer's are the sparse block's own).
    cache = kv_cache_bytes(s, sc) if builds_kv_cache(s, sc) else 0
    routers = moe.router_logits_held_bytes(s, sc) if s.moe is not None else 0
    earlier_routers = max(0, routers - (routers and sc.tokens * s.moe.experts * p))
    at_attention = held + earlier_routers + \
        ((s.num_layers - 1) * cache + own_kv_cache_extra_bytes(s, sc) if cache else 0)
    at_mlp = held + earlier_routers + s.num_layers * cache
    nv = n * s.vocab_size
    return {"between": at_mlp + p * n * h,
            "layer": max(_forward_layer_peak(s, sc, kind, at_attention, at_mlp) for kind in s.layer_counts()),
            "head": (p * n * h + 8 * n + 16 * n + s.num_layers * cache,
                     p * nv + (FP32 * nv if p != FP32 else 0) + FP32 * nv + routers)}


def forward_held_bytes(s: ModelShape, sc: Scenario) -> int:
    """What a forward without autograd holds through the whole layer loop: the token ids,
    the embedding output (and learned position embeddings: GPT-2's (1, s, h), OPT's
    (b, s, h)), which the model's forward keeps referenced, the causal mask and the rotary
    tables."""
    n, h, p = sc.tokens, s.hidden_size, sc.bytes_per_value
    embed = 8 * n + p * n * h + {"": 0, "seq": p * sc.seq * h, "tokens": p * n * h}[s.arch.forward_keeps_position_output]
    return embed + act.rotary_bytes(s, sc) + act.causal_mask_bytes(s, sc)


class ForwardThroughLayers:
    """The activations live in a forward pass with autograd, layer by layer (one device's
    peak is at the loss, _bp_phases; a sharded run can peak inside the layers, where a
    layer's parameters are gathered: capacity/sharding.py). For a step without mixed
    precision (FSDP computes in the 16-bit dtype without autocast)."""

    def __init__(self, s: ModelShape, sc: Scenario, layers: "_LayerSums"):
        self.s, self.sc, self.layers = s, sc, layers
        self.ckpt = s.num_layers - kept_layers(s, sc)
        self.c_layer = act.checkpoint_saved_bytes(s, sc)
        self.hidden = sc.bytes_per_value * sc.tokens * s.hidden_size
        # The model's forward builds the rotary tables and the causal mask before the
        # layers and holds them through the layer loop; the loop's token tensors are there
        # throughout (input_bytes), and a KV cache grows by one entry per layer
        # (bp_kv_cache_bytes).
        self.held = (act.embedding_saved_bytes(s, sc) + act.rotary_bytes(s, sc) + act.causal_mask_bytes(s, sc)
                     + input_bytes(s, sc))
        self.cache = bp_kv_cache_bytes(s, sc) // s.num_layers

    def between(self, i: int) -> int:
        """Once layer i's forward is done (i = -1: the embedding's): what layers 0..i keep
        (a checkpointed layer its input) and the residual stream."""
        ckpt = self.ckpt
        kept = min(i + 1, ckpt) * self.c_layer + self.layers.saved(ckpt, max(i + 1, ckpt))
        return self.held + kept + self.hidden + (i + 1) * self.cache

    def inside(self, i: int) -> int:
        """The highest point of layer i's forward: at the softmax, its attention part with
        the fp32 copy of the scores (memory's recompute term), or at its end, everything it
        keeps and its output beside its input. A checkpointed layer runs without autograd
        (_forward_layer_peak, whose base counts the input)."""
        cost = self.layers.costs(i)
        if i < self.ckpt:
            return self.between(i - 1) - self.hidden + _forward_layer_peak(self.s, self.sc, self.s.layer_kind(i), 0)
        return self.between(i - 1) + self.cache + max(cost.saved_attention + cost.recompute, cost.saved + self.hidden)


def own_kv_cache_extra_bytes(s: ModelShape, sc: Scenario) -> int:
    """A forward without autograd, at a layer's attention: its KV cache entry beyond the k
    and v it replaces. The cache copies (torch.cat) of k and v; a copy is extra when the
    tensor it copies is a view of a fused q/k/v projection that stays alive: v whenever the
    projection is fused (GPT-2: q is a view of it; NeoX keeps the unrotated q and k), k when
    it is fused and not rotated (GPT-2); a rotated k is a fresh tensor, freed. After a prefix
    each copy is P + s long: a replacing copy adds its P positions."""
    att = s.arch.attention
    views = (1 if att.fused_qkv else 0) + (1 if att.fused_qkv and s.arch.positions != "rope" else 0)
    one = sc.bytes_per_value * sc.batch * s.kv_dim
    keys = act.key_length(s, sc)
    return views * one * keys + (2 - views) * one * (keys - sc.seq)


def _forward_layer_peak(s: ModelShape, sc: Scenario, kind: LayerKind, held: int,
                        held_mlp: int | None = None) -> int:
    """The most a forward without autograd holds inside one decoder layer of `kind`, with
    `held` bytes referenced from outside it at its attention and `held_mlp` (default: the
    same) at its MLP (a mixture-of-experts kind: its sparse block's widest moment,
    capacity/moe.py): the largest of the points below."""
    n, h, p = sc.tokens, s.hidden_size, sc.bytes_per_value
    b, seq, a = sc.batch, sc.seq, s.num_heads
    keys = act.key_length(s, sc)      # P + s after a prefix
    arch = s.arch
    pre_norm = arch.norm_placement != "branch_out"
    # At attention: the layer input x (the caller's reference) and its normalised copy y
    # (with norms only on the branch outputs, OLMo 2, the projections read x itself).
    base = held + (2 if pre_norm else 1) * p * n * h
    # At the MLP: x, and two more of: the sum after attention, the MLP's normalised input,
    # the attention output (parallel blocks add it last); a block may also still hold its
    # attention output after the sum (GPT-2's). OLMo 2's MLP reads the sum itself.
    base_mlp = (held if held_mlp is None else held_mlp) + (3 if pre_norm else 2) * p * n * h \
        + (p * n * h if arch.forward_keeps_attention_output else 0)
    if sc.attention == "eager":
        # The layer receives the attention probabilities back from its attention call
        # (`hidden_states, _ = self.self_attn(...)`) and holds them through the MLP.
        base_mlp += p * b * a * seq * keys
    qkv_made = p * n * (s.q_dim + 2 * s.kv_dim)
    qkv = qkv_made
    if arch.forward_keeps_unrotated_qk:
        qkv += p * n * (s.q_dim + s.kv_dim)  # the rotated copies, beside the originals
    scores = b * a * seq * keys
    # repeat_kv's copies of k and v (eager, or SDPA given a mask); with one key/value head its
    # expand and reshape stay a view at any batch (the size-1 head dim merges at stride 0),
    # and the matmul's own copy of k is freed before the softmax.
    repeats = 2 * p * b * keys * s.q_dim if 1 < s.num_kv_heads < s.num_heads else 0
    if sc.attention == "eager":
        qkv += repeats
        if not arch.attention.softmax_fp32:
            score_bytes = 2 * p
        else:
            copy = 0 if (p == FP32 or (sc.target == "cuda" and sc.dtype == "fp16")) else FP32
            score_bytes = p + copy + FP32
        attn_peak = qkv + score_bytes * scores
    else:
        if act.sdpa_repeats_kv(s, sc, kind):
            qkv += repeats
        # With a mask (a sliding window reached): SDPA's float copy of it, for this call.
        mask = p * b * seq * seq if act.sdpa_mask_present(s, sc, kind) else 0
        attn_peak = qkv + mask + p * n * s.q_dim + FP32 * b * a * seq
        if arch.rotary_by_concat and arch.positions == "rope" and kind.rope:
            # The output, laid out like the contiguous q, and its (b, s, a, d) copy.
            attn_peak = max(attn_peak, qkv + 2 * p * n * s.q_dim)
    # Gated: the activation's output, up's output and their product; a fused gate/up
    # projection's output stays whole while either chunk (a view) lives.
    mlp = arch.mlp
    widest = (4 if mlp.fused_gate_up else 3) if mlp.gated else {"gelu_new": 4}.get(mlp.activation, 2)
    mlp_peak = widest * p * n * s.intermediate_size
    if kind.moe:
        mlp_peak = moe.nograd_peak_bytes(s, sc)
    points = [base + attn_peak, base_mlp + mlp_peak]
    if arch.positions == "rope" and kind.rope:
        points.append(base + qkv_made + _rotary_transient_bytes(s, sc))
    if arch.attention.qk_norm:
        # q's norm, before k and v exist: the projection's output and the norm's transients.
        rows = n * (a if arch.attention.qk_norm == "head" else 1)
        points.append(base + _norm_transient_bytes(s, rows, s.q_dim // (rows // n), p))
    # At each adapted or quantized linear: what the block holds then, and the linear's call.
    att, mlp = attention_linears(s, kind), mlp_linears(s, kind)
    before = 0
    for lin in att[:-1]:
        points.append(base + before + _linear_peak_bytes(s, sc, lin))
        before += p * n * lin.fan_out
    # At the output projection: q, k, v, the attention's output and (eager) the probabilities.
    at_o = qkv + p * n * s.q_dim + (p * scores if sc.attention == "eager" else 0)
    points.append(base + at_o + _linear_peak_bytes(s, sc, att[-1]))
    mlp_base = base if arch.parallel_residual and arch.shared_norm else base_mlp
    before = 0
    for lin in mlp[:-1]:
        points.append(mlp_base + before + _linear_peak_bytes(s, sc, lin))
        before = p * n * lin.fan_out          # the activation's output (gated: beside up's)
    points.append(mlp_base + p * n * s.intermediate_size + _linear_peak_bytes(s, sc, mlp[-1]))
    return max(points)


def _rotary_transient_bytes(s: ModelShape, sc: Scenario) -> int:
    """apply_rotary_pos_emb's largest set of temporaries beside q, k and v, at
    `q_embed = (q * cos) + (rotate_half(q) * sin)`: q·cos, rotate_half(q) (freed once
    multiplied) and its product with sin, then their sum: 3 tensors of q's rotated share,
    in the dtype of the products (fp32 with fp32 tables, Architecture.rotary_fp32). A partial
    rotation (NeoX, Phi) then concatenates the rotated share with the rest (a full-size q
    beside the rotated share's sum). The tables, of the dtype, need no autograd here."""
    n, p = sc.tokens, sc.bytes_per_value
    t = FP32 if s.arch.rotary_fp32 else p
    rot = int(s.head_dim * s.arch.rotary_fraction) * s.num_heads
    at_sum = 3 * t * n * rot
    at_cat = t * n * rot + p * n * s.q_dim if rot < s.q_dim else 0
    return max(at_sum, at_cat)


def _norm_transient_bytes(s: ModelShape, rows: int, width: int, p: int) -> int:
    """The most one of the family's RMSNorms over `rows` rows of `width` p-byte values holds
    at once without autograd, its input included (LlamaRMSNorm.forward): the input, its fp32
    upcast (the input itself in fp32), the normalised x and the per-row variance and rsqrt
    at `x * torch.rsqrt(variance + eps)`; then the scale: Llama's casts the normalised x
    back to p bytes and multiplies by the p-byte weight (in fp32: input, normalised x and
    product, 12 bytes a value); scaled in fp32 (Gemma, OLMo 2), the fp32 product is cast
    back beside it: input, normalised x, product and cast, p + 4 + 4 + p."""
    values = rows * width
    upcast = FP32 * values if p != FP32 else 0
    at_normalise = p * values + upcast + FP32 * values + 2 * FP32 * rows
    if s.arch.norm.scale_in_fp32:
        at_scale = p * values + 2 * FP32 * values + (p * values if p != FP32 else 0) + FP32 * rows
    else:
        at_scale = p * values + FP32 * values + (2 * p * values if p != FP32 else FP32 * values) + FP32 * rows
    return max(at_normalise, at_scale)


def _linear_peak_bytes(s: ModelShape, sc: Scenario, lin) -> int:
    """The most one linear's call holds beyond its input in a forward without autograd, its
    output included; 0 for a plain 16-bit linear (its output is priced with the block).
    A quantized base: the dequantized weight or the int8 buffers (quantization.py).
    A LoRA adapter, after the base linear: x cast to fp32 (4·N·in, none under an fp32
    base), lora_B's output and its scaled copy, then the fp32 sum with the base output
    (8·N·out beside the base output p·N·out: peft/tuners/lora/layer.py Linear.forward)."""
    pf, n, p = sc.peft, sc.tokens, sc.bytes_per_value
    out = p * n * lin.fan_out
    quantized = pf.weights_bits != 16
    adapted = pf.method == "lora" and lin.name in trainable.lora_target_names(s, pf)
    if not (quantized or adapted):
        return 0
    base = quantization.forward_peak_bytes(lin, pf.weights_bits, pf.double_quant, n, p) if quantized else out
    if not adapted:
        return base
    cast = trainable.adapter_bytes(sc) * n * lin.fan_in if p != trainable.adapter_bytes(sc) else 0
    return max(base, out + cast + 2 * trainable.adapter_bytes(sc) * n * lin.fan_out)


def mezo_chunk_bytes(s: ModelShape, sc: Scenario) -> int:
    """MeZO's z, drawn chunk by chunk over the trained parameters (the engine's MeZO over
    the parameters that require grad): at most one chunk, or the largest trained tensor if
    smaller, in that tensor's dtype."""
    largest, value_bytes = trainable.largest_trainable_tensor(s, sc)
    p = trainable.trainable_params(s, sc)
    chunk = max(MEZO_CHUNK_MIN, min(MEZO_CHUNK_MAX, p // MEZO_CHUNK_SHARE))
    return min(largest, chunk) * value_bytes


def reference_mezo_temp_bytes(s: ModelShape, sc: Scenario) -> dict[str, int]:
    """princeton-nlp/MeZO's trainer, per parameter tensor (largest: the token table):
    zo_perturb_parameters' `param.data + scaling_factor * z * eps` holds z, scaling·z and
    (scaling·z)·eps at once, then z, the scaled z and the new data: 3 tensors beyond the
    weights. zo_update's `param.data - lr * (g * z + weight_decay * param.data)` holds z,
    g·z, decay·θ and their sum: 4 (the decay term is computed even when it is 0). Over the
    trained parameters only (a PEFT method's: the largest adapter or prefix table)."""
    elements, value_bytes = trainable.largest_trainable_tensor(s, sc)
    t = elements * value_bytes
    return {"perturbation": 3 * t, "update": 4 * t}


def _forward_only_phases(s: ModelShape, sc: Scenario) -> dict[str, dict[str, int]]:
    sc = replace(sc, mixed_precision=False)     # a forward-only step holds the weights in the dtype
    state = {"weights": weights_bytes(s, sc), "trainable_weights": trainable_weights_bytes(s, sc)}
    phases = {"forward": {**state, **forward_live_bytes(s, sc)}}
    if sc.method == "mezo" and sc.loop.mezo_impl == "reference":
        for phase, temp in reference_mezo_temp_bytes(s, sc).items():
            phases[phase] = {**state, "temporaries": temp}
    elif sc.method == "mezo":
        phases["perturbation"] = {**state, "temporaries": mezo_chunk_bytes(s, sc)}
    return phases


# ---------------------------------------------------------------- comparing with a tracker

# The classes both a prediction and torch's MemTracker can report. MemTracker files
def runnable_attention(s: ModelShape, sc: Scenario) -> str:
    """The attention implementation the model runs for a requested one: SDPA falls back to
    eager for a model class that does not support it (Attention.sdpa False: Gemma 2), as
    transformers' from_pretrained does by default (PreTrainedModel.get_correct_attn_implementation;
    an explicit attn_implementation="sdpa" raises there instead)."""
    return "eager" if sc.attention == "sdpa" and not s.arch.attention.sdpa else sc.attention


def attention_note(s: ModelShape, sc: Scenario) -> str | None:
    """A note when the attention priced is not the one requested (runnable_attention); else None."""
    if runnable_attention(s, sc) == sc.attention:
        return None
    return (f"{s.name or 'this model'} does not support attention through "
            "torch.nn.functional.scaled_dot_product_attention (transformers refuses "
            'attn_implementation="sdpa" for it; from_pretrained\'s default falls back to eager): '
            "priced with eager attention")


# tensors by when they were made: everything made inside optimizer.step() is optimizer
# state (the foreach Adam temporary too), everything made in forward or backward that is
# not a gradient is an activation or a temporary (the logits and the loss with them).
TRACKER_CLASSES = ("weights", "gradients", "optimizer_states", "activations_and_temporaries")


def by_tracker_class(est: Estimate) -> dict[str, int]:
    """The estimate's breakdown in TRACKER_CLASSES; the values still add up to the peak."""
    b = est.breakdown
    step_temp = b.get("temporaries", 0) if est.phase == "optimizer step" else 0
    out = {
        # Mixed precision: the fp32 master weights are the parameters; autocast's 16-bit
        # copies are made in forward.
        "weights": (b.get("master_weights", 0) or b.get("weights", 0)) + b.get("trainable_weights", 0),
        "gradients": b.get("gradients", 0),
        "optimizer_states": b.get("optimizer_states", 0) + step_temp,
    }
    out["activations_and_temporaries"] = est.peak_bytes - sum(out.values())
    return out


def tracker_breakdown_by_class(measured: dict) -> dict[str, int]:
    """A MemTracker breakdown (weights, buffers, gradients, optimizer_states, activations,
    temporaries, other) in TRACKER_CLASSES."""
    m = {k: v for k, v in measured.items() if isinstance(v, (int, float))}
    return {
        "weights": m.get("weights", 0),
        "gradients": m.get("gradients", 0),
        "optimizer_states": m.get("optimizer_states", 0),
        "activations_and_temporaries": sum(m.get(k, 0) for k in ("activations", "temporaries", "buffers", "other")),
    }


# ---------------------------------------------------------------- the estimate

def textbook_bytes(s: ModelShape, sc: Scenario) -> dict[str, int]:
    """weights + gradients + optimizer states + Korthikanti activations (L'/L of the layers
    keep them, the rest keep 2·s·b·h)."""
    w = parameter_count(s) * sc.bytes_per_value
    grads = w
    if sc.peft.method != "none" or sc.peft.weights_bits != 16:
        # PEFT: the stored base and adapters; gradients of the trained parameters only.
        w = weights_bytes(s, sc) + trainable_weights_bytes(s, sc)
        grads = gradients_bytes(s, sc)
    if sc.method != "bp":
        return {"weights": w}
    keep = kept_layers(s, sc)
    acts = keep * act.korthikanti_layer_bytes(s, sc) + (s.num_layers - keep) * 2 * sc.tokens * s.hidden_size
    return {"weights": w, "gradients": grads, "optimizer_states": optimizer_state_bytes(s, sc),
            "activations": acts}


def _check_modelled(s: ModelShape, sc: Scenario) -> None:
    """Refuse, by name, the settings whose mechanism is not modelled (yet), and PEFT
    settings that cannot run (trainable.check_peft)."""
    trainable.check_peft(s, sc)


def single_device_phases(s: ModelShape, sc: Scenario) -> dict[str, dict[str, int]]:
    """The terms live at the highest point of every phase of the step on one device."""
    return _bp_phases(s, sc) if sc.method == "bp" else _forward_only_phases(s, sc)


def estimate(s: ModelShape, sc: Scenario) -> Estimate:
    """Peak bytes of one step of `sc` on model `s`, with the terms live at the peak.
    ValueError for a setting that is not modelled, or a context beyond a learned position
    table (capacity.context)."""
    _check_modelled(s, sc)
    check_context(s, sc.seq)
    if runnable_attention(s, sc) != sc.attention:
        sc = replace(sc, attention=runnable_attention(s, sc))   # attention_note says so
    if sc.parallel.sharding != "none":
        from .sharding import estimate_sharded
        return estimate_sharded(s, sc)
    phases = cuda_runtime.with_workspaces(single_device_phases(s, sc), s, sc)
    totals = {name: sum(terms.values()) for name, terms in phases.items()}
    phase = max(totals, key=totals.get)
    breakdown = {t: phases[phase].get(t, 0) for t in TERMS}
    return Estimate(peak_bytes=totals[phase], breakdown=breakdown, phase=phase, phases=totals,
                    textbook=textbook_bytes(s, sc), params=trainable.all_params(s, sc),
                    # (what a PEFT method adds, adapters or a prefix, is used by every token)
                    active_params=active_parameter_count(s) + trainable.all_params(s, sc) - parameter_count(s),
                    moe_note=_moe_note(s, sc) if s.moe is not None else "",
                    trainable_params=trainable.trainable_params(s, sc) if sc.method != "inference" else 0)


def _moe_note(s: ModelShape, sc: Scenario) -> str:
    """Which experts implementation and routing a mixture of experts' figure is for; under
    the eager loop, the other routing's peak beside it (neither bounds the other: the eager
    backward peaks at its second expert, lower when few experts hold the tokens, while a
    forward without autograd peaks higher then; capacity/moe.py)."""
    if sc.experts == "grouped_mm":
        return "experts: grouped_mm (transformers' default); memory does not depend on the routing"
    other = "worst" if sc.routing == "balanced" else "balanced"
    alt = replace(sc, routing=other)
    alt_peak = max(sum(terms.values()) for terms in
                   (_bp_phases(s, alt) if sc.method == "bp" else _forward_only_phases(s, alt)).values())
    what = {"balanced": "balanced routing (each expert gets top_k·tokens/experts)",
            "worst": "worst-case routing (every token to the same top_k experts)"}
    return f"experts: eager loop, {what[sc.routing]}; under {other} routing the peak is {alt_peak:,} bytes"
