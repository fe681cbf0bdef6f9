"""Make a fake-tensor trace take the code paths a real run takes.

transformers' `is_tracing(tensor)` counts a FakeTensor as "tracing" (as it would a
torch.fx proxy or a jit trace), and then does not read values it would read in a real run:
`masking_utils.find_packed_sequence_indices` cannot check that the position ids are one
unpacked 0..s-1 run per sequence, assumes packing, and so SDPA cannot use its `is_causal`
flag: a (b, 1, s, s) causal mask is built, every layer converts it to an additive float
mask and keeps it for backward. A real run on the CPU or a GPU, with the same inputs,
skips that mask (measured: one b·s²-element tensor per layer, 3-11% of the peak at s=512).

This context manager gives transformers the answer a real run computes for the inputs
the validation engine uses: its batches are independent sequences at positions 0..s-1.
"""

from __future__ import annotations

import contextlib


@contextlib.contextmanager
def real_run_code_paths():
    from transformers import masking_utils

    original = masking_utils.find_packed_sequence_indices

    def not_packed(position_ids):
        return None

    masking_utils.find_packed_sequence_indices = not_packed
    try:
        yield
    finally:
        masking_utils.find_packed_sequence_indices = original
