"""Reading a config.json by key, with types checked: the tools every family's reader uses.

`ConfigReader` gives typed access to the dict of a config.json, falling back to the
family's transformers defaults; every problem is a ValueError naming the config key and
showing the value briefly (never a 5000-digit number in full). `Family` is what a family
module exports.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from types import MappingProxyType
from typing import Callable, Mapping

from ..shape import MAX_DIM, ModelShape

# Hugging Face activation names (transformers.activations.ACT2CLS) -> the implementation
# whose saved tensors the memory model knows. Only names whose module is one of these:
# gelu_fast, quick_gelu and the like are Python composites of their own (refused).
ACTIVATION_NAMES = {
    "silu": "silu", "swish": "silu", "gelu": "gelu", "gelu_new": "gelu_new",
    "gelu_pytorch_tanh": "gelu_tanh", "relu": "relu",
}
# capacity's activation names -> the Hugging Face name that selects that implementation.
HF_ACTIVATION = {"silu": "silu", "gelu": "gelu", "gelu_new": "gelu_new",
                 "gelu_tanh": "gelu_pytorch_tanh", "relu": "relu"}

# Numbers beyond this are not sizes of anything; shown by their length, not in full.
_SHOWN_DIGITS = 15


@dataclass(frozen=True)
class Family:
    """One model family, as its module describes it.

    model_type: the config.json's `model_type`.
    defaults: the transformers configuration class's defaults for the keys `read` uses.
    keys: ModelShape field -> the config key it is read from (names a shape error by key).
    read: a ConfigReader of a config.json (and a display name) -> ModelShape.
    write: a ModelShape of this family -> the config.json dict that reads back to it.
    lora_targets: peft's default LoRA target modules for this model type
      (peft/utils/constants.py TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING, peft
      0.21.2); None where peft has none (it then asks for target_modules).
    """

    model_type: str
    defaults: Mapping[str, object]
    keys: Mapping[str, str]
    read: Callable[["ConfigReader", str], ModelShape]
    write: Callable[[ModelShape], dict]
    lora_targets: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "defaults", MappingProxyType(dict(self.defaults)))
        object.__setattr__(self, "keys", MappingProxyType(dict(self.keys)))


def show(value) -> str:
    """A config value, briefly: its type for lists and objects, its length for huge numbers."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        if abs(value) < 10**_SHOWN_DIGITS:
            return str(value)
        return f"a number of about {int(value.bit_length() * 0.30103) + 1} digits"
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, str):
        return repr(value if len(value) <= 40 else value[:40] + "...")
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


