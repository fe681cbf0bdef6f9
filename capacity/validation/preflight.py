"""What is checked before a validation run builds anything (standard library only, so that
it runs before torch is imported): whether torch can hold the step's tensors at all, and
whether the run fits in the host memory available.

Torch sizes are 64-bit: a tensor's elements, and its bytes, must stay below 2^63. A trace
holds no memory, so any batch and context can be traced up to that; beyond it the step
cannot run anywhere and is refused.

A run on the CPU holds real tensors: the predicted peak (capacity.estimate, target cpu) and
its token batches. One that needs more than the host has now (host.available_bytes: the
kernel's MemAvailable, the control group's room, the room under --max-memory) is refused as
out of memory at model construction, before anything is allocated.
"""

from __future__ import annotations

from dataclasses import replace

from ..scenario import Scenario
from . import host


def predict(shape, scenario: Scenario):
    """capacity.estimate for this shape and scenario, or None while it is not available."""
    return predict_or_reason(shape, scenario)[0]


def predict_or_reason(shape, scenario: Scenario):
    """(capacity.estimate, None), or (None, why not). The scenario is valid (a Scenario
    checks itself), so a ValueError here is the memory model refusing a setting it does not
    model yet (PEFT, many devices): the measurement still runs, without a prediction."""
    try:
        import capacity
        return capacity.estimate(shape, scenario), None
    except (ImportError, AttributeError, NotImplementedError) as err:
        return None, f"capacity.estimate is not available ({err})"
    except ValueError as err:
        return None, str(err)


# A tensor of more elements than this cannot be made: its bytes (elements times up to 8 bytes
# per element) would pass 2^63, the limit of torch's 64-bit sizes.
MAX_TENSOR_ELEMENTS = 2**60


def largest_tensors(shape, scenario: Scenario) -> dict[str, int]:
    """Elements of the step's largest tensors, the ones that grow with batch and context:
    the logits, the MLP's widest activation (a mixture of experts': the gate_up output of
    every routed pair) and the attention scores (materialized by eager attention, and by
    sdpa's math fallback)."""
    b, s = scenario.batch, scenario.seq
    out = {"logits (batch·seq·vocab)": b * s * shape.vocab_size,
           "MLP activations (batch·seq·intermediate)": b * s * shape.intermediate_size,
           "attention scores (batch·heads·seq·seq)": b * shape.num_heads * s * s}
    if shape.moe is not None:
        out["experts' activations (batch·seq·top_k·2·expert width)"] = \
            b * s * shape.moe.top_k * 2 * shape.moe.expert_size
    return out


def check_tensor_sizes(shape, scenario: Scenario) -> None:
    """ValueError when a tensor of the step would be too large for torch (see module doc)."""
    for what, elements in largest_tensors(shape, scenario).items():
        if elements > MAX_TENSOR_ELEMENTS:
            raise ValueError(f"--batch and --seq: the {what} would hold {elements:.3g} elements, more than "
                             f"a torch tensor can (2^60); use a smaller batch or context")


def with_target(scenario: Scenario, target: str) -> Scenario:
    return replace(scenario, target=target)


def token_ids_bytes(scenario: Scenario, steps: int) -> int:
    """Host bytes of the token batches a run holds: steps + 1 int64 batches (one spare for
    cuda's extra step), plus two batches' worth while a batch is cut from a data file."""
    return (steps + 3) * scenario.batch * scenario.seq * 8


def host_bytes_needed(shape, scenario: Scenario, steps: int, device: str) -> int:
    """Host memory a run needs: on the CPU the predicted peak (capacity.estimate, target cpu;
    16 bytes per parameter while it is not available) and the token batches; on cuda the
    token batches (the model lives on the GPU); a trace holds fake tensors only."""
    if device == "trace":
        return 0
    ids = token_ids_bytes(scenario, steps)
    if device == "cuda":
        return ids
    estimate = predict(shape, with_target(scenario, "cpu"))
    if estimate is not None:
        return estimate.peak_bytes + ids
    from ..params import parameter_count
    return 4 * 4 * parameter_count(shape) + ids


def host_memory_refusal(shape, scenario: Scenario, steps: int, device: str,
                        cap: int | None = None) -> dict | None:
    """None when the run fits in the host memory available now (and under `cap`, a data cap
    about to be set); else what it needs and what is available (the run is refused as out
    of memory before anything is built)."""
    needed = host_bytes_needed(shape, scenario, steps, device)
    available = host.available_bytes(cap)
    if needed == 0 or available is None or needed <= available:
        return None
    return {"host_needed_bytes": needed, "host_available_bytes": available}
