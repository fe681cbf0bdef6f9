"""Gemma 3's text model (transformers/models/gemma3: Gemma3TextConfig, Gemma3ForCausalLM in
modeling_gemma3.py), and the multimodal `gemma3` configs (Gemma3Config) whose `text_config`
holds it.

Gemma 2's layer (four fp32 norms, scaled embeddings, sliding-window and full layers), with
Gemma-style RMSNorms of q and k per head, five sliding layers to one full one by default,
and a rotary table per layer type (local θ for the sliding layers, global for the full
ones). Gemma3Attention never passes `attn_logit_softcapping` to the attention function:
the scores are not soft-capped, and SDPA runs. Gemma-3-1B is published as `gemma3_text`;
4B, 12B and 27B as multimodal `gemma3` configs: capacity reads their text model (the SigLIP
vision tower and its projector are not counted).
"""

from __future__ import annotations

from ..shape import ModelShape
from . import gemma2
from .config import ConfigReader, Family

MODEL_TYPE = "gemma3_text"

# Gemma3TextConfig's defaults for the keys read here (sliding_window_pattern: the keyword
# its __post_init__ reads, not a field).
DEFAULTS = {"vocab_size": 262208, "hidden_size": 2304, "intermediate_size": 9216,
            "num_hidden_layers": 26, "num_attention_heads": 8, "num_key_value_heads": 4,
            "head_dim": 256, "hidden_activation": "gelu_pytorch_tanh", "max_position_embeddings": 131072,
            "attention_bias": False, "attention_dropout": 0.0, "sliding_window": 4096,
            "sliding_window_pattern": 6, "final_logit_softcapping": None,
            "use_bidirectional_attention": False, "tie_word_embeddings": True}

# The multimodal config type whose `text_config` is a Gemma3TextConfig (Gemma3Config).
WRAPPER_TYPE = "gemma3"


def read(c: ConfigReader, name: str) -> ModelShape:
    pattern = c.integer("sliding_window_pattern")
    arch = gemma2.architecture(c.activation("hidden_activation"), c.boolean("attention_bias"),
                               attention_softcap=0.0, final_softcap=gemma2.softcap(c, "final_logit_softcapping"),
                               qk_norm="head", sdpa=True)
    return gemma2.read_gemma_like(c, name, MODEL_TYPE, arch, gemma2.layer_kinds(c, pattern, local_rope=True))


def write(s: ModelShape) -> dict:
    pattern = DEFAULTS["sliding_window_pattern"]
    return {**gemma2.write_gemma_like(s, pattern), "sliding_window_pattern": pattern}


def text_config(cfg: dict) -> dict:
    """The text model's config of a multimodal `gemma3` config: its `text_config` (keys it
    leaves out take Gemma3TextConfig's defaults), as a `gemma3_text` config."""
    text = cfg.get("text_config")
    if text is None:
        text = {}
    if not isinstance(text, dict):
        raise ValueError("config.json: text_config: expected an object (the text model's config)")
    return {**text, "model_type": MODEL_TYPE}


FAMILY = Family(MODEL_TYPE, DEFAULTS, gemma2.KEYS, read, write)
