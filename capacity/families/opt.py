"""OPT (transformers/models/opt: OPTConfig, modeling_opt.py)."""

from __future__ import annotations

from ..architecture import Architecture, Attention, Mlp, Norm
from ..shape import ModelShape
from .config import HF_ACTIVATION, ConfigReader, Family, head_dim_of

MODEL_TYPE = "opt"

# OPTConfig's defaults for the keys read here.
DEFAULTS = {"vocab_size": 50272, "hidden_size": 768, "num_hidden_layers": 12, "ffn_dim": 3072,
            "max_position_embeddings": 2048, "do_layer_norm_before": True,
            "_remove_final_layer_norm": False, "word_embed_proj_dim": None, "dropout": 0.1,
            "attention_dropout": 0.0, "num_attention_heads": 12, "activation_function": "relu",
            "enable_bias": True, "tie_word_embeddings": True}

KEYS = {"num_layers": "num_hidden_layers", "hidden_size": "hidden_size", "num_heads": "num_attention_heads",
        "num_kv_heads": "num_attention_heads", "intermediate_size": "ffn_dim", "vocab_size": "vocab_size",
        "max_positions": "max_position_embeddings", "word_embed_dim": "word_embed_proj_dim",
        "attn_dropout": "attention_dropout", "resid_dropout": "dropout"}


def architecture(activation: str, bias: bool, pre_norm: bool, final_norm: bool) -> Architecture:
    """OPTForCausalLM: LayerNorm blocks (normalising each branch's input, or the residual
    sum with do_layer_norm_before=false), a learned position table with 2 offset rows
    (OPTLearnedPositionalEmbedding), separate q, k, v projections."""
    return Architecture(
        norm=Norm("layernorm", bias=True),
        attention=Attention(qkv=("q_proj", "k_proj", "v_proj"), out="out_proj", qkv_bias=bias, out_bias=bias),
        mlp=Mlp(inputs=("fc1",), out="fc2", gated=False, activation=activation, bias=bias),
        norm_placement="pre" if pre_norm else "post",
        final_norm=final_norm,
        positions="learned", position_offset=2,
        # OPTDecoder.forward keeps pos_embeds, (b, s, h) from the attention mask, through the layers.
        forward_keeps_position_output="tokens",
        # OPTForCausalLM.model.decoder.final_layer_norm: not a direct child of OPTModel.
        final_norm_in_base_model=False,
    )


def read(c: ConfigReader, name: str) -> ModelShape:
    h, heads = c.integer("hidden_size"), c.integer("num_attention_heads")
    proj = c.optional_integer("word_embed_proj_dim")
    pre = c.boolean("do_layer_norm_before")
    bias = c.boolean("enable_bias")
    final = pre and not c.boolean("_remove_final_layer_norm")
    return ModelShape(
        model_type=MODEL_TYPE, num_layers=c.integer("num_hidden_layers"), hidden_size=h, num_heads=heads,
        num_kv_heads=heads, head_dim=head_dim_of(c, h, heads, "hidden_size", "num_attention_heads"),
        intermediate_size=c.integer("ffn_dim"), vocab_size=c.integer("vocab_size"),
        arch=architecture(c.activation("activation_function"), bias, pre, final),
        max_positions=c.integer("max_position_embeddings"),
        word_embed_dim=0 if proj is None or proj == h else proj,
        tie_embeddings=c.boolean("tie_word_embeddings"),
        attn_dropout=c.probability("attention_dropout"), resid_dropout=c.probability("dropout"), name=name)


def write(s: ModelShape) -> dict:
    pre = s.arch.norm_placement == "pre"
    return {"model_type": MODEL_TYPE, "vocab_size": s.vocab_size, "tie_word_embeddings": s.tie_embeddings,
            "hidden_size": s.hidden_size, "num_hidden_layers": s.num_layers,
            "num_attention_heads": s.num_heads, "ffn_dim": s.intermediate_size,
            "max_position_embeddings": s.max_positions, "word_embed_proj_dim": s.embed_dim,
            "do_layer_norm_before": pre, "_remove_final_layer_norm": pre and not s.arch.final_norm,
            "enable_bias": s.arch.attention.qkv_bias, "activation_function": HF_ACTIVATION[s.arch.mlp.activation],
            "dropout": s.resid_dropout, "attention_dropout": s.attn_dropout}


# peft's default LoRA targets for opt (peft/utils/constants.py).
LORA_TARGETS = ('q_proj', 'v_proj')

FAMILY = Family(MODEL_TYPE, DEFAULTS, KEYS, read, write, LORA_TARGETS)
