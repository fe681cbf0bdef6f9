"""Read a Hugging Face `config.json` (a dict) into a `ModelShape`.

The config is read as data: no code in it is run, no `auto_map` is followed. The model's
family (capacity/families/, picked by `model_type`) reads the keys it needs, by name and
type, with the defaults of its `transformers` configuration class (checked against
`transformers` 5.x by tests/test_hf_config.py). Every problem is a ValueError naming the
config key.
"""

from __future__ import annotations

import json
from pathlib import Path

from .families import FAMILIES, MODEL_TYPES, ConfigReader, family, supported_text, text_model_config
from .families.config import show
from .shape import ModelShape, ShapeError

# A config.json larger than this is not a model config (real ones are a few KB).
MAX_CONFIG_BYTES = 1_000_000

# Integers longer than this cannot be read by Python's int() (sys.int_info.default_max_str_digits).
_MAX_INT_DIGITS = 4000

__all__ = ["MAX_CONFIG_BYTES", "MODEL_TYPES", "FAMILIES", "from_hf_config", "load_hf_config",
           "parse_hf_config_text", "read_hf_config_dict", "shape_to_hf_config"]


def from_hf_config(cfg: dict, name: str = "") -> ModelShape:
    """A `ModelShape` from the dict of a Hugging Face `config.json`.

    Raises ValueError naming the config key at fault for anything unsupported or malformed.
    """
    if not isinstance(cfg, dict):
        raise ValueError("config.json: expected a JSON object at the top level")
    given = cfg.get("_name_or_path")
    if cfg.get("quantization_config") is not None:
        _refuse_quantized()
    cfg, prefix = text_model_config(cfg)     # a multimodal config: its text model
    model_type = cfg.get("model_type")
    if not isinstance(model_type, str) or model_type not in FAMILIES:
        raise ValueError(f"config.json: model_type: {show(model_type)} is not supported; "
                         f"supported: {supported_text()}")
    fam = FAMILIES[model_type]
    if cfg.get("quantization_config") is not None:
        _refuse_quantized()
    name = name or (given[:200] if isinstance(given, str) and given else fam.model_type)
    if prefix:
        name = f"{name} (text model)"
    try:
        return fam.read(ConfigReader(cfg, fam.defaults, prefix=prefix), name)
    except ShapeError as err:
        raise ValueError(f"config.json: {prefix}{err.named(fam.keys)}") from None


def _refuse_quantized():
    raise ValueError("config.json: quantization_config: quantized base weights are not modelled by "
                     "the calculator yet (it would price them as 16-bit); remove the key to price the "
                     "unquantized model")


def shape_to_hf_config(s: ModelShape) -> dict:
    """The config.json dict of a shape's family: `from_hf_config` of it gives the shape back."""
    return family(s.model_type).write(s)


def read_hf_config_dict(path: str | Path) -> dict:
    """The dict of a config.json file (or of a folder holding one), read as data.
    ValueError naming the problem for a missing, oversized or malformed file."""
    p = Path(path)
    if not str(path):
        raise ValueError("config: an empty path")
    try:
        if p.is_dir():
            p = p / "config.json"
        if not p.is_file():
            raise ValueError(f"config: no file at {str(p)!r}")
        if p.stat().st_size > MAX_CONFIG_BYTES:
            raise ValueError(f"config: {p.name} is larger than {MAX_CONFIG_BYTES} bytes; not a model config")
        text = p.read_text(encoding="utf-8", errors="replace")
    except OSError as err:
        raise ValueError(f"config: cannot read {str(p)!r} ({err.strerror or type(err).__name__})") from None
    cfg = _parse_json(text)
    if not isinstance(cfg, dict):
        raise ValueError(f"config: {p.name} must hold a JSON object")
    return cfg


def load_hf_config(path: str | Path) -> ModelShape:
    """Read a config.json file (or a folder holding one) as data and return its shape."""
    cfg = read_hf_config_dict(path)
    p = Path(path)
    name = (p if p.is_dir() else p.parent).name or p.stem
    return from_hf_config(cfg, name=name)


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
        value = json.loads(text, parse_constant=_reject_constant, parse_int=_parse_int)
    except (json.JSONDecodeError, RecursionError) as err:
        raise ValueError(f"config.json: not valid JSON ({str(err)[:120]})") from None
    if isinstance(value, dict):
        for key, item in value.items():
            if isinstance(item, _LongInteger):
                raise ValueError(f"config.json: {str(key)[:60]}: a {item.digits}-digit number is not a valid value")
    if _holds_long_integer(value):
        raise ValueError("config.json: holds a number too long to read (more than "
                         f"{_MAX_INT_DIGITS} digits)")
    return value


class _LongInteger:
    """A JSON integer too long for int(): kept only to name its key in the message."""

    def __init__(self, digits: int):
        self.digits = digits


def _parse_int(text: str):
    digits = len(text.lstrip("-"))
    return _LongInteger(digits) if digits > _MAX_INT_DIGITS else int(text)


def _holds_long_integer(value) -> bool:
    """Whether a _LongInteger sits anywhere in the parsed JSON (walked without recursion)."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, _LongInteger):
            return True
        if isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return False


def _reject_constant(value: str):
    raise ValueError(f"config.json: {value} is not a valid number")