class ConfigReader:
    """Typed, by-key access to a config.json dict with the family's defaults.

    A key that is absent or null takes the default (transformers does the same for these
    keys). Every reader raises ValueError("config.json: <key>: ...") on a wrong type or range.
    """

    def __init__(self, cfg: dict, defaults: Mapping[str, object], prefix: str = ""):
        self.cfg = cfg
        self.defaults = defaults
        self.prefix = prefix   # names keys of a nested object ("rope_parameters.")

    def value(self, key: str):
        value = self.cfg.get(key)
        return self.defaults.get(key) if value is None else value

    def given(self, key: str) -> bool:
        """Whether the config itself sets `key` (to something other than null)."""
        return self.cfg.get(key) is not None

    def fail(self, key: str, problem: str):
        raise ValueError(f"config.json: {self.prefix}{key}: {problem}")

    def integer(self, key: str, low: int = 1, high: int = MAX_DIM) -> int:
        """A whole number in [low, high]; a float with a whole value (4096.0) is accepted."""
        value = self.value(key)
        if isinstance(value, float) and math.isfinite(value) and value.is_integer() and abs(value) < 2**63:
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int):
            self.fail(key, f"expected a whole number in [{low}, {high}], got {show(value)}")
        if not low <= value <= high:
            self.fail(key, f"must be in [{low}, {high}], got {show(value)}")
        return value

    def optional_integer(self, key: str, low: int = 1, high: int = MAX_DIM) -> int | None:
        """None when the key (and its default) is null, else as `integer`."""
        return None if self.value(key) is None else self.integer(key, low, high)

    def number(self, key: str, low: float, high: float, high_open: bool = False) -> float:
        """A finite number in [low, high] (or [low, high))."""
        value = self.value(key)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            self.fail(key, f"expected a number, got {show(value)}")
        if isinstance(value, int) and abs(value) >= 10**_SHOWN_DIGITS:
            self.fail(key, f"must be in [{low:g}, {high:g}{')' if high_open else ']'}, got {show(value)}")
        value = float(value)
        if not math.isfinite(value) or value < low or value > high or (high_open and value == high):
            self.fail(key, f"must be in [{low:g}, {high:g}{')' if high_open else ']'}, got {show(value)}")
        return value

    def is_null(self, key: str) -> bool:
        """Whether the config sets `key` to null. For the keys where transformers keeps an
        explicit null (no sliding window, no soft-capping), null is not the default."""
        return key in self.cfg and self.cfg[key] is None

    def nullable_number(self, key: str, low: float, high: float) -> float | None:
        """None when the config sets `key` to null (or it is absent with a null default), else
        a number in [low, high]: an explicit null keeps its meaning (transformers' fields whose
        None switches a mechanism off)."""
        if self.is_null(key) or self.value(key) is None:
            return None
        return self.number(key, low, high)

    def probability(self, key: str) -> float:
        """A dropout probability, in [0, 1)."""
        return self.number(key, 0.0, 1.0, high_open=True)

    def boolean(self, key: str) -> bool:
        value = self.value(key)
        if not isinstance(value, bool):
            self.fail(key, f"expected true or false, got {show(value)}")
        return value

    def text(self, key: str) -> str:
        value = self.value(key)
        if not isinstance(value, str):
            self.fail(key, f"expected a string, got {show(value)}")
        return value

    def activation(self, key: str, aliases: Mapping[str, str] | None = None) -> str:
        """An activation function's name, as capacity names its implementation."""
        name = self.text(key)
        name = (aliases or {}).get(name, name)
        if name not in ACTIVATION_NAMES:
            self.fail(key, f"activation {show(name)} is not supported; supported: "
                           f"{', '.join(sorted(ACTIVATION_NAMES))}")
        return ACTIVATION_NAMES[name]

    def mapping(self, key: str) -> dict | None:
        """A JSON object, or None when absent or null."""
        value = self.value(key)
        if value is not None and not isinstance(value, dict):
            self.fail(key, f"expected an object, got {show(value)}")
        return value

    def rope_fraction(self, legacy_key: str, default: float) -> float:
        """The rotated share of the head dim, as transformers 5 resolves it: the
        `partial_rotary_factor` of `rope_scaling` (when set) or else of `rope_parameters`,
        then the top-level `legacy_key`, then the class default
        (modeling_rope_utils.convert_rope_params_to_dict; GPTNeoXConfig's own)."""
        key = "rope_scaling" if self.mapping("rope_scaling") else "rope_parameters"
        params = self.mapping(key) or {}
        if params.get("partial_rotary_factor") is not None:
            return ConfigReader(params, {}, prefix=f"{key}.").number("partial_rotary_factor", 0.0, 1.0)
        if self.given(legacy_key):
            return self.number(legacy_key, 0.0, 1.0)
        return default


def first_given(c: ConfigReader, *keys: str) -> str:
    """The key to read a value that transformers takes under several names (a configuration
    class's attribute_map: MixtralConfig's num_experts and num_local_experts): the first of
    `keys` the config sets, in the order in which transformers lets them win; the last
    when it sets none (its default then applies)."""
    return next((key for key in keys if c.given(key)), keys[-1])


def head_dim_of(c: ConfigReader, hidden: int, heads: int, hidden_key: str, heads_key: str) -> int:
    """h / a, when a divides h."""
    if hidden % heads:
        c.fail(heads_key, f"{heads} must divide {hidden_key} ({hidden})")
    return hidden // heads


def windows_from_layer_types(c: ConfigReader, key: str, num_layers: int, sliding_window: int) -> list | None:
    """A config's `layer_types` list ("full_attention" / "sliding_attention" per layer), as
    window sizes per layer; None when the config has none."""
    types = c.cfg.get(key)
    if types is None:
        return None
    if not isinstance(types, list) or not all(isinstance(t, str) for t in types):
        c.fail(key, f"expected a list of layer type names, got {show(types)}")
    if len(types) != num_layers:
        c.fail(key, f"has {len(types)} entries for {num_layers} layers")
    known = {"full_attention": 0, "sliding_attention": sliding_window}
    for t in types:
        if t not in known:
            c.fail(key, f"layer type {show(t)} is not supported; supported: full_attention, sliding_attention")
    return [known[t] for t in types]
