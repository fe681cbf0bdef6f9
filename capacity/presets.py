"""Model and device presets, kept as JSON data in capacity/data/."""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from .hf_config import from_hf_config
from .shape import ModelShape

_DATA = Path(__file__).parent / "data"


@lru_cache(maxsize=None)
def _models() -> dict:
    return json.loads((_DATA / "models.json").read_text())["models"]


def preset_names() -> list[str]:
    return list(_models())


def preset_config(name: str) -> dict:
    """The Hugging Face config dict of a preset."""
    if name not in _models():
        raise ValueError(f"preset: unknown model {name!r}; run `python -m capacity presets` for the list")
    return dict(_models()[name]["config"])


def preset_family(name: str) -> str:
    preset_config(name)
    return _models()[name]["family"]


def load_preset(name: str) -> ModelShape:
    """A preset's shape (frozen, so read once and shared)."""
    preset_config(name)              # the unknown-name message
    return _preset_shape(name)


@lru_cache(maxsize=None)
def _preset_shape(name: str) -> ModelShape:
    return from_hf_config(preset_config(name), name=name)


def families() -> dict[str, list[str]]:
    """Family name -> its presets, smallest first (by parameter count). A new dict each call
    (the order itself is worked out once)."""
    return {family: list(names) for family, names in _family_order()}


@lru_cache(maxsize=None)
def _family_order() -> tuple[tuple[str, tuple[str, ...]], ...]:
    from .params import parameter_count
    out: dict[str, list[str]] = {}
    for name, entry in _models().items():
        out.setdefault(entry["family"], []).append(name)
    return tuple((f, tuple(sorted(names, key=lambda n: parameter_count(load_preset(n))))) for f, names in out.items())


def find_family(text: str) -> str:
    """A family's name as the presets spell it, matched without regard to case ('opt' -> 'OPT')."""
    names = {name.lower(): name for name in families()}
    if not isinstance(text, str) or text.lower() not in names:
        raise ValueError(f"family: unknown {text!r}; known: {', '.join(families())}")
    return names[text.lower()]


@dataclass(frozen=True)
class Device:
    """A memory budget with the throughput figures the time model needs.

    os_reserve_bytes: what the OS and runtime keep of a unified-memory device's pool (a
    Jetson, a phone, an Apple chip share it between CPU and GPU), with its source; 0 for a
    discrete GPU. usable_memory_bytes is what is left for the training step.
    """
    name: str
    memory_bytes: int
    peak_flops: float          # dense 16-bit matrix FLOP/s (vendor datasheet)
    bandwidth_bytes_s: float   # memory bandwidth, bytes/s (vendor datasheet)
    source: str = ""
    os_reserve_bytes: int = 0
    os_reserve_source: str = ""

    @property
    def usable_memory_bytes(self) -> int:
        return self.memory_bytes - self.os_reserve_bytes


@lru_cache(maxsize=None)
def _devices() -> dict:
    return json.loads((_DATA / "devices.json").read_text())["devices"]


def device_names() -> list[str]:
    return list(_devices())


def load_device(name: str) -> Device:
    if name not in _devices():
        raise ValueError(f"device: unknown device {name!r}; known: {', '.join(_devices())}")
    d = _devices()[name]
    return Device(name=name, memory_bytes=int(d["memory_bytes"]), peak_flops=float(d["peak_flops"]),
                  bandwidth_bytes_s=float(d["bandwidth_bytes_s"]), source=d.get("source", ""),
                  os_reserve_bytes=int(d.get("os_reserve_bytes", 0)), os_reserve_source=d.get("os_reserve_source", ""))
