"""Parameter count of a `ModelShape`, term by term.

Each function returns a number of parameters (elements, not bytes). The total equals
`sum(p.numel() for p in model.parameters())` of the Hugging Face model built from the
same config (tests/test_params.py checks every preset on the meta device). A tied
embedding is counted once, as PyTorch counts the shared tensor once.
"""

from __future__ import annotations

from .shape import ModelShape


def norm_params(s: ModelShape) -> int:
    """One normalisation layer: a scale of h, plus a bias of h for LayerNorm with bias."""
    return s.hidden_size * (2 if s.norm_bias else 1)


def attention_params(s: ModelShape) -> int:
    """q: h·(a·d), k and v: h·(a_kv·d) each, output: (a·d)·h, plus the biases that exist."""
    h = s.hidden_size
    weights = h * s.q_dim + 2 * h * s.kv_dim + s.q_dim * h
    biases = (s.q_dim + 2 * s.kv_dim if s.qkv_bias else 0) + (h if s.attn_out_bias else 0)
    return weights + biases


def mlp_params(s: ModelShape) -> int:
    """Gated: gate and up h·I, down I·h. Plain: up h·I, down I·h. Plus biases."""
    h, inter = s.hidden_size, s.intermediate_size
    n_in = 2 if s.gated_mlp else 1
    weights = (n_in + 1) * h * inter
    biases = (n_in * inter + h) if s.mlp_bias else 0
    return weights + biases


def layer_params(s: ModelShape) -> int:
    """One decoder layer."""
    return attention_params(s) + mlp_params(s) + s.norms_per_layer * norm_params(s)


def embedding_params(s: ModelShape) -> int:
    """Token table V·e, learned position table (if any), OPT's project_in/out (if e != h)."""
    total = s.vocab_size * s.embed_dim + s.learned_positions * s.hidden_size
    if s.embed_dim != s.hidden_size:
        total += 2 * s.embed_dim * s.hidden_size
    return total


def head_params(s: ModelShape) -> int:
    """Final norm, and the output projection V·e unless tied to the token table."""
    total = norm_params(s) if s.final_norm else 0
    if not s.tie_embeddings:
        total += s.vocab_size * s.embed_dim
    if s.lm_head_bias:
        total += s.vocab_size
    return total


def parameter_count(s: ModelShape) -> int:
    """P = embeddings + L·(one layer) + head."""
    return embedding_params(s) + s.num_layers * layer_params(s) + head_params(s)


def largest_tensor_params(s: ModelShape) -> int:
    """Elements of the largest single parameter tensor (the token table in every family here)."""
    h, inter = s.hidden_size, s.intermediate_size
    return max(s.vocab_size * s.embed_dim, h * inter, h * s.q_dim, s.learned_positions * h)


def parameter_tensor_count(s: ModelShape) -> int:
    """How many parameter tensors the model has (Adam keeps one fp32 `step` scalar per tensor)."""
    # GPT-2 (c_attn) and GPT-NeoX (query_key_value) hold q, k and v in one fused tensor.
    fused = s.model_type in ("gpt2", "gpt_neox")
    attn = (2 if fused else 4) + ((1 if fused else 3) if s.qkv_bias else 0) + (1 if s.attn_out_bias else 0)
    mlp = (3 if s.gated_mlp else 2) + ((3 if s.gated_mlp else 2) if s.mlp_bias else 0)
    norms = s.norms_per_layer * (2 if s.norm_bias else 1)
    per_layer = attn + mlp + norms
    embed = 1 + (1 if s.learned_positions else 0) + (2 if s.embed_dim != s.hidden_size else 0)
    head = (2 if s.norm_bias else 1) * (1 if s.final_norm else 0) + (0 if s.tie_embeddings else 1) \
        + (1 if s.lm_head_bias else 0)
    return embed + s.num_layers * per_layer + head
