"""GPT-2 (transformers/models/gpt2: GPT2Config, modeling_gpt2.py)."""

from __future__ import annotations

from ..architecture import Architecture, Attention, Mlp, Norm
from ..shape import ModelShape
from .config import HF_ACTIVATION, ConfigReader, Family, head_dim_of

MODEL_TYPE = "gpt2"

# GPT2Config's defaults for the keys read here.
DEFAULTS = {"vocab_size": 50257, "n_positions": 1024, "n_embd": 768, "n_layer": 12, "n_head": 12,
            "n_inner": None, "activation_function": "gelu_new", "resid_pdrop": 0.1,
            "embd_pdrop": 0.1, "attn_pdrop": 0.1, "tie_word_embeddings": True}

KEYS = {"num_layers": "n_layer", "hidden_size": "n_embd", "num_heads": "n_head", "num_kv_heads": "n_head",
        "intermediate_size": "n_inner", "vocab_size": "vocab_size", "max_positions": "n_positions",
        "attn_dropout": "attn_pdrop", "resid_dropout": "resid_pdrop", "embd_dropout": "embd_pdrop"}


def architecture(activation: str) -> Architecture:
    """GPT2LMHeadModel: pre-LayerNorm blocks, a learned position table (wpe), Conv1D
    projections with biases, q, k and v from one fused c_attn."""
    return Architecture(
        norm=Norm("layernorm", bias=True),
        # GPT2Attention's eager path runs the softmax in the input dtype.
        attention=Attention(qkv=("c_attn",), out="c_proj", qkv_bias=True, out_bias=True,
                            softmax_fp32=False),
        mlp=Mlp(inputs=("c_fc",), out="c_proj", gated=False, activation=activation, bias=True),
        positions="learned",
        # GPT2Model.forward keeps position_embeds, (1, s, h), through the layer loop;
        # GPT2Block keeps attn_output after the residual sum, through the MLP.
        forward_keeps_position_output="seq",
        forward_keeps_attention_output=True,
        # Conv1D stores its weight as (in, out).
        transposed_weights=True,
        # GPT2Model returns its cache only with use_cache on.
        output_cache_needs_use_cache=True,
    )


def read(c: ConfigReader, name: str) -> ModelShape:
    h, heads = c.integer("n_embd"), c.integer("n_head")
    inner = c.optional_integer("n_inner")
    return ModelShape(
        model_type=MODEL_TYPE, num_layers=c.integer("n_layer"), hidden_size=h, num_heads=heads,
        num_kv_heads=heads, head_dim=head_dim_of(c, h, heads, "n_embd", "n_head"),
        intermediate_size=4 * h if inner is None else inner, vocab_size=c.integer("vocab_size"),
        arch=architecture(c.activation("activation_function")), max_positions=c.integer("n_positions"),
        tie_embeddings=c.boolean("tie_word_embeddings"), attn_dropout=c.probability("attn_pdrop"),
        resid_dropout=c.probability("resid_pdrop"), embd_dropout=c.probability("embd_pdrop"), name=name)


def write(s: ModelShape) -> dict:
    return {"model_type": MODEL_TYPE, "vocab_size": s.vocab_size, "tie_word_embeddings": s.tie_embeddings,
            "n_embd": s.hidden_size, "n_layer": s.num_layers, "n_head": s.num_heads,
            "n_inner": s.intermediate_size, "n_positions": s.max_positions,
            "activation_function": HF_ACTIVATION[s.arch.mlp.activation], "resid_pdrop": s.resid_dropout,
            "embd_pdrop": s.embd_dropout, "attn_pdrop": s.attn_dropout}


# peft's default LoRA targets for gpt2 (peft/utils/constants.py).
LORA_TARGETS = ('c_attn',)

FAMILY = Family(MODEL_TYPE, DEFAULTS, KEYS, read, write, LORA_TARGETS)
