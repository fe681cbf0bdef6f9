"""What is being run: the method, the optimizer, the batch, the precision, checkpointing.

A `Scenario` is a frozen dataclass; `Estimate` is what the memory model returns for a
(shape, scenario) pair.
"""

from __future__ import annotations

from dataclasses import dataclass, field

METHODS = ("inference", "mezo", "bp")
OPTIMIZERS = ("sgd", "momentum", "adam", "adamw")
DTYPES = {"fp32": 4, "bf16": 2, "fp16": 2}   # bytes per element
ATTENTIONS = ("eager", "sdpa")
TARGETS = ("cuda", "cpu")

# Upper bounds that keep every product exact and every input meaningful.
MAX_BATCH = 2**20
MAX_SEQ = 2**22


@dataclass(frozen=True)
class Scenario:
    """One fine-tuning (or inference) step.

    dtype: the precision the model is held and trained in (`model.to(dtype)`, a plain
    torch.optim optimizer whose states take the parameters' dtype). mixed_precision:
    16-bit compute with fp32 master weights, gradients and optimizer states (AMP-style:
    fp32 parameters, autocast to `dtype`). keep: the checkpoint ratio L'/L, the share of
    layers that keep their activations (1: no checkpointing). target: the device whose
    kernels are modelled (CUDA fuses dropout into a 1-byte mask; the CPU keeps a full
    noise tensor).
    """

    method: str = "bp"
    optimizer: str = "adamw"
    batch: int = 1
    seq: int = 512
    dtype: str = "bf16"
    mixed_precision: bool = False
    keep: float = 1.0
    attention: str = "eager"
    target: str = "cuda"

    def __post_init__(self) -> None:
        validate_scenario(self)

    @property
    def bytes_per_value(self) -> int:
        return DTYPES[self.dtype]

    @property
    def tokens(self) -> int:
        return self.batch * self.seq


def _check_choice(name: str, value, allowed) -> None:
    if value not in allowed:
        raise ValueError(f"{name}: must be one of {', '.join(allowed)}, got {value!r}")


def _check_int(name: str, value, high: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= high:
        raise ValueError(f"{name}: must be a whole number in [1, {high}], got {value!r}")


def validate_scenario(s: Scenario) -> None:
    _check_choice("method", s.method, METHODS)
    _check_choice("optimizer", s.optimizer, OPTIMIZERS)
    _check_choice("dtype", s.dtype, tuple(DTYPES))
    _check_choice("attention", s.attention, ATTENTIONS)
    _check_choice("target", s.target, TARGETS)
    _check_int("batch", s.batch, MAX_BATCH)
    _check_int("seq", s.seq, MAX_SEQ)
    if isinstance(s.keep, bool) or not isinstance(s.keep, (int, float)) or not 0.0 <= s.keep <= 1.0:
        raise ValueError(f"keep: the checkpoint ratio L'/L must be in [0, 1], got {s.keep!r}")
    if s.mixed_precision and s.dtype == "fp32":
        raise ValueError("mixed_precision: needs a 16-bit dtype (bf16 or fp16), got fp32")


@dataclass(frozen=True)
class Estimate:
    """The memory of one step.

    peak_bytes: bytes held by live tensors at the step's peak (what
    torch.cuda.max_memory_allocated reports for a step after the first).
    breakdown: the terms live at that peak; they add up to peak_bytes.
    phase: the phase of the step where the peak falls.
    phases: the peak of every phase (the step's peak is their maximum).
    textbook: the classic form, weights + gradients + optimizer states + Korthikanti
    activations, kept beside the detailed model as the explanation.
    """

    peak_bytes: int
    breakdown: dict = field(default_factory=dict)
    phase: str = ""
    phases: dict = field(default_factory=dict)
    textbook: dict = field(default_factory=dict)
    params: int = 0
