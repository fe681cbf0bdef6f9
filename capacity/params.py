"""Parameter count of a `ModelShape`, term by term, from its family's description.

Each function returns a number of parameters (elements, not bytes). The total equals
`sum(p.numel() for p in model.parameters())` of the Hugging Face model built from the
same config (tests/test_params.py checks every preset on the meta device). A tied
embedding is counted once, as PyTorch counts the shared tensor once. Functions of one
decoder layer take the layer's kind (`LayerKind`; the model's first kind by default).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

from .architecture import LayerKind
from .shape import ModelShape


@dataclass(frozen=True)
class Linear:
    """One projection: `name` is its module name in the family's transformers code."""

    name: str
    fan_in: int
    fan_out: int
    bias: bool

    @property
    def params(self) -> int:
        return self.fan_in * self.fan_out + (self.fan_out if self.bias else 0)

    @property
    def tensors(self) -> int:
        return 2 if self.bias else 1


def attention_linears(s: ModelShape, kind: LayerKind | None = None) -> list[Linear]:
    """q: h -> a·d, k and v: h -> a_kv·d each (or one fused h -> a·d + 2·a_kv·d), and the
    output projection a·d -> h."""
    att, h = s.arch.attention, s.hidden_size
    if att.fused_qkv:
        qkv = [Linear(att.qkv[0], h, s.q_dim + 2 * s.kv_dim, att.qkv_bias)]
    else:
        qkv = [Linear(name, h, width, att.qkv_bias)
               for name, width in zip(att.qkv, (s.q_dim, s.kv_dim, s.kv_dim))]
    return qkv + [Linear(att.out, s.q_dim, h, att.out_bias)]


def mlp_linears(s: ModelShape, kind: LayerKind | None = None) -> list[Linear]:
    """Gated: gate and up h -> I (or one fused h -> 2·I), down I -> h. Plain: up h -> I, down I -> h.
    A mixture-of-experts layer: its router h -> E (`gate`, no bias); the experts themselves
    are stacked parameters, not linears (expert_tensors)."""
    mlp, h, inter = s.arch.mlp, s.hidden_size, s.intermediate_size
    if _is_moe(s, kind):
        return [Linear("gate", h, s.moe.experts, False)]
    width = 2 * inter if mlp.fused_gate_up else inter
    return [Linear(name, h, width, mlp.bias) for name in mlp.inputs] + [Linear(mlp.out, inter, h, mlp.bias)]


def _is_moe(s: ModelShape, kind: LayerKind | None) -> bool:
    return (kind if kind is not None else s.layers[0]).moe


def expert_tensors(s: ModelShape, kind: LayerKind | None = None) -> list[int]:
    """Elements of each stacked expert parameter of a mixture-of-experts layer (none in a
    dense one): gate_up_proj (E, 2·I, h) and down_proj (E, h, I) (MixtralExperts.__init__ and
    its Qwen3-MoE and OLMoE copies)."""
    if not _is_moe(s, kind):
        return []
    e, h, inter = s.moe.experts, s.hidden_size, s.moe.expert_size
    return [e * 2 * inter * h, e * h * inter]


def experts_params(s: ModelShape, kind: LayerKind | None = None) -> int:
    """All experts of one layer: 3·E·h·I (0 in a dense layer)."""
    return sum(expert_tensors(s, kind))


def active_experts_params(s: ModelShape, kind: LayerKind | None = None) -> int:
    """The experts one token goes through: top_k · 3·h·I (0 in a dense layer)."""
    if not _is_moe(s, kind):
        return 0
    return s.moe.top_k * 3 * s.hidden_size * s.moe.expert_size


def layer_linears(s: ModelShape, kind: LayerKind | None = None) -> list[Linear]:
    """Every projection of one decoder layer, attention first."""
    return attention_linears(s, kind) + mlp_linears(s, kind)


def norm_params(s: ModelShape) -> int:
    """One normalisation layer: a scale of h, plus a bias of h for LayerNorm with bias."""
    return s.hidden_size * (2 if s.arch.norm.bias else 1)


