"""Make a fake-tensor trace take the code paths a real run takes.

transformers' `is_tracing(tensor)` counts a FakeTensor as "tracing" (as it would a
torch.fx proxy or a jit trace), and then cannot read values it would read in a real run:
`masking_utils.find_packed_sequence_indices` cannot check that the position ids are one
unpacked 0..s-1 run per sequence, assumes packing, and so SDPA cannot use its `is_causal`
flag: a (b, 1, s, s) causal mask is built, every layer converts it to an additive float
mask and keeps it for backward. A real run on the CPU or a GPU, with the same inputs,
skips that mask (measured: one b·s²-element tensor per layer, 3-11% of the peak at s=512).

This context manager answers those questions as a real run does for the inputs the
validation engine uses (unpacked sequences with positions 0..s-1, no padding mask, query
as long as the keys, no sliding window shorter than the keys) and defers to transformers
for anything else.
"""

from __future__ import annotations

import contextlib


@contextlib.contextmanager
def real_run_code_paths():
    from transformers import masking_utils

    original = masking_utils._ignore_causal_mask_sdpa
    original_packed = masking_utils.find_packed_sequence_indices

    def not_packed(position_ids):
        return None   # the engine's batches are independent sequences at positions 0..s-1

    def ignore_causal_mask_as_a_real_run(padding_mask, q_length, kv_length, q_offset, kv_offset,
                                         local_attention_size=None):
        no_window = local_attention_size is None or kv_length < local_attention_size
        if padding_mask is None and no_window and (q_length == 1 or kv_length == q_length):
            return True
        return original(padding_mask, q_length, kv_length, q_offset, kv_offset, local_attention_size)

    masking_utils._ignore_causal_mask_sdpa = ignore_causal_mask_as_a_real_run
    masking_utils.find_packed_sequence_indices = not_packed
    try:
        yield
    finally:
        masking_utils._ignore_causal_mask_sdpa = original
        masking_utils.find_packed_sequence_indices = original_packed
