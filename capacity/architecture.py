"""The vocabulary a model family is described in: how its `transformers` code computes.

A family (capacity/families/) describes its mechanism as data, in these frozen
dataclasses; the shared memory model (params.py, activations.py, memory.py) reads them and
never asks which family it is. Each field names one mechanism and the code it stands for.

    Architecture          one family's model: norms, attention, MLP, residual wiring,
                          embedding, head, and what a forward without autograd keeps
      Norm                a normalisation layer (RMSNorm or LayerNorm, in which precision)
      Attention           the attention block of a decoder layer
      Mlp                 the MLP block of a decoder layer
      Multipliers         Granite's scalar multipliers
    LayerKind             what differs between the layers of one model (sliding-window or
                          full attention, RoPE or not, dense or mixture-of-experts MLP)
    Moe                   a mixture-of-experts MLP: its sizes and its router

Some fields describe mechanisms of families that are coming (shared experts). The memory
model does not price them yet: `unmodelled_features` lists the ones a description uses,
and a shape that uses any is refused (shape.validate_shape), so no estimate silently
ignores a mechanism. Whoever models one removes it from that list.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

# Activations whose saved tensors the memory model knows (capacity's names).
ACTIVATIONS = ("silu", "gelu", "gelu_new", "gelu_tanh", "relu")

NORM_KINDS = ("rmsnorm", "layernorm")
NORM_PLACEMENTS = ("pre", "post", "sandwich", "branch_out")
QK_NORMS = ("", "head", "projection")
POSITIONS = ("rope", "learned")
POSITION_OUTPUTS = ("", "seq", "tokens")
MASK_KINDS = ("full", "sliding")


@dataclass(frozen=True)
class Norm:
    """One normalisation layer.

    kind: "rmsnorm" or "layernorm" (torch.nn.functional.layer_norm).
    bias: LayerNorm with a bias (elementwise_affine with bias).
    scale_in_fp32: RMSNorm keeps the normalised x in fp32 through the scale and casts the
      result (Gemma: `output * (1.0 + self.weight.float())`, then `.type_as(x)`); otherwise
      it casts the normalised x to the input dtype before the scale (Llama:
      `self.weight * hidden_states.to(input_dtype)`).
    weight_offset: RMSNorm scales by (1 + w), made as a new fp32 tensor (Gemma).
    """

    kind: str = "rmsnorm"
    bias: bool = False
    scale_in_fp32: bool = False
    weight_offset: bool = False


@dataclass(frozen=True)
class Attention:
    """The attention block of a decoder layer.

    qkv: the module names of the projections that make q, k and v; one name means one
      fused projection of width a·d + 2·a_kv·d (GPT-2's c_attn, NeoX's query_key_value,
      Phi-3's qkv_proj). out: the output projection's name.
    softmax_fp32: eager attention's softmax runs in fp32 and its result is cast back
      (`softmax(..., dtype=torch.float32).to(query.dtype)`); False: in the input dtype
      (GPT-2's `nn.functional.softmax(attn_weights, dim=-1)`).
    qk_norm: RMSNorm of q and k before RoPE, of the family's `Norm`: "head" (per head, over
      d, applied to the (b, s, heads, d) view of the projection: Qwen3's and Gemma 3's
      q_norm/k_norm of width head_dim: a Gemma3RMSNorm) or "projection" (over the whole
      projection, a·d and a_kv·d: OLMo 2's q_norm/k_norm of width num_heads·head_dim); ""
      none.
    logit_softcap: cap·tanh(scores / cap) before the softmax (Gemma 2's
      eager_attention_forward); 0: none.
    sdpa: the model class runs attention through torch's scaled_dot_product_attention when
      asked (`_supports_sdpa`). False (Gemma 2: its soft-capping): transformers refuses
      attn_implementation="sdpa" and from_pretrained's default falls back to eager.
    """

    qkv: tuple[str, ...] = ("q_proj", "k_proj", "v_proj")
    out: str = "o_proj"
    qkv_bias: bool = False
    out_bias: bool = False
    softmax_fp32: bool = True
    qk_norm: str = ""
    logit_softcap: float = 0.0
    sdpa: bool = True

    @property
    def fused_qkv(self) -> bool:
        return len(self.qkv) == 1


@dataclass(frozen=True)
class Mlp:
    """The MLP block of a decoder layer (a dense one; see Moe for experts).

    inputs: the module names of the projections reading the MLP's input: gated
      ("gate_proj", "up_proj"), or one fused gate/up projection of width 2·I (Phi-3's
      gate_up_proj, whose output is chunked into two views); plain ("fc1",). out: the down
      projection's name.
    gated: down(act(gate(x)) * up(x)) instead of down(act(up(x))).
    """

    inputs: tuple[str, ...] = ("gate_proj", "up_proj")
    out: str = "down_proj"
    gated: bool = True
    activation: str = "silu"
    bias: bool = False

    @property
    def fused_gate_up(self) -> bool:
        return self.gated and len(self.inputs) == 1


@dataclass(frozen=True)
class Multipliers:
    """Granite's scalar multipliers (GraniteConfig): embedding_multiplier scales the
    embeddings, residual_multiplier each branch before its residual add, attention_multiplier
    replaces 1/sqrt(d) as the scores' scale (0: 1/sqrt(d)), logits_scaling divides the
    logits. 1 (and 0 for attention) is the plain computation. Each is a product with (or a
    division by) a Python float (modeling_granite.py: GraniteModel.forward,
    GraniteDecoderLayer.forward, GraniteAttention.scaling, GraniteForCausalLM.forward),
    which autograd saves nothing for: they cost no memory (traced: a Granite layer keeps
    Llama's bytes exactly), and are read so that a description says what the model is."""

    embedding: float = 1.0
    residual: float = 1.0
    attention: float = 0.0
    logits: float = 1.0


@dataclass(frozen=True)
class Moe:
    """A mixture-of-experts MLP, as transformers 5.23 runs it (MixtralSparseMoeBlock,
    Qwen3MoeSparseMoeBlock, OlmoeSparseMoeBlock): a router (`gate`, a linear h -> experts
    without bias, one (E, h) parameter) scores every token, each token goes to its `top_k`
    experts, and each expert is a gated MLP of width `expert_size` with the Mlp's activation.
    The experts of a layer are stored stacked, two parameters: gate_up_proj (E, 2I, h) and
    down_proj (E, h, I) (integrations/moe.py runs them: capacity/moe.py prices it).

    normalize_top_k: the top-k weights are renormalised to sum to 1, in place
      (`router_top_value /= router_top_value.sum(...)`): Mixtral always, Qwen3-MoE and OLMoE
      when norm_topk_prob is set.
    weights_fp32: the routing weights stay fp32 (MixtralTopKRouter returns the fp32 softmax
      values); otherwise they are cast to the router logits' dtype (Qwen3-MoE, OLMoE:
      `router_top_value.to(router_logits.dtype)`).
    router_aux_loss: the load-balancing loss is computed (config `output_router_logits`):
      every router's logits are kept in the model output and the loss softmaxes them again.
    router_jitter: in training the router's input is multiplied, in place, by uniform noise
      (Mixtral's router_jitter_noise > 0; `hidden_states *= torch.empty_like(...).uniform_(...)`).
    shared_expert_size: an always-on shared expert of that width (0: none) [not modelled yet].
    """

    experts: int
    top_k: int
    expert_size: int
    shared_expert_size: int = 0
    router_aux_loss: bool = False
    normalize_top_k: bool = True
    weights_fp32: bool = False
    router_jitter: bool = False


@dataclass(frozen=True)
class LayerKind:
    """What differs between the decoder layers of one model. A model's layers repeat a
    pattern of kinds (ModelShape.layers): Gemma 2 alternates sliding-window and full
    attention, Gemma 3 has five sliding layers to one full one, SmolLM3 drops RoPE in every
    fourth layer, a mixture-of-experts model may keep some dense layers.

    sliding_window: each token attends to the last `sliding_window` tokens; 0: full causal
      attention. Eager attention keeps the same tensors either way (its mask is another
      (b, 1, s, s) mask). SDPA skips the mask while the context is shorter than the window
      (masking_utils._ignore_causal_mask_sdpa); from the window on it gets a boolean mask,
      which each sliding layer's SDPA call converts to a float mask of its own, and grouped
      key/value heads are repeated (integrations/sdpa_attention.use_gqa_in_sdpa).
    rope: the rotary table the layer uses, when the model has rotary positions: the
      model's "global" one, or another ("local": Gemma 3's sliding layers use their own
      base frequency); each distinct table is computed once per forward and held through
      it. "": the layer applies no rotary embedding (a NoPE layer: SmolLM3's
      no_rope_layers): it keeps the same bytes (the matmuls or SDPA keep the projections'
      views instead of rotated copies), its forward has no rotary transient, and under
      mixed precision its k stays 16-bit.
    moe: the layer's MLP is the model's mixture of experts (ModelShape.moe); False: the
      dense Mlp of width ModelShape.intermediate_size (Qwen3-MoE's `mlp_only_layers`).
    """

    sliding_window: int = 0
    rope: str = "global"
    moe: bool = False


@dataclass(frozen=True)
class Architecture:
    """How one family's model computes, as the memory model reads it.

    Residual wiring:
      parallel_residual: attention and MLP both read the layer input and their outputs are
        added to it together (NeoX with use_parallel_residual, Phi).
      shared_norm: one norm feeds both parallel branches (Phi's input_layernorm).
      norm_placement: "pre" (each branch normalises its input: Llama, GPT-2), "post" (the
        residual sum is normalised: OPT with do_layer_norm_before=false; priced like "pre",
        each norm keeping one N·h input, and not traced separately), "sandwich" (pre, and each branch's output before
        its residual add: Gemma 2/3's four norms per layer), "branch_out" (only each branch's
        output, before its residual add: OLMo 2's post_attention_layernorm and
        post_feedforward_layernorm; the projections read the layer input and the residual
        sum themselves).
      final_norm: a norm after the last layer.
    Embedding and head:
      positions: "rope" (rotary; max_position_embeddings is the trained length, which RoPE
        scaling may extend) or "learned" (a position table: a hard limit).
      position_offset: extra rows in a learned table (OPT's OPTLearnedPositionalEmbedding: 2).
      rotary_fraction: share of the head dim that is rotated (NeoX, Phi: partial_rotary_factor).
      rotary_fp32: the cos/sin tables stay fp32 whatever the model's dtype, and the rotation
        runs in fp32 and casts q and k back to their dtype (Olmo2RotaryEmbedding.forward
        returns them without `.to(x.dtype)`; olmo2's apply_rotary_pos_emb ends with
        `q_embed.to(q_type), k_embed.to(k_type)`). False: the tables take the dtype of the
        embedding output (LlamaRotaryEmbedding: `cos.to(dtype=x.dtype)`), and q, k leave
        the rotation in the promoted dtype.
      rotary_by_concat: apply_rotary_pos_emb rebuilds q and k with torch.cat (the rotated
        part beside the passed-through one: NeoX, Phi, Phi-3), so the rotated q is contiguous
        in (b, a, s, d); an elementwise rotation of the transposed projection (Llama) keeps
        its (b, s, a, d) layout. The CPU flash kernel lays its output out like q, so after a
        concatenation the `.transpose(1, 2).contiguous()` before the output projection copies.
      embedding_scale: the embedding output is multiplied by sqrt(h) (Gemma's normalizer, a
        0-d tensor the product keeps for backward).
      lm_head_bias: the LM head has a bias (Phi).
      final_logit_softcap: cap·tanh(logits / cap) after the LM head (Gemma 2): its tanh output
        is kept for backward beside the logits the output holds.
      masks_always_built: the masks ("full", "sliding") the model's forward builds whatever
        kinds its layers are, and holds through the layer loop: Gemma 2/3 both (their
        causal_mask_mapping), Qwen2 the full one; besides these, one per kind of attention
        its layers use (Mistral and Phi-3 build only the mask of their window).
      multipliers: Granite's (Multipliers).
    What a forward without autograd keeps referenced (MeZO and inference), beyond the
    layer input, its normalised copy and the embedding output:
      forward_keeps_position_output: the learned position embeddings' output, held by the
        model's forward through the layer loop: "seq" (GPT-2's position_embeds from
        position_ids of shape (1, s): s·h) or "tokens" (OPT's, from the attention mask:
        b·s·h).
      forward_keeps_attention_output: the block still holds its attention output after
        the residual sum, through the MLP (GPT2Block's `attn_output`).
      forward_keeps_unrotated_qk: the unrotated q and k stay referenced beside their rotated
        copies: NeoX (v is a view of the fused projection, which holds q and k), Phi with a
        partial rotation (the pass-through slices `query_pass`, `key_pass` are views of q, k).
    What the model's output references:
      output_cache_needs_use_cache: the base model returns its cache only when use_cache is
        on (`past_key_values=past_key_values if use_cache else None`: GPT2Model,
        MistralModel, Qwen2Model, GemmaModel, Qwen3Model, SmolLM3Model, Phi3Model); the
        others return whatever cache they were given (LlamaModel: `past_key_values=
        past_key_values`). It matters when a cache is given with use_cache off: peft's prefix
        tuning passes its prefix as one, and a held output then keeps it, or not.
    How the parameters are laid out (what sharding over devices cuts: FSDP splits every
    tensor along its first dimension, capacity/sharding.py):
      transposed_weights: the projections store their weight as (fan_in, fan_out) (GPT-2's
        Conv1D); torch.nn.Linear stores (fan_out, fan_in).
      final_norm_in_base_model: the final norm is a direct child of the base model
        (LlamaModel.norm, GPT2Model.ln_f), where accelerate's FSDP2 wrapping looks for it
        (fsdp_utils._find_final_norm) to group it with the head; OPT's sits one level
        down, in OPTDecoder, and stays with the root.
    """

    norm: Norm
    attention: Attention
    mlp: Mlp
    parallel_residual: bool = False
    shared_norm: bool = False
    norm_placement: str = "pre"
    final_norm: bool = True
    positions: str = "rope"
    position_offset: int = 0
    rotary_fraction: float = 1.0
    rotary_fp32: bool = False
    rotary_by_concat: bool = False
    embedding_scale: bool = False
    lm_head_bias: bool = False
    final_logit_softcap: float = 0.0
    masks_always_built: tuple[str, ...] = ()
    multipliers: Multipliers = field(default_factory=Multipliers)
    forward_keeps_position_output: str = ""
    forward_keeps_attention_output: bool = False
    forward_keeps_unrotated_qk: bool = False
    output_cache_needs_use_cache: bool = False
    transposed_weights: bool = False
    final_norm_in_base_model: bool = True

    @property
    def norms_per_layer(self) -> int:
        """Norm layers in one decoder layer: one per branch input (one shared by parallel
        branches), and one per branch output where the placement adds them."""
        before = 0 if self.norm_placement == "branch_out" else (1 if self.shared_norm else 2)
        after = 2 if self.norm_placement in ("sandwich", "branch_out") else 0
        return before + after


def unmodelled_features(arch: Architecture, layers: tuple[LayerKind, ...], moe: Moe | None) -> list[str]:
    """The mechanisms a description uses that the memory model does not price yet."""
    out = []
    if moe is not None and moe.shared_expert_size:
        out.append("a shared expert")
    return out


def validate_architecture(arch: Architecture) -> None:
    """Raise ValueError naming the first field of a description that is malformed."""
    for name, value, kind in (("norm", arch.norm, Norm), ("attention", arch.attention, Attention),
                              ("mlp", arch.mlp, Mlp), ("multipliers", arch.multipliers, Multipliers)):
        if not isinstance(value, kind):
            raise ValueError(f"{name}: expected a {kind.__name__}, got {type(value).__name__}")
    _choice("norm.kind", arch.norm.kind, NORM_KINDS)
    _choice("activation", arch.mlp.activation, ACTIVATIONS)
    _choice("norm_placement", arch.norm_placement, NORM_PLACEMENTS)
    _choice("qk_norm", arch.attention.qk_norm, QK_NORMS)
    _choice("positions", arch.positions, POSITIONS)
    _choice("forward_keeps_position_output", arch.forward_keeps_position_output, POSITION_OUTPUTS)
    for name, names in (("attention.qkv", arch.attention.qkv), ("mlp.inputs", arch.mlp.inputs)):
        if not (isinstance(names, tuple) and names and all(isinstance(n, str) and n for n in names)):
            raise ValueError(f"{name}: expected a tuple of module names, got {names!r}")
    if len(arch.attention.qkv) not in (1, 3):
        raise ValueError(f"attention.qkv: one fused projection or three, got {arch.attention.qkv!r}")
    if len(arch.mlp.inputs) != (2 if arch.mlp.gated and not arch.mlp.fused_gate_up else 1):
        raise ValueError(f"mlp.inputs: {arch.mlp.inputs!r} does not match gated={arch.mlp.gated}")
    if not _number(arch.rotary_fraction) or not 0.0 <= arch.rotary_fraction <= 1.0:
        raise ValueError(f"rotary_fraction: must be in [0, 1], got {arch.rotary_fraction!r}")
    if isinstance(arch.position_offset, bool) or not isinstance(arch.position_offset, int) \
            or not 0 <= arch.position_offset <= 16:
        raise ValueError(f"position_offset: must be a whole number in [0, 16], got {arch.position_offset!r}")
    for name in ("logit_softcap",):
        if not _number(getattr(arch.attention, name)) or getattr(arch.attention, name) < 0:
            raise ValueError(f"attention.{name}: must be a number >= 0")
    if not isinstance(arch.masks_always_built, tuple) or not all(m in MASK_KINDS for m in arch.masks_always_built):
        raise ValueError(f"masks_always_built: a tuple of {', '.join(repr(m) for m in MASK_KINDS)}, "
                         f"got {arch.masks_always_built!r}")
    for name in ("sdpa",):
        if not isinstance(getattr(arch.attention, name), bool):
            raise ValueError(f"attention.{name}: expected true or false")
    if not isinstance(arch.rotary_by_concat, bool):
        raise ValueError("rotary_by_concat: expected true or false")
    if not _number(arch.final_logit_softcap) or arch.final_logit_softcap < 0:
        raise ValueError("final_logit_softcap: must be a number >= 0")
    for name in ("embedding", "residual", "attention", "logits"):
        value = getattr(arch.multipliers, name)
        if not _number(value) or not math.isfinite(value) or value < 0 or (value == 0 and name == "logits"):
            raise ValueError(f"multipliers.{name}: must be a finite number >= 0 (> 0 for logits), got {value!r}")


def validate_layer_kinds(layers) -> None:
    if not isinstance(layers, tuple) or not layers or not all(isinstance(k, LayerKind) for k in layers):
        raise ValueError("layers: expected a non-empty tuple of LayerKind")
    for k in layers:
        if isinstance(k.sliding_window, bool) or not isinstance(k.sliding_window, int) or k.sliding_window < 0:
            raise ValueError(f"sliding_window: must be a whole number >= 0, got {k.sliding_window!r}")
        if not isinstance(k.rope, str):
            raise ValueError(f"rope: expected a rotary table's name, got {k.rope!r}")
        if not isinstance(k.moe, bool):
            raise ValueError(f"moe: expected true or false, got {k.moe!r}")


def validate_moe(moe: Moe, max_dim: int) -> None:
    """Raise ValueError naming the first field of a Moe that is out of range."""
    for name in ("experts", "top_k", "expert_size", "shared_expert_size"):
        value = getattr(moe, name)
        low = 0 if name == "shared_expert_size" else 1
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= max_dim:
            raise ValueError(f"moe.{name}: must be a whole number in [{low}, {max_dim}], got {value!r}")
    if moe.top_k > moe.experts:
        raise ValueError(f"moe.top_k: must be at most the number of experts ({moe.experts}), got {moe.top_k}")
    for name in ("router_aux_loss", "normalize_top_k", "weights_fp32", "router_jitter"):
        if not isinstance(getattr(moe, name), bool):
            raise ValueError(f"moe.{name}: expected true or false, got {getattr(moe, name)!r}")


def _choice(name: str, value, allowed) -> None:
    if not isinstance(value, str) or value not in allowed:
        raise ValueError(f"{name}: must be one of {', '.join(repr(a) for a in allowed)}, got {value!r}")


def _number(value) -> bool:
    return not isinstance(value, bool) and isinstance(value, (int, float))
