"""SmolLM3 (transformers/models/smollm3: SmolLM3Config, modeling_smollm3.py): a Llama whose
every no_rope_layer_interval-th layer applies no rotary embedding (SmolLM3Attention's
`use_rope = config.no_rope_layers[layer_idx]`), tied embeddings by default, and
sliding-window attention only in those NoPE layers, only with use_sliding_window.
(SmolLM2 is `llama`.) Its class default pad_token_id (128004) lies outside a vocabulary of
128004 tokens or fewer, which nn.Embedding refuses: a small config must set it null.
"""

from __future__ import annotations

from dataclasses import replace

from ..architecture import LayerKind
from ..shape import MAX_DIM, ModelShape, repeating_pattern
from . import llama
from .config import ConfigReader, Family, show, windows_from_layer_types

MODEL_TYPE = "smollm3"

# SmolLM3Config's defaults for the keys read here (head_dim is not a field of it: the model
# reads one from the config when present).
DEFAULTS = {"vocab_size": 128256, "hidden_size": 2048, "intermediate_size": 11008,
            "num_hidden_layers": 36, "num_attention_heads": 16, "num_key_value_heads": 4,
            "head_dim": None, "hidden_act": "silu", "max_position_embeddings": 32768,
            "attention_bias": False, "attention_dropout": 0.0, "mlp_bias": False,
            "tie_word_embeddings": True, "no_rope_layer_interval": 4, "use_sliding_window": False,
            "sliding_window": None}

KEYS = {**llama.KEYS, "layers": "no_rope_layers"}


def rope_layers(c: ConfigReader, layers: int) -> list[bool]:
    """Whether each layer applies RoPE: `no_rope_layers` (1: RoPE, 0: none) when given,
    else (SmolLM3Config.__post_init__) every layer but each no_rope_layer_interval-th. The
    derived list is periodic: one period (or one entry, if no layer drops RoPE) describes it."""
    given = c.cfg.get("no_rope_layers")
    if given is None:
        interval = c.integer("no_rope_layer_interval", high=MAX_DIM + 1)
        return [True] if interval > layers else [(i + 1) % interval != 0 for i in range(interval)]
    if not isinstance(given, list) or not all(type(x) in (int, bool) and x in (0, 1) for x in given):
        c.fail("no_rope_layers", f"expected a list of 0 and 1, one per layer, got {show(given)}")
    if len(given) != layers:
        c.fail("no_rope_layers", f"has {len(given)} entries for {layers} layers")
    return [bool(x) for x in given]


def kinds(c: ConfigReader, layers: int) -> tuple:
    """Each layer's kind: RoPE or not, and its sliding window (`layer_types` when given;
    else, with use_sliding_window and a window, the NoPE layers slide)."""
    ropes = rope_layers(c, layers)
    window = (c.optional_integer("sliding_window") or 0) if c.boolean("use_sliding_window") else 0
    windows = windows_from_layer_types(c, "layer_types", layers, window) \
        or [0 if rope else window for rope in ropes]
    n = max(len(ropes), len(windows))
    return repeating_pattern([LayerKind(sliding_window=windows[i % len(windows)],
                                        rope="global" if ropes[i % len(ropes)] else "") for i in range(n)])


def read(c: ConfigReader, name: str) -> ModelShape:
    bias = c.boolean("attention_bias")
    arch = llama.architecture(c.activation("hidden_act"), qkv_bias=bias, out_bias=bias,
                              mlp_bias=c.boolean("mlp_bias"))
    # The base model returns its cache only with use_cache on (Architecture.output_cache_needs_use_cache).
    arch = replace(arch, output_cache_needs_use_cache=True)
    return llama.read_llama_like(c, name, MODEL_TYPE, arch,
                                 kinds=kinds(c, c.integer("num_hidden_layers")))


def write(s: ModelShape) -> dict:
    """The layer kinds as SmolLM3Config derives them (no_rope_layer_interval) when they
    follow its rule, else one entry per layer (no_rope_layers, layer_types)."""
    out = {**llama.write_llama_like(s), "attention_bias": s.arch.attention.qkv_bias,
           "mlp_bias": s.arch.mlp.bias, "pad_token_id": None}
    period = len(s.layers)
    ropes = [bool(k.rope) for k in s.layers]
    derived = not any(k.sliding_window for k in s.layers) and (
        ropes == [True] or ropes == [True] * (period - 1) + [False] and s.num_layers >= period)
    if derived:
        out["no_rope_layer_interval"] = s.num_layers + 1 if ropes == [True] else period
        return out
    kinds_ = [s.layer_kind(i) for i in range(s.num_layers)]
    out["no_rope_layers"] = [1 if k.rope else 0 for k in kinds_]
    if any(k.sliding_window for k in kinds_):
        out.update(use_sliding_window=True, sliding_window=max(k.sliding_window for k in kinds_),
                   layer_types=["sliding_attention" if k.sliding_window else "full_attention" for k in kinds_])
    return out


FAMILY = Family(MODEL_TYPE, DEFAULTS, KEYS, read, write)
