"""Qwen2 and Qwen2.5 (transformers/models/qwen2: Qwen2Config, modeling_qwen2.py): Llama-like,
with biases on q, k and v only; sliding-window layers only with use_sliding_window."""

from __future__ import annotations

from dataclasses import replace

from ..shape import MAX_LAYER_PATTERN, ModelShape
from . import llama
from .config import ConfigReader, Family, windows_from_layer_types

MODEL_TYPE = "qwen2"

# Qwen2Config's defaults for the keys read here.
DEFAULTS = {"vocab_size": 151936, "hidden_size": 4096, "intermediate_size": 22016,
            "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 32,
            "hidden_act": "silu", "max_position_embeddings": 32768, "use_sliding_window": False,
            "sliding_window": 4096, "max_window_layers": 28, "attention_dropout": 0.0,
            "tie_word_embeddings": False}


def windows(c: ConfigReader, layers: int) -> list[int]:
    """Each layer's sliding window (0: full attention): `layer_types` when given, else
    (Qwen2Config.__post_init__) sliding from layer max_window_layers on when
    use_sliding_window is set; a sliding layer without a window attends fully."""
    window = (c.optional_integer("sliding_window") or 0) if c.boolean("use_sliding_window") else 0
    given = windows_from_layer_types(c, "layer_types", layers, window)
    if given is not None:
        return given
    if not window:
        return [0]
    first = c.integer("max_window_layers", low=0)
    if first == 0 or first >= layers:
        return [window if first == 0 else 0]
    if layers > MAX_LAYER_PATTERN:
        c.fail("num_hidden_layers", f"sliding-window layers after max_window_layers are supported "
                                    f"up to {MAX_LAYER_PATTERN} layers, got {layers}")
    return [0] * first + [window] * (layers - first)


def read(c: ConfigReader, name: str) -> ModelShape:
    # Qwen2Model builds the full causal mask whatever its layers are (causal_mask_mapping).
    # Qwen2Model builds the full causal mask whatever its layers are (causal_mask_mapping), and
    # returns its cache only with use_cache on (Architecture.output_cache_needs_use_cache).
    arch = replace(llama.architecture(c.activation("hidden_act"), qkv_bias=True), masks_always_built=("full",),
                   output_cache_needs_use_cache=True)
    layers = c.integer("num_hidden_layers")
    return llama.read_llama_like(c, name, MODEL_TYPE, arch, windows=windows(c, layers))


def write(s: ModelShape) -> dict:
    out = llama.write_llama_like(s)
    kinds = [s.layer_kind(i).sliding_window for i in range(s.num_layers)] if len(s.layers) > 1 \
        or s.layers[0].sliding_window else None
    if kinds is not None:
        out.update(use_sliding_window=True, sliding_window=max(kinds),
                   layer_types=["sliding_attention" if w else "full_attention" for w in kinds])
    return out


# peft's default LoRA targets for qwen2 (peft/utils/constants.py).
LORA_TARGETS = ('q_proj', 'v_proj')

FAMILY = Family(MODEL_TYPE, DEFAULTS, llama.KEYS, read, write, LORA_TARGETS)