def qk_norm_params(s: ModelShape) -> int:
    """The q and k norms (Attention.qk_norm): per head, two scales of d (Qwen3Attention's
    q_norm, k_norm = RMSNorm(head_dim)); over the projection, scales of a·d and a_kv·d
    (Olmo2Attention: RMSNorm(num_heads·head_dim), RMSNorm(num_key_value_heads·head_dim))."""
    widths = {"": 0, "head": 2 * s.head_dim, "projection": s.q_dim + s.kv_dim}[s.arch.attention.qk_norm]
    return widths * (2 if s.arch.norm.bias else 1)


def attention_params(s: ModelShape, kind: LayerKind | None = None) -> int:
    """q: h·(a·d), k and v: h·(a_kv·d) each, output: (a·d)·h, plus the biases that exist,
    plus the q/k norms' scales."""
    return sum(lin.params for lin in attention_linears(s, kind)) + qk_norm_params(s)


def mlp_params(s: ModelShape, kind: LayerKind | None = None) -> int:
    """Gated: gate and up h·I, down I·h. Plain: up h·I, down I·h. Plus biases. A mixture of
    experts: its router E·h and its experts 3·E·h·I."""
    return sum(lin.params for lin in mlp_linears(s, kind)) + experts_params(s, kind)


def layer_params(s: ModelShape, kind: LayerKind | None = None) -> int:
    """One decoder layer: attention (with the q and k norms), MLP and its norms."""
    return attention_params(s, kind) + mlp_params(s, kind) + s.arch.norms_per_layer * norm_params(s)


def layer_linear_params(s: ModelShape, kind: LayerKind | None = None) -> int:
    """One decoder layer's parameters held by its projections (nn.Linear, GPT-2's Conv1D):
    the layer's parameters less its norms."""
    return sum(lin.params for lin in layer_linears(s, kind))


def linear_params(s: ModelShape) -> int:
    """Parameters held by projections (what autocast casts to 16 bits: F.linear and addmm
    are on its lower-precision list, embedding lookups and the norms' products are not):
    every layer's projections, the LM head (V·e, the shared table once when tied, + its
    bias) and OPT's project_in/out; not the token or position tables, not the norms."""
    layers = sum(n * layer_linear_params(s, kind) for kind, n in s.layer_counts().items())
    head = s.vocab_size * s.embed_dim + (s.vocab_size if s.arch.lm_head_bias else 0)
    projections = 2 * s.embed_dim * s.hidden_size if s.embed_dim != s.hidden_size else 0
    return layers + head + projections


def layers_params(s: ModelShape) -> int:
    """All L decoder layers, kind by kind."""
    return sum(n * layer_params(s, kind) for kind, n in s.layer_counts().items())


def embedding_params(s: ModelShape) -> int:
    """Token table V·e, learned position table (if any), OPT's project_in/out (if e != h)."""
    total = s.vocab_size * s.embed_dim + s.position_table_rows * s.hidden_size
    if s.embed_dim != s.hidden_size:
        total += 2 * s.embed_dim * s.hidden_size
    return total


def head_params(s: ModelShape) -> int:
    """Final norm, and the output projection V·e unless tied to the token table."""
    total = norm_params(s) if s.arch.final_norm else 0
    if not s.tie_embeddings:
        total += s.vocab_size * s.embed_dim
    if s.arch.lm_head_bias:
        total += s.vocab_size
    return total


@lru_cache(maxsize=4096)
def parameter_count(s: ModelShape) -> int:
    """P = embeddings + the L layers + head. (Cached: a shape is frozen, and the memory
    model asks for its P several times per estimate.)"""
    return embedding_params(s) + layers_params(s) + head_params(s)


def active_parameter_count(s: ModelShape) -> int:
    """Parameters one token's forward pass uses: P, less in every mixture-of-experts layer
    the experts it is not routed to, (E - top_k)·3·h·I (P itself for a dense model)."""
    unused = sum(n * (experts_params(s, kind) - active_experts_params(s, kind))
                 for kind, n in s.layer_counts().items())
    return parameter_count(s) - unused


def largest_tensor_params(s: ModelShape) -> int:
    """Elements of the largest single parameter tensor: the token table in the dense families
    here, the stacked gate_up_proj (E, 2·I, h) of a mixture of experts."""
    weights = [lin.fan_in * lin.fan_out for kind in s.layer_counts() for lin in layer_linears(s, kind)]
    weights += [n for kind in s.layer_counts() for n in expert_tensors(s, kind)]
    return max(s.vocab_size * s.embed_dim, s.position_table_rows * s.hidden_size, *weights)


