"""OLMoE (transformers/models/olmoe: OlmoeConfig, modeling_olmoe.py): a pre-norm Llama-like
decoder layer whose attention normalises q and k over the whole projections (q_norm
RMSNorm(hidden_size), k_norm RMSNorm((h / a)·a_kv), before the heads are split and RoPE
applied: OLMo 2's q/k norms) and whose MLP is a sparse mixture of experts
(OlmoeSparseMoeBlock): `num_experts` experts of width `intermediate_size`,
`num_experts_per_tok` per token, renormalised when `norm_topk_prob`. The head dim is
h / a (the norms' widths assume it). `clip_qkv` (an in-place clamp of q, k and v) is
refused while it is not modelled."""

from __future__ import annotations

from dataclasses import replace

from ..architecture import LayerKind, Moe
from ..shape import ModelShape
from . import llama
from .config import ConfigReader, Family, first_given, head_dim_of, show

MODEL_TYPE = "olmoe"

# OlmoeConfig's defaults for the keys read here.
DEFAULTS = {"vocab_size": 50304, "hidden_size": 2048, "intermediate_size": 2048,
            "num_hidden_layers": 16, "num_attention_heads": 16, "num_key_value_heads": None,
            "hidden_act": "silu", "max_position_embeddings": 4096, "attention_bias": False,
            "attention_dropout": 0.0, "tie_word_embeddings": False, "clip_qkv": None,
            "num_experts_per_tok": 8, "num_experts": 64, "num_local_experts": 64,
            "norm_topk_prob": False, "output_router_logits": False}

KEYS = {**llama.KEYS, "moe.experts": "num_experts", "moe.top_k": "num_experts_per_tok",
        "moe.expert_size": "intermediate_size"}


def read(c: ConfigReader, name: str) -> ModelShape:
    if c.value("clip_qkv") is not None:
        c.fail("clip_qkv", "clamping q, k and v in place is not modelled yet; use null")
    bias = c.boolean("attention_bias")
    arch = llama.architecture(c.activation("hidden_act"), qkv_bias=bias, out_bias=bias)
    arch = replace(arch, attention=replace(arch.attention, qk_norm="projection"))
    h, heads = c.integer("hidden_size"), c.integer("num_attention_heads")
    d = head_dim_of(c, h, heads, "hidden_size", "num_attention_heads")
    if c.given("head_dim") and c.value("head_dim") != d:
        c.fail("head_dim", f"OLMoE's q_norm spans hidden_size, so the head dim is hidden_size / "
                           f"num_attention_heads ({d}); got {show(c.value('head_dim'))}")
    shape = llama.read_llama_like(c, name, MODEL_TYPE, arch)
    experts = c.integer(first_given(c, "num_local_experts", "num_experts"))
    moe = Moe(experts=experts, top_k=c.integer("num_experts_per_tok", high=experts),
              expert_size=c.integer("intermediate_size"), router_aux_loss=c.boolean("output_router_logits"),
              normalize_top_k=c.boolean("norm_topk_prob"), weights_fp32=False)
    return replace(shape, moe=moe, layers=(LayerKind(moe=True),))


def write(s: ModelShape) -> dict:
    out = llama.write_llama_like(s)
    del out["head_dim"]
    return {**out, "attention_bias": s.arch.attention.qkv_bias, "intermediate_size": s.moe.expert_size,
            "num_experts": s.moe.experts, "num_experts_per_tok": s.moe.top_k,
            "norm_topk_prob": s.moe.normalize_top_k, "output_router_logits": s.moe.router_aux_loss}


FAMILY = Family(MODEL_TYPE, DEFAULTS, KEYS, read, write)
