"""capacity: how large a language model can be fine-tuned in a memory budget, with
backpropagation (plain or checkpointed) or MeZO, and at what cost in time.

Standard library only. See docs/api.md for the API and docs/equations.md for the formulas.
"""

from .compute import (MEZO_STEPS_MULTIPLIER, MEZO_STEPS_SOURCE, bytes_per_step, flops_per_step,
                      forward_flops, step_time_seconds)
from .architecture import Architecture, Attention, LayerKind, Mlp, Moe, Multipliers, Norm
from .context import check_context, context_note, longest_runnable_context
from .families import FAMILIES, family
from .hf_config import from_hf_config, load_hf_config, parse_hf_config_text, shape_to_hf_config
from .inverse import (DEVICE_COUNTS, devices_needed_table, fewest_devices, largest_batch, largest_preset,
                      largest_preset_of_all,
                      largest_preset_on_devices, largest_scaled_model, longest_context, on_devices,
                      relative_model_size)
from .memory import CUDA_CONTEXT_BYTES, TERMS, attention_note, estimate, runnable_attention
from .params import parameter_count
from .presets import (Device, device_names, families, load_device, load_preset, preset_config,
                      preset_family, preset_names)
from .scenario import (ATTENTIONS, DEFAULT_LOOP, DTYPES, LOOPS, METHODS, OPTIMIZERS, SHARDINGS, TARGETS,
                       Estimate, Loop, Parallel, Scenario, loop_preset)
from .sharding import SHARDING_TERMS
from .families import MODEL_TYPES
from .shape import ModelShape
from .units import GB, GiB, format_bytes, parse_bytes

__all__ = [name for name in dir() if not name.startswith("_")]
