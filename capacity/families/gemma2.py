"""Gemma 2 (transformers/models/gemma2: Gemma2Config, modeling_gemma2.py), and the reader
that Gemma 3's text model shares.

Llama-like, with Gemma's RMSNorm (all in fp32, scaled by 1 + w) four times per layer: before
and after each branch ("sandwich"); embeddings scaled by sqrt(h); a head dim set apart from
h / a; sliding-window and full-attention layers alternating; the attention scores
soft-capped (cap·tanh(scores / cap)) and the logits too. Gemma2PreTrainedModel sets
`_supports_sdpa = False`: transformers refuses attn_implementation="sdpa" for it, and
from_pretrained's default falls back to eager.
"""

from __future__ import annotations

from dataclasses import replace

from ..architecture import Architecture, Attention, LayerKind
from ..shape import ModelShape, repeating_pattern
from . import gemma, llama
from .config import HF_ACTIVATION, ConfigReader, Family, windows_from_layer_types

MODEL_TYPE = "gemma2"

# Gemma2Config's defaults for the keys read here.
DEFAULTS = {"vocab_size": 256000, "hidden_size": 2304, "intermediate_size": 9216,
            "num_hidden_layers": 26, "num_attention_heads": 8, "num_key_value_heads": 4,
            "head_dim": 256, "hidden_activation": "gelu_pytorch_tanh", "max_position_embeddings": 8192,
            "attention_bias": False, "attention_dropout": 0.0, "sliding_window": 4096,
            "attn_logit_softcapping": 50.0, "final_logit_softcapping": 30.0,
            "use_bidirectional_attention": None, "tie_word_embeddings": True}

KEYS = {**llama.KEYS, "layers": "layer_types"}

# Gemma2Config.__post_init__: without `layer_types`, layer i is sliding when (i + 1) % 2.
SLIDING_PATTERN = 2
# A soft-cap is a positive number; beyond this it is not a cap of anything.
MAX_SOFTCAP = 1e6


def architecture(activation: str, bias: bool, attention_softcap: float, final_softcap: float,
                 qk_norm: str = "", sdpa: bool = False) -> Architecture:
    """Gemma2ForCausalLM: Gemma's fp32 RMSNorm before and after each branch, q/k/v/o and
    gate/up/down projections, scaled embeddings, soft-capped scores and logits, both masks
    (full and sliding) built and held by the model's forward."""
    arch = llama.architecture(activation, qkv_bias=bias, out_bias=bias, norm=gemma.NORM, embedding_scale=True)
    return replace(arch, attention=replace(arch.attention, logit_softcap=attention_softcap, qk_norm=qk_norm, sdpa=sdpa),
                   norm_placement="sandwich", final_logit_softcap=final_softcap,
                   masks_always_built=("full", "sliding"))


def softcap(c: ConfigReader, key: str) -> float:
    """A soft-cap: 0 (none) when the config sets it to null."""
    return c.nullable_number(key, 1e-6, MAX_SOFTCAP) or 0.0


def layer_kinds(c: ConfigReader, pattern: int, local_rope: bool) -> tuple:
    """The kinds of the layers, as a repeating pattern: `layer_types` when given, else every
    `pattern`-th layer full attention and the others sliding (layer i is sliding when
    (i + 1) % pattern). Gemma 3's sliding layers use their own rotary table ("local")."""
    layers = c.integer("num_hidden_layers")
    if c.value("use_bidirectional_attention") is not None and c.boolean("use_bidirectional_attention"):
        c.fail("use_bidirectional_attention", "true is not supported (bidirectional attention)")
    if c.is_null("sliding_window"):
        c.fail("sliding_window", "null is refused by transformers (the model always builds the sliding-window mask)")
    window = c.integer("sliding_window")
    windows = windows_from_layer_types(c, "layer_types", layers, window)
    if windows is None:
        windows = [window if (i + 1) % pattern else 0 for i in range(min(layers, pattern))]
    rope = (lambda w: "local" if w else "global") if local_rope else (lambda w: "global")
    return repeating_pattern([LayerKind(sliding_window=w, rope=rope(w)) for w in windows])


def read_gemma_like(c: ConfigReader, name: str, model_type: str, arch: Architecture, layers: tuple) -> ModelShape:
    """Gemma 2 and Gemma 3's sizes: Llama's keys, with the transformers check that a divides
    h (Gemma2Config.validate_architecture, although the head dim is set apart)."""
    h, heads = c.integer("hidden_size"), c.integer("num_attention_heads")
    if h % heads:
        c.fail("num_attention_heads", f"{heads} must divide hidden_size ({h}) (transformers refuses it)")
    return replace(llama.read_llama_like(c, name, model_type, arch), layers=layers)


def write_gemma_like(s: ModelShape, pattern: int) -> dict:
    """The keys Gemma 2 and 3 read: `layer_types` only when the layers are not the default
    pattern (so that a deep model's config stays small)."""
    out = {**llama.write_llama_like(s), "attention_bias": s.arch.attention.qkv_bias,
           "hidden_activation": HF_ACTIVATION[s.arch.mlp.activation],
           "final_logit_softcapping": s.arch.final_logit_softcap or None}
    del out["hidden_act"]
    windows = {k.sliding_window for k in s.layers} - {0}
    window = windows.pop() if windows else DEFAULTS["sliding_window"]
    out["sliding_window"] = window
    default = [window if (i + 1) % pattern else 0 for i in range(min(s.num_layers, pattern))]
    if tuple(k.sliding_window for k in s.layers) != tuple(k.sliding_window for k in repeating_pattern(
            [LayerKind(sliding_window=w) for w in default])):
        out["layer_types"] = ["sliding_attention" if s.layer_kind(i).sliding_window else "full_attention"
                              for i in range(s.num_layers)]
    return out


def read(c: ConfigReader, name: str) -> ModelShape:
    # The MLP reads `hidden_activation`; a `hidden_act` key (in the published configs) is unused.
    arch = architecture(c.activation("hidden_activation"), c.boolean("attention_bias"),
                        softcap(c, "attn_logit_softcapping"), softcap(c, "final_logit_softcapping"))
    return read_gemma_like(c, name, MODEL_TYPE, arch, layer_kinds(c, SLIDING_PATTERN, local_rope=False))


def write(s: ModelShape) -> dict:
    return {**write_gemma_like(s, SLIDING_PATTERN),
            "attn_logit_softcapping": s.arch.attention.logit_softcap or None}


FAMILY = Family(MODEL_TYPE, DEFAULTS, KEYS, read, write)
