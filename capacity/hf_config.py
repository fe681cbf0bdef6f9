"""Read a Hugging Face `config.json` (a dict) into a `ModelShape`.

The config is read as data: no code in it is run, no `auto_map` is followed. Missing
keys take the defaults of the matching `transformers` configuration class, listed in
`_DEFAULTS` (checked against `transformers` 5.x by tests/test_hf_config.py).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from .shape import MAX_DIM, MODEL_TYPES, ModelShape

# A config.json larger than this is not a model config (real ones are a few KB).
MAX_CONFIG_BYTES = 1_000_000

# Defaults of each transformers configuration class for the keys we read.
_DEFAULTS = {
    "gpt2": {"vocab_size": 50257, "n_positions": 1024, "n_embd": 768, "n_layer": 12, "n_head": 12,
             "n_inner": None, "activation_function": "gelu_new", "resid_pdrop": 0.1,
             "embd_pdrop": 0.1, "attn_pdrop": 0.1, "tie_word_embeddings": True},
    "opt": {"vocab_size": 50272, "hidden_size": 768, "num_hidden_layers": 12, "ffn_dim": 3072,
            "max_position_embeddings": 2048, "do_layer_norm_before": True,
            "_remove_final_layer_norm": False, "word_embed_proj_dim": None, "dropout": 0.1,
            "attention_dropout": 0.0, "num_attention_heads": 12, "activation_function": "relu",
            "enable_bias": True, "tie_word_embeddings": True},
    "llama": {"vocab_size": 32000, "hidden_size": 4096, "intermediate_size": 11008,
              "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": None,
              "hidden_act": "silu", "attention_bias": False, "attention_dropout": 0.0,
              "mlp_bias": False, "head_dim": None, "tie_word_embeddings": False},
    "mistral": {"vocab_size": 32000, "hidden_size": 4096, "intermediate_size": 14336,
                "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 8,
                "head_dim": None, "hidden_act": "silu", "attention_dropout": 0.0,
                "tie_word_embeddings": False},
    "qwen2": {"vocab_size": 151936, "hidden_size": 4096, "intermediate_size": 22016,
              "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 32,
              "hidden_act": "silu", "attention_dropout": 0.0, "tie_word_embeddings": False},
    "gemma": {"vocab_size": 256000, "hidden_size": 3072, "intermediate_size": 24576,
              "num_hidden_layers": 28, "num_attention_heads": 16, "num_key_value_heads": 16,
              "head_dim": 256, "hidden_activation": "gelu_pytorch_tanh", "attention_bias": False,
              "attention_dropout": 0.0, "tie_word_embeddings": True},
    "gpt_neox": {"vocab_size": 50432, "hidden_size": 6144, "num_hidden_layers": 44,
                 "num_attention_heads": 64, "intermediate_size": 24576, "hidden_act": "gelu",
                 "rotary_pct": 0.25, "attention_dropout": 0.0, "hidden_dropout": 0.0,
                 "use_parallel_residual": True, "attention_bias": True,
                 "tie_word_embeddings": False},
    "phi": {"vocab_size": 51200, "hidden_size": 2048, "intermediate_size": 8192,
            "num_hidden_layers": 24, "num_attention_heads": 32, "num_key_value_heads": None,
            "resid_pdrop": 0.0, "embd_pdrop": 0.0, "attention_dropout": 0.0,
            "hidden_act": "gelu_new", "partial_rotary_factor": 0.5, "qk_layernorm": False,
            "tie_word_embeddings": False},
}

# Hugging Face activation names -> the implementation whose saved tensors we model.
_ACTIVATION_NAMES = {
    "silu": "silu", "swish": "silu", "gelu": "gelu", "gelu_new": "gelu_new",
    "gelu_pytorch_tanh": "gelu_tanh", "gelu_fast": "gelu_tanh", "relu": "relu",
}


def _get(cfg: dict, defaults: dict, key: str):
    value = cfg.get(key, defaults.get(key))
    return defaults.get(key) if value is None and key in defaults else value


def _int(cfg: dict, defaults: dict, key: str, low: int = 1) -> int:
    value = _get(cfg, defaults, key)
    if isinstance(value, bool) or not isinstance(value, int):
        if isinstance(value, float) and value.is_integer() and math.isfinite(value):
            value = int(value)
        else:
            raise ValueError(f"config.json: {key}: expected a whole number, got {value!r}")
    if not low <= value <= MAX_DIM:
        raise ValueError(f"config.json: {key}: must be in [{low}, {MAX_DIM}], got {value}")
    return value


def _float(cfg: dict, defaults: dict, key: str) -> float:
    value = _get(cfg, defaults, key)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"config.json: {key}: expected a number, got {value!r}")
    return float(value)


def _bool(cfg: dict, defaults: dict, key: str) -> bool:
    value = _get(cfg, defaults, key)
    if not isinstance(value, bool):
        raise ValueError(f"config.json: {key}: expected true or false, got {value!r}")
    return value


def _activation(cfg: dict, defaults: dict, key: str) -> str:
    name = _get(cfg, defaults, key)
    if name not in _ACTIVATION_NAMES:
        raise ValueError(f"config.json: {key}: activation {name!r} is not supported; "
                         f"supported: {', '.join(sorted(_ACTIVATION_NAMES))}")
    return _ACTIVATION_NAMES[name]


def from_hf_config(cfg: dict, name: str = "") -> ModelShape:
    """A `ModelShape` from the dict of a Hugging Face `config.json`.

    Raises ValueError naming the key at fault for anything unsupported or malformed.
    """
    if not isinstance(cfg, dict):
        raise ValueError("config.json: expected a JSON object at the top level")
    model_type = cfg.get("model_type")
    if model_type not in MODEL_TYPES:
        raise ValueError(f"config.json: model_type {model_type!r} is not supported; "
                         f"supported: {', '.join(MODEL_TYPES)}")
    d = _DEFAULTS[model_type]
    name = name or str(cfg.get("_name_or_path") or model_type)[:200]
    if model_type == "gpt2":
        h = _int(cfg, d, "n_embd")
        heads = _int(cfg, d, "n_head")
        inner = cfg.get("n_inner")
        return ModelShape(
            model_type="gpt2", num_layers=_int(cfg, d, "n_layer"), hidden_size=h,
            num_heads=heads, num_kv_heads=heads, head_dim=_head_dim(h, heads),
            intermediate_size=4 * h if inner is None else _int(cfg, d, "n_inner"),
            vocab_size=_int(cfg, d, "vocab_size"), gated_mlp=False,
            activation=_activation(cfg, d, "activation_function"), norm="layernorm",
            norm_bias=True, qkv_bias=True, attn_out_bias=True, mlp_bias=True,
            tie_embeddings=_bool(cfg, d, "tie_word_embeddings"),
            learned_positions=_int(cfg, d, "n_positions"),
            attn_dropout=_float(cfg, d, "attn_pdrop"), resid_dropout=_float(cfg, d, "resid_pdrop"),
            embd_dropout=_float(cfg, d, "embd_pdrop"), name=name)
    if model_type == "opt":
        h = _int(cfg, d, "hidden_size")
        heads = _int(cfg, d, "num_attention_heads")
        bias = _bool(cfg, d, "enable_bias")
        proj = cfg.get("word_embed_proj_dim")
        proj = h if proj is None else _int(cfg, d, "word_embed_proj_dim")
        pre = _bool(cfg, d, "do_layer_norm_before")
        # OPT's learned position table has 2 extra rows (OPTLearnedPositionalEmbedding offset).
        return ModelShape(
            model_type="opt", num_layers=_int(cfg, d, "num_hidden_layers"), hidden_size=h,
            num_heads=heads, num_kv_heads=heads, head_dim=_head_dim(h, heads),
            intermediate_size=_int(cfg, d, "ffn_dim"), vocab_size=_int(cfg, d, "vocab_size"),
            gated_mlp=False, activation=_activation(cfg, d, "activation_function"),
            norm="layernorm", norm_bias=True, qkv_bias=bias, attn_out_bias=bias, mlp_bias=bias,
            tie_embeddings=_bool(cfg, d, "tie_word_embeddings"),
            learned_positions=_int(cfg, d, "max_position_embeddings") + 2,
            word_embed_dim=0 if proj == h else proj, pre_norm=pre,
            final_norm=pre and not _bool(cfg, d, "_remove_final_layer_norm"),
            attn_dropout=_float(cfg, d, "attention_dropout"), resid_dropout=_float(cfg, d, "dropout"),
            name=name)
    if model_type == "gpt_neox":
        h = _int(cfg, d, "hidden_size")
        heads = _int(cfg, d, "num_attention_heads")
        bias = _bool(cfg, d, "attention_bias")
        return ModelShape(
            model_type="gpt_neox", num_layers=_int(cfg, d, "num_hidden_layers"), hidden_size=h,
            num_heads=heads, num_kv_heads=heads, head_dim=_head_dim(h, heads),
            intermediate_size=_int(cfg, d, "intermediate_size"), vocab_size=_int(cfg, d, "vocab_size"),
            gated_mlp=False, activation=_activation(cfg, d, "hidden_act"), norm="layernorm",
            norm_bias=True, qkv_bias=bias, attn_out_bias=bias, mlp_bias=True,
            tie_embeddings=_bool(cfg, d, "tie_word_embeddings"),
            parallel_residual=_bool(cfg, d, "use_parallel_residual"),
            rotary_fraction=_float(cfg, d, "rotary_pct"),
            attn_dropout=_float(cfg, d, "attention_dropout"), resid_dropout=_float(cfg, d, "hidden_dropout"),
            name=name)
    if model_type == "phi":
        h = _int(cfg, d, "hidden_size")
        heads = _int(cfg, d, "num_attention_heads")
        kv = heads if cfg.get("num_key_value_heads") is None else _int(cfg, d, "num_key_value_heads")
        if _bool(cfg, d, "qk_layernorm"):
            raise ValueError("config.json: qk_layernorm: true is not supported (Phi with q/k LayerNorm)")
        return ModelShape(
            model_type="phi", num_layers=_int(cfg, d, "num_hidden_layers"), hidden_size=h,
            num_heads=heads, num_kv_heads=kv, head_dim=_head_dim(h, heads),
            intermediate_size=_int(cfg, d, "intermediate_size"), vocab_size=_int(cfg, d, "vocab_size"),
            gated_mlp=False, activation=_activation(cfg, d, "hidden_act"), norm="layernorm",
            norm_bias=True, qkv_bias=True, attn_out_bias=True, mlp_bias=True, lm_head_bias=True,
            tie_embeddings=_bool(cfg, d, "tie_word_embeddings"), parallel_residual=True,
            norms_per_layer=1, rotary_fraction=_float(cfg, d, "partial_rotary_factor"),
            attn_dropout=_float(cfg, d, "attention_dropout"), resid_dropout=_float(cfg, d, "resid_pdrop"),
            embd_dropout=_float(cfg, d, "embd_pdrop"), name=name)
    # llama, mistral, qwen2, gemma: pre-RMSNorm, gated MLP, rotary, optional GQA.
    h = _int(cfg, d, "hidden_size")
    heads = _int(cfg, d, "num_attention_heads")
    kv = heads if _get(cfg, d, "num_key_value_heads") is None else _int(cfg, d, "num_key_value_heads")
    head_dim = _int(cfg, d, "head_dim") if _get(cfg, d, "head_dim") is not None else _head_dim(h, heads)
    act_key = "hidden_activation" if model_type == "gemma" and cfg.get("hidden_activation") is not None \
        else ("hidden_activation" if model_type == "gemma" and cfg.get("hidden_act") is None else "hidden_act")
    if model_type == "qwen2":
        qkv_bias, out_bias, mlp_bias = True, False, False
    elif model_type == "mistral":
        qkv_bias = out_bias = mlp_bias = False
    else:
        qkv_bias = out_bias = _bool(cfg, d, "attention_bias")
        mlp_bias = _bool(cfg, d, "mlp_bias") if model_type == "llama" else False
    return ModelShape(
        model_type=model_type, num_layers=_int(cfg, d, "num_hidden_layers"), hidden_size=h,
        num_heads=heads, num_kv_heads=kv, head_dim=head_dim,
        intermediate_size=_int(cfg, d, "intermediate_size"), vocab_size=_int(cfg, d, "vocab_size"),
        gated_mlp=True, activation=_activation(cfg, d, act_key), norm="rmsnorm",
        qkv_bias=qkv_bias, attn_out_bias=out_bias, mlp_bias=mlp_bias,
        tie_embeddings=_bool(cfg, d, "tie_word_embeddings"),
        attn_dropout=_float(cfg, d, "attention_dropout"), name=name)


def _head_dim(hidden: int, heads: int) -> int:
    if hidden % heads:
        raise ValueError(f"config.json: num_attention_heads ({heads}) must divide the hidden size ({hidden})")
    return hidden // heads


def read_hf_config_dict(path: str | Path) -> dict:
    """The dict of a config.json file (or of a folder holding one), read as data.
    ValueError naming the problem for a missing, oversized or malformed file."""
    p = Path(path)
    if p.is_dir():
        p = p / "config.json"
    if not p.is_file():
        raise ValueError(f"config: no file at {str(p)!r}")
    if p.stat().st_size > MAX_CONFIG_BYTES:
        raise ValueError(f"config: {p.name} is larger than {MAX_CONFIG_BYTES} bytes; not a model config")
    cfg = _parse_json(p.read_text(encoding="utf-8", errors="replace"))
    if not isinstance(cfg, dict):
        raise ValueError(f"config: {p.name} must hold a JSON object")
    return cfg


def load_hf_config(path: str | Path) -> ModelShape:
    """Read a config.json file (or a folder holding one) as data and return its shape."""
    p = Path(path)
    name = (p if p.is_dir() else p.parent).name or p.stem
    return from_hf_config(read_hf_config_dict(p), name=name)


def parse_hf_config_text(text: str | bytes, name: str = "") -> ModelShape:
    """Parse the text of a config.json (e.g. an upload) into a shape."""
    if isinstance(text, bytes):
        if len(text) > MAX_CONFIG_BYTES:
            raise ValueError(f"config.json: larger than {MAX_CONFIG_BYTES} bytes; not a model config")
        text = text.decode("utf-8", errors="replace")
    if len(text) > MAX_CONFIG_BYTES:
        raise ValueError(f"config.json: larger than {MAX_CONFIG_BYTES} bytes; not a model config")
    return from_hf_config(_parse_json(text), name=name)


def _parse_json(text: str):
    try:
        return json.loads(text, parse_constant=_reject_constant)
    except (json.JSONDecodeError, RecursionError) as err:
        raise ValueError(f"config.json: not valid JSON ({str(err)[:120]})") from None


def _reject_constant(value: str):
    raise ValueError(f"config.json: {value} is not a valid number")
