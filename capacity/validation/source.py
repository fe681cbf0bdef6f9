"""Where a validation run's model comes from, read as data (standard library only, so that
bad input is refused before torch is imported):
  * a Hugging Face config dict (a preset's, or a user's config.json),
  * a capacity `ModelShape` (turned back into the config dict of its family:
    capacity.hf_config.shape_to_hf_config, each family's `write`),
  * a local folder (`--model-dir`) holding config.json and, optionally, weights.
Nothing is downloaded and no code from a config runs.
"""

from __future__ import annotations

from pathlib import Path

from ..hf_config import from_hf_config, read_hf_config_dict, shape_to_hf_config
from ..shape import ModelShape


class ModelDirError(Exception):
    """The --model-dir folder is missing or unreadable, or its weights cannot be loaded
    (exit code 4)."""


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
        return from_hf_config(source), _text_model(source)
    if isinstance(source, (str, Path)) and str(source) in preset_names():
        cfg = preset_config(str(source))
        return from_hf_config(cfg, name=str(source)), cfg
    if isinstance(source, (str, Path)):
        path = Path(source)
        cfg = read_config_file(path)
        # Named as load_hf_config names it: a config.json by its folder, any other file by its stem.
        name = (path.parent.name if path.name == "config.json" else "") or path.stem
        return from_hf_config(cfg, name=name), _text_model(cfg)
    raise ValueError(f"model: expected a ModelShape, a preset name, a config dict or a path, got {type(source).__name__}")


def _text_model(cfg: dict) -> dict:
    """The config the engine builds: a multimodal config's text model (the calculator
    prices that one: families.TEXT_CONFIG_WRAPPERS), else the config itself."""
    from ..families import text_model_config
    return dict(text_model_config(cfg)[0])


def read_config_file(path: Path) -> dict:
    """A config.json's dict (path may be the folder holding it). ValueError on bad input."""
    return read_hf_config_dict(path)


def read_model_dir(model_dir: str | Path) -> tuple[ModelShape, dict]:
    """(shape, config dict) of a local model folder. ModelDirError if it cannot be read,
    ValueError if its config is malformed or unsupported."""
    folder = Path(model_dir)
    try:
        if not folder.is_dir():
            raise ModelDirError(f"model folder not found: {str(folder)!r}")
        config_path = folder / "config.json"
        if not config_path.is_file():
            raise ModelDirError(f"model folder {str(folder)!r} has no config.json")
        config_path.open("rb").close()   # readable?
        cfg = read_config_file(config_path)
        has_weights(folder)   # the folder can be listed
    except OSError as err:   # PermissionError and the like
        raise ModelDirError(f"model folder {str(folder)!r} is not readable ({err.strerror or type(err).__name__})") from None
    return from_hf_config(cfg, name=folder.name), cfg


def has_weights(folder: Path) -> bool:
    patterns = ("*.safetensors", "pytorch_model*.bin", "*.safetensors.index.json")
    return any(any(folder.glob(p)) for p in patterns)
