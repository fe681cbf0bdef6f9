"""Llama (transformers/models/llama: LlamaConfig, modeling_llama.py), and the reader that
the Llama-like families (Mistral, Qwen2, Gemma) share.

A Llama-like model: pre-RMSNorm blocks, separate q, k and v projections with rotary
positions and optional grouped-query attention, a gated MLP.
"""

from __future__ import annotations

from ..architecture import Architecture, Attention, LayerKind, Mlp, Norm
from ..shape import ModelShape, repeating_pattern
from .config import HF_ACTIVATION, ConfigReader, Family, head_dim_of

MODEL_TYPE = "llama"

# LlamaConfig's defaults for the keys read here.
DEFAULTS = {"vocab_size": 32000, "hidden_size": 4096, "intermediate_size": 11008,
            "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": None,
            "hidden_act": "silu", "max_position_embeddings": 2048, "attention_bias": False,
            "attention_dropout": 0.0, "mlp_bias": False, "head_dim": None, "tie_word_embeddings": False}

# The shape fields every Llama-like family reads, by config key.
KEYS = {"num_layers": "num_hidden_layers", "hidden_size": "hidden_size", "num_heads": "num_attention_heads",
        "num_kv_heads": "num_key_value_heads", "head_dim": "head_dim", "intermediate_size": "intermediate_size",
        "vocab_size": "vocab_size", "max_positions": "max_position_embeddings",
        "attn_dropout": "attention_dropout", "layers": "layer_types"}


def architecture(activation: str, qkv_bias: bool = False, out_bias: bool = False, mlp_bias: bool = False,
                 norm: Norm = Norm("rmsnorm"), embedding_scale: bool = False) -> Architecture:
    """LlamaForCausalLM and its kin: LlamaRMSNorm (fp32 inside, cast back to the dtype
    before the scale), q_proj/k_proj/v_proj/o_proj, gate_proj/up_proj/down_proj."""
    return Architecture(
        norm=norm,
        attention=Attention(qkv=("q_proj", "k_proj", "v_proj"), out="o_proj", qkv_bias=qkv_bias, out_bias=out_bias),
        mlp=Mlp(inputs=("gate_proj", "up_proj"), out="down_proj", gated=True, activation=activation, bias=mlp_bias),
        positions="rope",
        embedding_scale=embedding_scale,
    )


def read_llama_like(c: ConfigReader, name: str, model_type: str, arch: Architecture,
                    windows: list[int] | None = None, kinds: tuple | None = None) -> ModelShape:
    """The sizes of a Llama-like config: `head_dim` and `num_key_value_heads` default to
    h / a and a when absent or null (LlamaConfig.__post_init__). `windows`: each layer's
    sliding window (0: full attention), when the family has them; `kinds`: the pattern of
    layer kinds, when the family's layers differ in more than their windows."""
    h, heads = c.integer("hidden_size"), c.integer("num_attention_heads")
    kv = c.optional_integer("num_key_value_heads")
    head_dim = c.optional_integer("head_dim")
    layers = c.integer("num_hidden_layers")
    if kinds is None:
        kinds = (LayerKind(),) if windows is None else repeating_pattern([LayerKind(sliding_window=w) for w in windows])
    return ModelShape(
        model_type=model_type, num_layers=layers, hidden_size=h, num_heads=heads,
        num_kv_heads=heads if kv is None else kv,
        head_dim=head_dim_of(c, h, heads, "hidden_size", "num_attention_heads") if head_dim is None else head_dim,
        intermediate_size=c.integer("intermediate_size"), vocab_size=c.integer("vocab_size"),
        arch=arch, max_positions=c.integer("max_position_embeddings"), layers=kinds,
        tie_embeddings=c.boolean("tie_word_embeddings"), attn_dropout=c.probability("attention_dropout"),
        name=name)


def write_llama_like(s: ModelShape) -> dict:
    """The config keys every Llama-like family reads."""
    return {"model_type": s.model_type, "vocab_size": s.vocab_size, "tie_word_embeddings": s.tie_embeddings,
            "hidden_size": s.hidden_size, "intermediate_size": s.intermediate_size,
            "num_hidden_layers": s.num_layers, "num_attention_heads": s.num_heads,
            "num_key_value_heads": s.num_kv_heads, "head_dim": s.head_dim,
            "max_position_embeddings": s.max_positions, "attention_dropout": s.attn_dropout,
            "hidden_act": HF_ACTIVATION[s.arch.mlp.activation]}


def read(c: ConfigReader, name: str) -> ModelShape:
    bias = c.boolean("attention_bias")
    arch = architecture(c.activation("hidden_act"), qkv_bias=bias, out_bias=bias, mlp_bias=c.boolean("mlp_bias"))
    return read_llama_like(c, name, MODEL_TYPE, arch)


def write(s: ModelShape) -> dict:
    return {**write_llama_like(s), "attention_bias": s.arch.attention.qkv_bias, "mlp_bias": s.arch.mlp.bias}


# peft's default LoRA targets for llama (peft/utils/constants.py).
LORA_TARGETS = ('q_proj', 'v_proj')

FAMILY = Family(MODEL_TYPE, DEFAULTS, KEYS, read, write, LORA_TARGETS)