def parameter_tensor_count(s: ModelShape) -> int:
    """How many parameter tensors the model has (Adam keeps one fp32 `step` scalar per tensor)."""
    norm = 2 if s.arch.norm.bias else 1
    qk = 2 * norm if s.arch.attention.qk_norm else 0
    per_kind = {kind: sum(lin.tensors for lin in layer_linears(s, kind)) + len(expert_tensors(s, kind))
                + s.arch.norms_per_layer * norm + qk for kind in s.layer_counts()}
    embed = 1 + (1 if s.position_table_rows else 0) + (2 if s.embed_dim != s.hidden_size else 0)
    head = (norm if s.arch.final_norm else 0) + (0 if s.tie_embeddings else 1) + (1 if s.arch.lm_head_bias else 0)
    return embed + sum(n * per_kind[kind] for kind, n in s.layer_counts().items()) + head


def no_decay_params(s: ModelShape) -> int:
    """Parameters that transformers.Trainer exempts from weight decay (its
    get_decay_parameter_names: LayerNorm modules, and names with `bias` or a `norm`): every
    norm's scale and bias (the q/k norms' too), and every bias."""
    per_kind = {kind: sum(lin.fan_out for lin in layer_linears(s, kind) if lin.bias)
                + s.arch.norms_per_layer * norm_params(s) + qk_norm_params(s) for kind in s.layer_counts()}
    head = (norm_params(s) if s.arch.final_norm else 0) + (s.vocab_size if s.arch.lm_head_bias else 0)
    return sum(n * per_kind[kind] for kind, n in s.layer_counts().items()) + head


# ---------------------------------------------------------------- tensor by tensor

# The modules a causal LM's parameters belong to, as sharding over devices groups them.
MODULE_GROUPS = ("embedding", "positions", "projections", "layer", "final_norm", "head")


def parameter_tensors(s: ModelShape, kind: LayerKind | None = None) -> dict[str, list[tuple[int, int]]]:
    """Every parameter tensor as (rows, elements per row), rows being its first dimension,
    grouped by module (MODULE_GROUPS); "layer" lists one decoder layer of `kind` (the
    model's first by default). What FSDP shards: it splits each tensor along dim 0.

    embedding: the token table (V, e). positions: a learned table (rows, h). projections:
    OPT's project_in (h, e) and project_out (e, h) when e != h. layer: each projection's
    weight, (fan_out, fan_in) for torch.nn.Linear or (fan_in, fan_out) for GPT-2's Conv1D
    (Architecture.transposed_weights), its bias (fan_out,), each norm's weight and bias (h,),
    q/k norms, a mixture of experts' stacked gate_up_proj (E, 2·I, h) and down_proj (E, h, I).
    final_norm: (h,) and its bias. head: the LM head (V, e) unless tied, its bias (V,).
    Their elements add up to parameter_count (tests/test_sharding.py)."""
    h, arch = s.hidden_size, s.arch
    norm = [(h, 1)] * (2 if arch.norm.bias else 1)
    layer = []
    for lin in layer_linears(s, kind):
        layer.append((lin.fan_in, lin.fan_out) if arch.transposed_weights else (lin.fan_out, lin.fan_in))
        if lin.bias:
            layer.append((lin.fan_out, 1))
    layer += norm * arch.norms_per_layer
    qk = {"": [], "head": [(s.head_dim, 1)] * 2, "projection": [(s.q_dim, 1), (s.kv_dim, 1)]}
    layer += qk[arch.attention.qk_norm] * (2 if arch.norm.bias else 1)
    if _is_moe(s, kind):
        e, inter = s.moe.experts, s.moe.expert_size
        layer += [(e, 2 * inter * h), (e, h * inter)]
    head = [] if s.tie_embeddings else [(s.vocab_size, s.embed_dim)]
    if arch.lm_head_bias:
        head.append((s.vocab_size, 1))
    return {
        "embedding": [(s.vocab_size, s.embed_dim)],
        "positions": [(s.position_table_rows, h)] if s.position_table_rows else [],
        "projections": [(h, s.embed_dim), (s.embed_dim, h)] if s.embed_dim != h else [],
        "layer": layer,
        "final_norm": norm if arch.final_norm else [],
        "head": head,
    }
