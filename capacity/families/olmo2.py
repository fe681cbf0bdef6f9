"""OLMo 2 (transformers/models/olmo2: Olmo2Config, modeling_olmo2.py): Llama-like
projections and MLP, with

- norms only on the branch outputs (Olmo2DecoderLayer: `x + post_attention_layernorm(attn(x))`,
  then `h + post_feedforward_layernorm(mlp(h))`; no input_layernorm): norm_placement
  "branch_out";
- Olmo2RMSNorm, whose scale runs in fp32 (`(self.weight * x).to(input_dtype)`);
- an RMSNorm of q and of k over the whole projection (q_norm = RMSNorm(a·d),
  k_norm = RMSNorm(a_kv·d)): qk_norm "projection";
- cos/sin tables kept in fp32 (Olmo2RotaryEmbedding.forward returns them without a cast),
  the rotation in fp32 and cast back to q's and k's dtype: rotary_fp32;
- a head_dim read from the config when given (`getattr(config, "head_dim", h // a)`).
"""

from __future__ import annotations

from dataclasses import replace

from ..architecture import Norm
from ..shape import ModelShape
from . import llama
from .config import ConfigReader, Family

MODEL_TYPE = "olmo2"

# Olmo2Config's defaults for the keys read here (head_dim is not a field of it: the model
# reads one from the config when present).
DEFAULTS = {"vocab_size": 50304, "hidden_size": 4096, "intermediate_size": 11008,
            "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": None,
            "head_dim": None, "hidden_act": "silu", "max_position_embeddings": 2048,
            "attention_bias": False, "attention_dropout": 0.0, "tie_word_embeddings": False}

NORM = Norm("rmsnorm", scale_in_fp32=True)


def read(c: ConfigReader, name: str) -> ModelShape:
    bias = c.boolean("attention_bias")
    arch = llama.architecture(c.activation("hidden_act"), qkv_bias=bias, out_bias=bias, norm=NORM)
    arch = replace(arch, attention=replace(arch.attention, qk_norm="projection"),
                   norm_placement="branch_out", rotary_fp32=True)
    return llama.read_llama_like(c, name, MODEL_TYPE, arch)


def write(s: ModelShape) -> dict:
    return {**llama.write_llama_like(s), "attention_bias": s.arch.attention.qkv_bias}


FAMILY = Family(MODEL_TYPE, DEFAULTS, llama.KEYS, read, write)
