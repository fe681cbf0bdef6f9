"""GPT-NeoX and Pythia (transformers/models/gpt_neox: GPTNeoXConfig, modeling_gpt_neox.py)."""

from __future__ import annotations

from ..architecture import Architecture, Attention, Mlp, Norm
from ..shape import ModelShape
from .config import HF_ACTIVATION, ConfigReader, Family, head_dim_of

MODEL_TYPE = "gpt_neox"

# GPTNeoXConfig's defaults for the keys read here (rotary_pct: the default of its
# convert_rope_params_to_dict).
DEFAULTS = {"vocab_size": 50432, "hidden_size": 6144, "num_hidden_layers": 44,
            "num_attention_heads": 64, "intermediate_size": 24576, "hidden_act": "gelu",
            "max_position_embeddings": 2048, "attention_dropout": 0.0, "hidden_dropout": 0.0,
            "use_parallel_residual": True, "attention_bias": True, "tie_word_embeddings": False}
ROTARY_PCT = 0.25

KEYS = {"num_layers": "num_hidden_layers", "hidden_size": "hidden_size", "num_heads": "num_attention_heads",
        "num_kv_heads": "num_attention_heads", "intermediate_size": "intermediate_size",
        "vocab_size": "vocab_size", "max_positions": "max_position_embeddings",
        "attn_dropout": "attention_dropout", "resid_dropout": "hidden_dropout"}


def architecture(activation: str, attention_bias: bool, parallel: bool, rotary_fraction: float) -> Architecture:
    """GPTNeoXForCausalLM: LayerNorm blocks, parallel attention and MLP by default, q, k and
    v from one fused query_key_value, a partial rotation (rotary_pct of the head dim)."""
    return Architecture(
        norm=Norm("layernorm", bias=True),
        attention=Attention(qkv=("query_key_value",), out="dense", qkv_bias=attention_bias, out_bias=attention_bias),
        mlp=Mlp(inputs=("dense_h_to_4h",), out="dense_4h_to_h", gated=False, activation=activation, bias=True),
        parallel_residual=parallel,
        positions="rope", rotary_fraction=rotary_fraction, rotary_by_concat=True,
        # v stays a view of the fused projection (which holds q and k) beside the rotated q, k.
        forward_keeps_unrotated_qk=True,
    )


def read(c: ConfigReader, name: str) -> ModelShape:
    h, heads = c.integer("hidden_size"), c.integer("num_attention_heads")
    arch = architecture(c.activation("hidden_act"), c.boolean("attention_bias"),
                        c.boolean("use_parallel_residual"), c.rope_fraction("rotary_pct", ROTARY_PCT))
    return ModelShape(
        model_type=MODEL_TYPE, num_layers=c.integer("num_hidden_layers"), hidden_size=h, num_heads=heads,
        num_kv_heads=heads, head_dim=head_dim_of(c, h, heads, "hidden_size", "num_attention_heads"),
        intermediate_size=c.integer("intermediate_size"), vocab_size=c.integer("vocab_size"), arch=arch,
        max_positions=c.integer("max_position_embeddings"), tie_embeddings=c.boolean("tie_word_embeddings"),
        attn_dropout=c.probability("attention_dropout"), resid_dropout=c.probability("hidden_dropout"),
        name=name)


def write(s: ModelShape) -> dict:
    return {"model_type": MODEL_TYPE, "vocab_size": s.vocab_size, "tie_word_embeddings": s.tie_embeddings,
            "hidden_size": s.hidden_size, "num_hidden_layers": s.num_layers,
            "num_attention_heads": s.num_heads, "intermediate_size": s.intermediate_size,
            "hidden_act": HF_ACTIVATION[s.arch.mlp.activation], "rotary_pct": s.arch.rotary_fraction,
            "use_parallel_residual": s.arch.parallel_residual, "attention_bias": s.arch.attention.qkv_bias,
            "max_position_embeddings": s.max_positions,
            "attention_dropout": s.attn_dropout, "hidden_dropout": s.resid_dropout}


# peft's default LoRA targets for gpt_neox (peft/utils/constants.py).
LORA_TARGETS = ('query_key_value',)

FAMILY = Family(MODEL_TYPE, DEFAULTS, KEYS, read, write, LORA_TARGETS)
