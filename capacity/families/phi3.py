"""Phi-3 and Phi-4 (transformers/models/phi3: Phi3Config, modeling_phi3.py).

Llama-like, with one fused q/k/v projection (`qkv_proj`, sliced into views) and one fused
gate/up projection (`gate_up_proj`, chunked into two views), a rotation that rebuilds q and
k with torch.cat (partial_rotary_factor of the head dim), dropout on each branch's output
(resid_pdrop), and, when `sliding_window` is set (2047 in the published Phi-3-mini-4k and
-medium-4k configs), a sliding window on every layer. No biases, an untied head.
"""

from __future__ import annotations

from dataclasses import replace

from ..architecture import Architecture, Attention, Mlp
from ..shape import ModelShape
from . import llama
from .config import HF_ACTIVATION, ConfigReader, Family

MODEL_TYPE = "phi3"

# Phi3Config's defaults for the keys read here (partial_rotary_factor: the default its
# convert_rope_params_to_dict sets).
DEFAULTS = {"vocab_size": 32064, "hidden_size": 3072, "intermediate_size": 8192,
            "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": None,
            "head_dim": None, "hidden_act": "silu", "max_position_embeddings": 4096,
            "resid_pdrop": 0.0, "attention_dropout": 0.0, "sliding_window": None,
            "pad_token_id": 32000, "tie_word_embeddings": False}
PARTIAL_ROTARY_FACTOR = 1.0

KEYS = {**llama.KEYS, "resid_dropout": "resid_pdrop"}


def architecture(activation: str, rotary_fraction: float) -> Architecture:
    """Phi3ForCausalLM: LlamaRMSNorm-like Phi3RMSNorm, qkv_proj and o_proj, gate_up_proj and
    down_proj; v is a view of the fused projection, which stays whole wherever v is kept."""
    arch = llama.architecture(activation)
    return replace(arch, attention=Attention(qkv=("qkv_proj",), out="o_proj"),
                   mlp=Mlp(inputs=("gate_up_proj",), out="down_proj", gated=True, activation=activation),
                   rotary_fraction=rotary_fraction, rotary_by_concat=True,
                   # The unrotated q and k are slices of the fused projection, which v keeps alive.
                   forward_keeps_unrotated_qk=True,
                   # Phi3Model returns its cache only with use_cache on.
                   output_cache_needs_use_cache=True)


def read(c: ConfigReader, name: str) -> ModelShape:
    window = c.optional_integer("sliding_window") or 0
    vocab = c.integer("vocab_size")
    pad = None if c.is_null("pad_token_id") else c.value("pad_token_id")
    if isinstance(pad, int) and not isinstance(pad, bool) and not -vocab <= pad < vocab:
        c.fail("pad_token_id", f"{pad} must be below vocab_size ({vocab}): transformers' embedding refuses it "
                               f"(set pad_token_id: null for a small vocabulary)")
    arch = architecture(c.activation("hidden_act"), c.rope_fraction("partial_rotary_factor", PARTIAL_ROTARY_FACTOR))
    shape = llama.read_llama_like(c, name, MODEL_TYPE, arch, windows=[window])
    return replace(shape, resid_dropout=c.probability("resid_pdrop"))


def write(s: ModelShape) -> dict:
    out = llama.write_llama_like(s)
    out.update(sliding_window=s.layers[0].sliding_window or None, resid_pdrop=s.resid_dropout,
               partial_rotary_factor=s.arch.rotary_fraction, pad_token_id=None,
               hidden_act=HF_ACTIVATION[s.arch.mlp.activation])
    return out


FAMILY = Family(MODEL_TYPE, DEFAULTS, KEYS, read, write)
