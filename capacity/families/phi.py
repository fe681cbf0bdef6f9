"""Phi-1, Phi-1.5 and Phi-2 (transformers/models/phi: PhiConfig, modeling_phi.py)."""

from __future__ import annotations

from ..architecture import Architecture, Attention, Mlp, Norm
from ..shape import ModelShape
from .config import HF_ACTIVATION, ConfigReader, Family, head_dim_of

MODEL_TYPE = "phi"

# PhiConfig's defaults for the keys read here (partial_rotary_factor: its __post_init__'s).
DEFAULTS = {"vocab_size": 51200, "hidden_size": 2048, "intermediate_size": 8192,
            "num_hidden_layers": 24, "num_attention_heads": 32, "num_key_value_heads": None,
            "resid_pdrop": 0.0, "embd_pdrop": 0.0, "attention_dropout": 0.0,
            "hidden_act": "gelu_new", "max_position_embeddings": 2048, "qk_layernorm": False,
            "tie_word_embeddings": False}
PARTIAL_ROTARY_FACTOR = 0.5

KEYS = {"num_layers": "num_hidden_layers", "hidden_size": "hidden_size", "num_heads": "num_attention_heads",
        "num_kv_heads": "num_key_value_heads", "intermediate_size": "intermediate_size",
        "vocab_size": "vocab_size", "max_positions": "max_position_embeddings",
        "attn_dropout": "attention_dropout", "resid_dropout": "resid_pdrop", "embd_dropout": "embd_pdrop"}


def architecture(activation: str, rotary_fraction: float) -> Architecture:
    """PhiForCausalLM: one LayerNorm feeding parallel attention and MLP, separate q, k, v
    projections (dense: the output), fc1/fc2, an LM head with a bias, a partial rotation."""
    return Architecture(
        norm=Norm("layernorm", bias=True),
        attention=Attention(qkv=("q_proj", "k_proj", "v_proj"), out="dense", qkv_bias=True, out_bias=True),
        mlp=Mlp(inputs=("fc1",), out="fc2", gated=False, activation=activation, bias=True),
        parallel_residual=True, shared_norm=True,
        positions="rope", rotary_fraction=rotary_fraction, rotary_by_concat=True,
        lm_head_bias=True,
        # PhiAttention keeps query_pass and key_pass, views of q and k, through the attention.
        forward_keeps_unrotated_qk=0 < rotary_fraction < 1,
    )


def read(c: ConfigReader, name: str) -> ModelShape:
    h, heads = c.integer("hidden_size"), c.integer("num_attention_heads")
    kv = c.optional_integer("num_key_value_heads")
    if c.boolean("qk_layernorm"):
        c.fail("qk_layernorm", "true is not supported (Phi with q/k LayerNorm)")
    arch = architecture(c.activation("hidden_act"), c.rope_fraction("partial_rotary_factor", PARTIAL_ROTARY_FACTOR))
    return ModelShape(
        model_type=MODEL_TYPE, num_layers=c.integer("num_hidden_layers"), hidden_size=h, num_heads=heads,
        num_kv_heads=heads if kv is None else kv,
        head_dim=head_dim_of(c, h, heads, "hidden_size", "num_attention_heads"),
        intermediate_size=c.integer("intermediate_size"), vocab_size=c.integer("vocab_size"), arch=arch,
        max_positions=c.integer("max_position_embeddings"), tie_embeddings=c.boolean("tie_word_embeddings"),
        attn_dropout=c.probability("attention_dropout"), resid_dropout=c.probability("resid_pdrop"),
        embd_dropout=c.probability("embd_pdrop"), name=name)


def write(s: ModelShape) -> dict:
    return {"model_type": MODEL_TYPE, "vocab_size": s.vocab_size, "tie_word_embeddings": s.tie_embeddings,
            "hidden_size": s.hidden_size, "num_hidden_layers": s.num_layers,
            "num_attention_heads": s.num_heads, "num_key_value_heads": s.num_kv_heads,
            "intermediate_size": s.intermediate_size, "hidden_act": HF_ACTIVATION[s.arch.mlp.activation],
            "partial_rotary_factor": s.arch.rotary_fraction, "qk_layernorm": False,
            "max_position_embeddings": s.max_positions, "resid_pdrop": s.resid_dropout,
            "embd_pdrop": s.embd_dropout, "attention_dropout": s.attn_dropout}


# peft's default LoRA targets for phi (peft/utils/constants.py).
LORA_TARGETS = ('q_proj', 'v_proj', 'fc1', 'fc2')

FAMILY = Family(MODEL_TYPE, DEFAULTS, KEYS, read, write, LORA_TARGETS)
