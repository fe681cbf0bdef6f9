"""Qwen3-MoE (transformers/models/qwen3_moe: Qwen3MoeConfig, modeling_qwen3_moe.py): Qwen3's
decoder layer (Llama-like, q and k RMSNorm per head before RoPE) with a sparse mixture of
experts as the MLP (Qwen3MoeSparseMoeBlock): `num_experts` experts of width
`moe_intermediate_size`, `num_experts_per_tok` per token, the top-k weights renormalised
when `norm_topk_prob` and cast back to the logits' dtype. Layer i keeps a dense MLP of width
`intermediate_size` when i is in `mlp_only_layers` or (i + 1) is not a multiple of
`decoder_sparse_step` (Qwen3MoeDecoderLayer.__init__); with num_experts 0 every layer is
dense. Sliding-window attention on every layer only with use_sliding_window."""

from __future__ import annotations

from dataclasses import replace

from ..architecture import LayerKind, Moe
from ..shape import MAX_LAYER_PATTERN, ModelShape, repeating_pattern
from . import llama
from .config import ConfigReader, Family, first_given, show

MODEL_TYPE = "qwen3_moe"

# Qwen3MoeConfig's defaults for the keys read here (head_dim is read with getattr: h / a).
DEFAULTS = {"vocab_size": 151936, "hidden_size": 2048, "intermediate_size": 6144,
            "num_hidden_layers": 24, "num_attention_heads": 32, "num_key_value_heads": 4,
            "head_dim": None, "hidden_act": "silu", "max_position_embeddings": 32768,
            "attention_bias": False, "use_sliding_window": False, "sliding_window": 4096,
            "attention_dropout": 0.0, "tie_word_embeddings": False, "decoder_sparse_step": 1,
            "moe_intermediate_size": 768, "num_experts_per_tok": 8, "num_experts": 128,
            "num_local_experts": 128, "norm_topk_prob": False, "output_router_logits": False,
            "mlp_only_layers": None}

KEYS = {**llama.KEYS, "moe.experts": "num_experts", "moe.top_k": "num_experts_per_tok",
        "moe.expert_size": "moe_intermediate_size"}


def sparse_layers(c: ConfigReader, layers: int, experts: int) -> list[bool]:
    """Whether each layer is sparse, as a repeating pattern's worth (one period) or per layer."""
    step = c.integer("decoder_sparse_step", high=MAX_LAYER_PATTERN)
    dense = c.cfg.get("mlp_only_layers") or []
    if not isinstance(dense, list) or not all(isinstance(i, int) and not isinstance(i, bool) and i >= 0
                                              for i in dense):
        c.fail("mlp_only_layers", f"expected a list of layer indices, got {show(dense)}")
    if experts == 0:
        return [False]
    if not any(i < layers for i in dense):
        return [(i + 1) % step == 0 for i in range(min(step, layers))] if step <= layers else [False]
    if layers > MAX_LAYER_PATTERN:
        c.fail("num_hidden_layers", f"dense layers listed in mlp_only_layers are supported up to "
                                    f"{MAX_LAYER_PATTERN} layers, got {layers}")
    dense = set(dense)
    return [i not in dense and (i + 1) % step == 0 for i in range(layers)]


def read(c: ConfigReader, name: str) -> ModelShape:
    bias = c.boolean("attention_bias")
    arch = llama.architecture(c.activation("hidden_act"), qkv_bias=bias, out_bias=bias)
    arch = replace(arch, attention=replace(arch.attention, qk_norm="head"))
    window = (c.optional_integer("sliding_window") or 0) if c.boolean("use_sliding_window") else 0
    shape = llama.read_llama_like(c, name, MODEL_TYPE, arch, windows=[window])
    experts = c.integer(first_given(c, "num_local_experts", "num_experts"), low=0)
    layers = c.integer("num_hidden_layers")
    sparse = sparse_layers(c, layers, experts)
    moe = None
    if experts:
        moe = Moe(experts=experts, top_k=c.integer("num_experts_per_tok", high=experts),
                  expert_size=c.integer("moe_intermediate_size"), router_aux_loss=c.boolean("output_router_logits"),
                  normalize_top_k=c.boolean("norm_topk_prob"), weights_fp32=False)
    kinds = repeating_pattern([LayerKind(sliding_window=window, moe=m) for m in sparse])
    return replace(shape, moe=moe, layers=kinds)


def write(s: ModelShape) -> dict:
    out = {**llama.write_llama_like(s), "attention_bias": s.arch.attention.qkv_bias}
    window = s.layers[0].sliding_window
    out.update(use_sliding_window=bool(window), sliding_window=window or None)
    if s.moe is None:
        return {**out, "num_experts": 0}
    p = len(s.layers)
    if p <= s.num_layers and all(not k.moe for k in s.layers[:-1]) and s.layers[-1].moe:
        step, dense = p, []          # every step-th layer sparse
    else:
        step, dense = 1, [i for i in range(s.num_layers) if not s.layer_kind(i).moe]
    return {**out, "num_experts": s.moe.experts, "num_experts_per_tok": s.moe.top_k,
            "moe_intermediate_size": s.moe.expert_size, "norm_topk_prob": s.moe.normalize_top_k,
            "output_router_logits": s.moe.router_aux_loss, "decoder_sparse_step": step,
            "mlp_only_layers": dense}


FAMILY = Family(MODEL_TYPE, DEFAULTS, KEYS, read, write)
