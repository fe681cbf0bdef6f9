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

from . import gemma, gemma2, gemma3, gpt2, gpt_neox, granite, llama, mistral, mixtral, olmo2, olmoe, opt, phi, phi3, qwen2, qwen3, qwen3_moe, smollm3
from .config import ConfigReader, Family, show

FAMILIES: dict[str, Family] = {m.FAMILY.model_type: m.FAMILY
                               for m in (gpt2, opt, llama, mistral, qwen2, gemma, gpt_neox, phi,
                                         qwen3, olmo2, granite, smollm3, gemma2, gemma3, phi3, mixtral, qwen3_moe, olmoe)}

# The model types whose Hugging Face implementation the memory model describes.
MODEL_TYPES = tuple(FAMILIES)

# Multimodal config types whose text model is one of those: the config's model_type ->
# the text model's config (a dict of a type in FAMILIES). Only the text model is priced.
TEXT_CONFIG_WRAPPERS = {gemma3.WRAPPER_TYPE: gemma3.text_config}


def text_model_config(cfg: dict) -> tuple[dict, str]:
    """(config, key prefix): a config.json's own dict and "", or, for a multimodal config
    that wraps a supported text model (TEXT_CONFIG_WRAPPERS), the text model's config and
    "text_config." (errors name its keys so)."""
    unwrap = TEXT_CONFIG_WRAPPERS.get(cfg.get("model_type")) if isinstance(cfg.get("model_type"), str) else None
    return (unwrap(cfg), "text_config.") if unwrap else (cfg, "")


def family(model_type: str) -> Family:
    """The family of a config's `model_type`; ValueError listing the supported ones."""
    if not isinstance(model_type, str) or model_type not in FAMILIES:
        raise ValueError(f"model_type: {show(model_type)} is not supported; supported: {supported_text()}")
    return FAMILIES[model_type]


def supported_text() -> str:
    """The supported model types, as an error message lists them."""
    wrapped = [f"{w} (its text model)" for w in TEXT_CONFIG_WRAPPERS]
    return ", ".join([*MODEL_TYPES, *wrapped])


__all__ = ["FAMILIES", "MODEL_TYPES", "TEXT_CONFIG_WRAPPERS", "ConfigReader", "Family", "family",
           "supported_text", "text_model_config"]
