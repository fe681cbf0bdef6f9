"""Validation: a short real fine-tune (BP, MeZO or inference) that measures peak memory and
sets it beside capacity's prediction. (The functions `measure` and `compare` live in
measurement.py, so that no submodule shadows the name `measure`.)

This subpackage is the only part of `capacity` that imports torch and transformers, and it
imports them lazily: `import capacity` and `capacity.validation.cli` (the argument parser)
stay free of them until a run starts.

    from capacity.validation import measure, compare
    compare("llama-2-7b", Scenario(method="mezo", batch=1, seq=128), device="trace")
"""

from __future__ import annotations

__all__ = ["measure", "compare", "MeZO", "run_validation", "ValidationRun"]


def __getattr__(name):
    if name in ("measure", "compare"):
        from . import measurement
        return getattr(measurement, name)
    if name == "MeZO":
        from .mezo import MeZO
        return MeZO
    if name in ("run_validation", "ValidationRun"):
        from . import runner
        return getattr(runner, name)
    raise AttributeError(f"module 'capacity.validation' has no attribute {name!r}")
