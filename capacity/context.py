"""The model's context limit: what a config's max_position_embeddings (n_positions) means.

A learned position table (GPT-2, OPT) has no row beyond its last: a longer context cannot
run, and `estimate` refuses it. Rotary positions (RoPE) run at any length; the limit is the
length the model was trained for, which rope scaling may extend: an answer beyond it is
given, with a note saying so.
"""

from __future__ import annotations

from .shape import ModelShape


def longest_runnable_context(s: ModelShape) -> int | None:
    """The longest context the model can run at all: a learned table's length, or None."""
    return s.max_positions if s.arch.positions == "learned" else None


def check_context(s: ModelShape, seq: int) -> None:
    """ValueError naming the limit when `seq` is beyond a learned position table."""
    limit = longest_runnable_context(s)
    if limit is not None and seq > limit:
        raise ValueError(f"seq: {s.name or s.model_type} has a learned position table of {limit:,} "
                         f"positions (its config's limit); a context of {seq:,} tokens cannot run")


def context_note(s: ModelShape, seq: int) -> str | None:
    """A note for a context beyond the model's max_position_embeddings with RoPE; else None."""
    if s.arch.positions == "rope" and seq > s.max_positions:
        return (f"a context of {seq:,} tokens is beyond the {s.max_positions:,} positions "
                f"{s.name or s.model_type} was trained for (max_position_embeddings); RoPE runs "
                f"there, and rope scaling may extend it, but quality there is not assured")
    return None
