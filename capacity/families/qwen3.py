"""Qwen3 (transformers/models/qwen3: Qwen3Config, modeling_qwen3.py): Llama-like, with an
RMSNorm of q and of k per head (Qwen3Attention's q_norm and k_norm, RMSNorm(head_dim),
applied to the (b, s, heads, head_dim) view of each projection before the rotation), a
head_dim of its own (128 by default: Qwen3-0.6B has a·d = 2h), a bias on q, k, v and o
with attention_bias, and sliding-window layers only with use_sliding_window (as Qwen2).
"""

from __future__ import annotations

from dataclasses import replace

from ..shape import ModelShape
from . import llama, qwen2
from .config import ConfigReader, Family

MODEL_TYPE = "qwen3"

# Qwen3Config's defaults for the keys read here.
DEFAULTS = {"vocab_size": 151936, "hidden_size": 4096, "intermediate_size": 22016,
            "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 32,
            "head_dim": 128, "hidden_act": "silu", "max_position_embeddings": 32768,
            "attention_bias": False, "use_sliding_window": False, "sliding_window": 4096,
            "max_window_layers": 28, "attention_dropout": 0.0, "tie_word_embeddings": False}


def read(c: ConfigReader, name: str) -> ModelShape:
    bias = c.boolean("attention_bias")
    arch = llama.architecture(c.activation("hidden_act"), qkv_bias=bias, out_bias=bias)
    arch = replace(arch, attention=replace(arch.attention, qk_norm="head"),
                   output_cache_needs_use_cache=True)   # Qwen3Model: `past_key_values if use_cache else None`
    layers = c.integer("num_hidden_layers")
    return llama.read_llama_like(c, name, MODEL_TYPE, arch, windows=qwen2.windows(c, layers))


def write(s: ModelShape) -> dict:
    return {**qwen2.write(s), "attention_bias": s.arch.attention.qkv_bias}


# peft's default LoRA targets for the model type (peft/utils/constants.py).
LORA_TARGETS = ('q_proj', 'v_proj')

FAMILY = Family(MODEL_TYPE, DEFAULTS, llama.KEYS, read, write, LORA_TARGETS)
