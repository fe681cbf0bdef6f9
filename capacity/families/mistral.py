"""Mistral (transformers/models/mistral: MistralConfig, modeling_mistral.py): Llama-like,
no biases, a sliding window on every layer (4096 by default; null for none)."""

from __future__ import annotations

from dataclasses import replace

from ..shape import ModelShape
from . import llama
from .config import ConfigReader, Family

MODEL_TYPE = "mistral"

# MistralConfig's defaults for the keys read here.
DEFAULTS = {"vocab_size": 32000, "hidden_size": 4096, "intermediate_size": 14336,
            "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 8,
            "head_dim": None, "hidden_act": "silu", "max_position_embeddings": 4096 * 32,
            "sliding_window": 4096, "attention_dropout": 0.0, "tie_word_embeddings": False}


def read(c: ConfigReader, name: str) -> ModelShape:
    # `sliding_window: null` is full attention (the default applies only to an absent key).
    window = 0 if "sliding_window" in c.cfg and c.cfg["sliding_window"] is None \
        else c.integer("sliding_window")
    # The base model returns its cache only with use_cache on (Architecture.output_cache_needs_use_cache).
    arch = replace(llama.architecture(c.activation("hidden_act")), output_cache_needs_use_cache=True)
    return llama.read_llama_like(c, name, MODEL_TYPE, arch, windows=[window])


def write(s: ModelShape) -> dict:
    return {**llama.write_llama_like(s), "sliding_window": s.layers[0].sliding_window or None}


# peft's default LoRA targets for mistral (peft/utils/constants.py).
LORA_TARGETS = ('q_proj', 'v_proj')

FAMILY = Family(MODEL_TYPE, DEFAULTS, llama.KEYS, read, write, LORA_TARGETS)
