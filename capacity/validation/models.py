"""Build the Hugging Face causal LM that a validation run fine-tunes.

Three sources, none of which downloads anything or runs code from a config:
  * a Hugging Face config dict (a preset's, or a user's config.json),
  * a capacity `ModelShape` (turned back into the config dict of its family:
    capacity.hf_config.shape_to_hf_config, each family's `write`),
  * a local folder (`--model-dir`) holding config.json and, optionally, weights.

The model is built directly in its target dtype (`from_config(cfg, dtype=...)`): under
FakeTensorMode a `.to(dtype)` after construction fails, and building in fp32 first would
double the host memory for nothing.
"""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM
from transformers.modeling_layers import GradientCheckpointingLayer

from ..hf_config import from_hf_config, read_hf_config_dict, shape_to_hf_config
from ..shape import ModelShape

TORCH_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


class ModelDirError(Exception):
    """The --model-dir folder is missing or unreadable (exit code 4)."""


def hf_config(cfg: dict):
    """A transformers configuration object from a config dict, without remote code:
    the class is picked by `model_type` among transformers' own classes."""
    cfg = dict(cfg)
    for key in ("auto_map", "architectures", "torch_dtype", "dtype", "quantization_config"):
        cfg.pop(key, None)   # code references and load-time settings play no part here
    model_type = cfg.pop("model_type")
    return AutoConfig.for_model(model_type, **cfg)


def resolve_model(source) -> tuple[ModelShape, dict]:
    """(shape, config dict) from a ModelShape, a preset name, a config dict or a config.json path.

    Raises ValueError for anything malformed or unsupported.
    """
    from ..presets import preset_config, preset_names
    if isinstance(source, ModelShape):
        if source.name in preset_names() and from_hf_config(preset_config(source.name),
                                                            name=source.name) == source:
            return source, preset_config(source.name)
        return source, shape_to_hf_config(source)
    if isinstance(source, dict):
        return from_hf_config(source), dict(source)
    if isinstance(source, (str, Path)) and str(source) in preset_names():
        cfg = preset_config(str(source))
        return from_hf_config(cfg, name=str(source)), cfg
    if isinstance(source, (str, Path)):
        cfg = read_config_file(Path(source))
        return from_hf_config(cfg, name=Path(source).stem), cfg
    raise ValueError(f"model: expected a ModelShape, a preset name, a config dict or a path, got {type(source).__name__}")


def read_config_file(path: Path) -> dict:
    """A config.json's dict (path may be the folder holding it). ValueError on bad input."""
    return read_hf_config_dict(path)


def read_model_dir(model_dir: str | Path) -> tuple[ModelShape, dict]:
    """(shape, config dict) of a local model folder. ModelDirError if it cannot be read,
    ValueError if its config is malformed or unsupported."""
    folder = Path(model_dir)
    if not folder.is_dir():
        raise ModelDirError(f"model folder not found: {str(folder)!r}")
    config_path = folder / "config.json"
    try:
        if not config_path.is_file():
            raise ModelDirError(f"model folder {str(folder)!r} has no config.json")
        config_path.open("rb").close()   # readable?
    except PermissionError:
        raise ModelDirError(f"model folder {str(folder)!r} is not readable") from None
    cfg = read_config_file(config_path)
    return from_hf_config(cfg, name=folder.name), cfg


def build_model(cfg: dict, dtype: str, attention: str = "eager", model_dir: str | Path | None = None):
    """The causal LM, built in `dtype` on the current default device (or fake mode).

    With `model_dir`, weights found in the folder are loaded (local files only, never
    remote code); a folder without weights gives random weights, which take the same memory.
    """
    torch_dtype = TORCH_DTYPES[dtype]
    if model_dir is not None and _has_weights(Path(model_dir)):
        try:
            return AutoModelForCausalLM.from_pretrained(
                str(model_dir), dtype=torch_dtype, attn_implementation=attention,
                local_files_only=True, trust_remote_code=False)
        except (OSError, ValueError) as err:
            raise ModelDirError(f"cannot load the weights in {str(model_dir)!r}: {str(err)[:200]}") from None
    return AutoModelForCausalLM.from_config(hf_config(cfg), dtype=torch_dtype,
                                            attn_implementation=attention, trust_remote_code=False)


def _has_weights(folder: Path) -> bool:
    patterns = ("*.safetensors", "pytorch_model*.bin", "*.safetensors.index.json")
    return any(any(folder.glob(p)) for p in patterns)


def decoder_layers(model) -> list:
    """The repeated decoder blocks, first to last (transformers' GradientCheckpointingLayer)."""
    return [m for m in model.modules() if isinstance(m, GradientCheckpointingLayer)]


def num_checkpointed_layers(num_layers: int, keep: float) -> int:
    """Layers whose activations are recomputed for a checkpoint ratio keep = L'/L:
    L - round(keep·L) (Python's round: halves go to the even number)."""
    return num_layers - round(keep * num_layers)


def enable_checkpointing(model, keep: float) -> list[int]:
    """Checkpoint the first L - round(keep·L) decoder layers (non-reentrant
    torch.utils.checkpoint); the later layers keep their activations. Returns the indices
    of the checkpointed layers."""
    return checkpoint_first_layers(model, num_checkpointed_layers(len(decoder_layers(model)), keep))


def checkpoint_first_layers(model, n: int) -> list[int]:
    """Checkpoint the first n decoder layers (non-reentrant); returns their indices."""
    layers = decoder_layers(model)
    if n == 0:
        return []
    model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    for layer in layers[n:]:
        layer.gradient_checkpointing = False
    return list(range(n))
