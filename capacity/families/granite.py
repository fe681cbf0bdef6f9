"""Granite 3 dense models (transformers/models/granite: GraniteConfig, modeling_granite.py):
a Llama with four scalar multipliers (architecture.Multipliers): the embeddings scaled by
embedding_multiplier, each branch by residual_multiplier before its residual add, the
scores by attention_multiplier (instead of 1/sqrt(head_dim)), the logits divided by
logits_scaling. Each multiplies by a Python float, which keeps nothing for backward: the
memory is Llama's (traced). The published configs set attention_dropout 0.1 (Granite
3.0/3.1), which is priced as Llama's attention dropout. (Granite MoE is `granitemoe`.)
"""

from __future__ import annotations

from dataclasses import replace

from ..architecture import Multipliers
from ..shape import ModelShape
from . import llama
from .config import ConfigReader, Family

MODEL_TYPE = "granite"

# GraniteConfig's defaults for the keys read here (head_dim is not a field of it: the model
# reads one from the config when present).
DEFAULTS = {"vocab_size": 32000, "hidden_size": 4096, "intermediate_size": 11008,
            "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": None,
            "head_dim": None, "hidden_act": "silu", "max_position_embeddings": 2048,
            "attention_bias": False, "attention_dropout": 0.0, "mlp_bias": False,
            "tie_word_embeddings": False, "embedding_multiplier": 1.0, "residual_multiplier": 1.0,
            "attention_multiplier": 1.0, "logits_scaling": 1.0}

MULTIPLIER_KEYS = {"embedding": "embedding_multiplier", "residual": "residual_multiplier",
                   "attention": "attention_multiplier", "logits": "logits_scaling"}


def read(c: ConfigReader, name: str) -> ModelShape:
    bias = c.boolean("attention_bias")
    arch = llama.architecture(c.activation("hidden_act"), qkv_bias=bias, out_bias=bias,
                              mlp_bias=c.boolean("mlp_bias"))
    # Finite factors >= 0; the logits are divided by logits_scaling, which must be > 0.
    multipliers = Multipliers(**{field: c.number(key, 1e-30 if field == "logits" else 0.0, 1e30)
                                 for field, key in MULTIPLIER_KEYS.items()})
    return llama.read_llama_like(c, name, MODEL_TYPE, replace(arch, multipliers=multipliers))


def write(s: ModelShape) -> dict:
    out = {**llama.write_llama_like(s), "attention_bias": s.arch.attention.qkv_bias, "mlp_bias": s.arch.mlp.bias}
    out.update({key: getattr(s.arch.multipliers, field) for field, key in MULTIPLIER_KEYS.items()})
    return out


FAMILY = Family(MODEL_TYPE, DEFAULTS, llama.KEYS, read, write)
