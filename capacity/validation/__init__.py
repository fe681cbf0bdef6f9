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

import logging
import os

# bitsandbytes (imported by peft) warns on import, on CPUs with AVX512-BF16, that it could not
# fetch an optional CPU kernel from the Hugging Face hub (the `kernels` package is not
# installed, and nothing is downloaded at run time here); a validation run does not use that
# kernel, so the warning is only noise on every run's stderr.
logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)

# torch's profiler (kineto, which the CPU allocator reading uses: allocator.py) writes
# "USDT ... profiler_start/stop" lines to stderr on every CPU run, at its highest level (with
# torch 2.13: ERROR 3, STAGE 4, USDT 5, read off which lines each KINETO_LOG_LEVEL prints).
# 6 hides them, and kineto's own error lines with them; a user's own setting wins.
os.environ.setdefault("KINETO_LOG_LEVEL", "6")

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
