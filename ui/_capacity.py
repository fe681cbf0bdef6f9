"""capacity's answers that the pages ask for again and again, kept for the server's lifetime.

Every page reruns its script from the top on each click, and What fits asks for the peak of
every preset under four methods. These are pure functions of frozen inputs (a ModelShape,
a Scenario) and of the preset data shipped with capacity, so their answers can be kept: an
interaction then computes only what changed (a new batch: the presets' peaks under the new
methods; a new budget: nothing but the comparisons).
"""

from __future__ import annotations

import copy
import functools

import capacity as cap
from capacity import inverse

ESTIMATES_KEPT = 8192      # an Estimate is a few hundred bytes; What fits keeps ~300 per scenario


@functools.cache
def families() -> dict[str, tuple[str, ...]]:
    """capacity.families(), once: family name -> its presets, smallest first."""
    return {family: tuple(names) for family, names in cap.families().items()}


@functools.cache
def preset(name: str) -> "cap.ModelShape":
    """A preset's shape (capacity.load_preset), once per name."""
    return cap.load_preset(name)


@functools.lru_cache(maxsize=ESTIMATES_KEPT)
def estimate(shape: "cap.ModelShape", scenario: "cap.Scenario") -> "cap.Estimate":
    """capacity.estimate, kept per (shape, scenario): both are frozen, the answer too.
    A ValueError (a scenario capacity refuses) is not kept and is raised again each time."""
    return cap.estimate(shape, scenario)


def largest_preset(family: str, budget: int, scenario: "cap.Scenario"):
    """capacity.largest_preset on the kept estimates: (name, Estimate), or (None, None)."""
    return inverse.largest_preset(family, budget, scenario, estimate_of=estimate)


@functools.lru_cache(maxsize=1024)
def _devices_needed_row(name: str, shape: "cap.ModelShape", methods: tuple, budget: int) -> dict:
    return cap.devices_needed_table({name: shape}, dict(methods), budget)[0]


def devices_needed_row(name: str, shape: "cap.ModelShape", methods: dict, budget: int) -> dict:
    """capacity.devices_needed_table's row of one model, kept per (model, methods, budget):
    each row tries every device count under every method (tens of estimates). A copy, so
    that a caller may change it; a ValueError is raised again each time."""
    return copy.deepcopy(_devices_needed_row(name, shape, tuple(methods.items()), budget))


def forget() -> None:
    """Drop the kept answers (tests that replace a capacity function)."""
    for kept in (families, preset, estimate, _devices_needed_row):
        kept.cache_clear()
