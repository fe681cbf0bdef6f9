"""The model families capacity knows, one module each.

A family module holds everything that differs between families, in one place:
  DEFAULTS        the transformers configuration class's defaults for the keys it reads,
  architecture()  the description of its mechanism as data (an `Architecture`, see
                  capacity/architecture.py), from the config values it depends on,
  read()          config.json (a ConfigReader over it) -> ModelShape,
  write()         ModelShape -> config.json dict (the validation engine builds the model
                  from it; read(write(shape)) == shape),
and exports them as FAMILY. The shared memory model never asks which family it is.
docs/families.md is the checklist for adding one.
"""

from __future__ import annotations

from . import gemma, gpt2, gpt_neox, granite, llama, mistral, mixtral, olmo2, olmoe, opt, phi, qwen2, qwen3, qwen3_moe, smollm3
from .config import ConfigReader, Family, show

FAMILIES: dict[str, Family] = {m.FAMILY.model_type: m.FAMILY
                               for m in (gpt2, opt, llama, mistral, qwen2, gemma, gpt_neox, phi,
                                         qwen3, olmo2, granite, smollm3, mixtral, qwen3_moe, olmoe)}

# The model types whose Hugging Face implementation the memory model describes.
MODEL_TYPES = tuple(FAMILIES)


def family(model_type: str) -> Family:
    """The family of a config's `model_type`; ValueError listing the supported ones."""
    if not isinstance(model_type, str) or model_type not in FAMILIES:
        raise ValueError(f"model_type: {show(model_type)} is not supported; supported: {', '.join(MODEL_TYPES)}")
    return FAMILIES[model_type]


__all__ = ["FAMILIES", "MODEL_TYPES", "ConfigReader", "Family", "family"]
