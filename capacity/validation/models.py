"""Build the Hugging Face causal LM that a validation run fine-tunes, from the config dict
of its source (source.py: a preset, a config.json, a shape or a local folder). Nothing is
downloaded and no code from a config runs.

The model is built directly in its target dtype (`from_config(cfg, dtype=...)`): under
FakeTensorMode a `.to(dtype)` after construction fails, and building in fp32 first would
double the host memory for nothing.
"""

from __future__ import annotations

import copy

import warnings
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM
from transformers.modeling_layers import GradientCheckpointingLayer

from .source import (ModelDirError, has_weights, read_config_file, read_model_dir,  # noqa: F401
                     resolve_model, shape_to_hf_config)

TORCH_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def is_out_of_memory(err: BaseException) -> bool:
    """Whether an exception is an allocation failure (GPU or host)."""
    if isinstance(err, (torch.OutOfMemoryError, MemoryError)):
        return True
    return isinstance(err, RuntimeError) and "can't allocate memory" in str(err)


def _first_line(err: BaseException, limit: int = 240) -> str:
    """An exception as one short line: its type and its message, lines joined and cut."""
    text = " ".join(str(err).split())
    text = text if len(text) <= limit else text[:limit - 3] + "..."
    return f"{type(err).__name__}: {text}" if text else type(err).__name__


# Settings of a config.json that the validation run decides itself: code references and
# load-time settings play no part here, and what a forward pass returns is the training
# loop's choice (steps.py reads outputs by name: `return_dict: false` would give tuples).
_RUN_SETTINGS = ("auto_map", "architectures", "torch_dtype", "dtype", "quantization_config",
                 "return_dict", "use_return_dict", "output_attentions", "output_hidden_states",
                 "torchscript")


def hf_config(cfg: dict):
    """A transformers configuration object from a config dict, without remote code:
    the class is picked by `model_type` among transformers' own classes.
    ValueError (one line) when transformers refuses the config. The caller's dict is left
    as it was (transformers standardises nested rope settings in place: a deep copy)."""
    cfg = copy.deepcopy(cfg)
    for key in _RUN_SETTINGS:
        cfg.pop(key, None)
    model_type = cfg.pop("model_type")
    try:
        return AutoConfig.for_model(model_type, **cfg)
    except Exception as err:  # noqa: BLE001 - transformers' own validation: bad input
        if is_out_of_memory(err):
            raise
        raise ValueError(f"config: transformers refuses it ({_first_line(err)})") from None


def with_layers(cfg: dict, num_layers: int) -> dict:
    """The config dict with at most num_layers decoder layers (its family's layer-count key;
    a per-layer list such as `layer_types` cut to match)."""
    from ..families import FAMILIES
    family = FAMILIES.get(cfg.get("model_type"))
    if family is None:
        return cfg
    key = family.keys.get("num_layers")
    if not isinstance(cfg.get(key), int) or cfg[key] <= num_layers:
        return cfg
    out = {**cfg, key: num_layers}
    for per_layer in {family.keys.get("layers", "layer_types"), "layer_types"}:
        if isinstance(cfg.get(per_layer), list):
            out[per_layer] = cfg[per_layer][:num_layers]
    return out


def construct(conf, torch_dtype, attention: str):
    """AutoModelForCausalLM.from_config (random weights, no remote code), with a model that
    transformers or torch refuse to build (a pad_token_id beyond the vocabulary, ...)
    reported as a ValueError in one line. Out of memory passes through."""
    try:
        return AutoModelForCausalLM.from_config(conf, dtype=torch_dtype, attn_implementation=attention,
                                                trust_remote_code=False)
    except Exception as err:  # noqa: BLE001 - construction checks of transformers and torch
        if is_out_of_memory(err):
            raise
        raise ValueError(f"config: transformers cannot build this model ({_first_line(err)})") from None


def build_model(cfg: dict, dtype: str, attention: str = "eager", model_dir: str | Path | None = None):
    """The causal LM, built in `dtype` on the current default device (or fake mode).

    With `model_dir`, weights found in the folder are loaded (local files only, never
    remote code); a folder without weights gives random weights, which take the same memory.
    """
    torch_dtype = TORCH_DTYPES[dtype]
    if model_dir is not None and has_weights(Path(model_dir)):
        try:
            with warnings.catch_warnings():   # torch.load's notes on pickles: the error says it
                warnings.simplefilter("ignore")
                return AutoModelForCausalLM.from_pretrained(
                    str(model_dir), dtype=torch_dtype, attn_implementation=attention,
                    local_files_only=True, trust_remote_code=False)
        except Exception as err:  # noqa: BLE001 - corrupt files, refused pickles, wrong shapes
            if is_out_of_memory(err):
                raise
            raise ModelDirError(f"cannot load the weights in {str(model_dir)!r}: {_weights_problem(err)}") from None
    return construct(hf_config(cfg), torch_dtype, attention)


def _weights_problem(err: BaseException) -> str:
    """What is wrong with a folder's weights, in a few words, then transformers' message."""
    import pickle
    if isinstance(err, pickle.UnpicklingError):
        return ("a pickle holding more than tensors was refused (torch.load weights_only; no code from a "
                f"model folder runs) ({_first_line(err, 120)})")
    if "mismatched_sizes" in str(err) or "size mismatch" in str(err):
        return f"their shapes do not match config.json ({_first_line(err, 120)})"
    return _first_line(err)


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
