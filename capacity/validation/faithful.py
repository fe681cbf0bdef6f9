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

A mixture of experts' default experts implementation (grouped_mm, integrations/moe.py)
runs torch.nn.functional.grouped_mm, whose fake (meta) kernel,
torch/_meta_registrations.py `_meta_grouped_mm_common`, copies the checks of the CUDA
fast path and accepts only bf16 operands, while the CPU kernel and CUDA's fallback
(transformers' grouped_mm_fallback, and ATen's for other dtypes or GPUs before sm90) run
fp32 and fp16 too. Inside this context, unscaled fp32/fp16 operands get the output the meta
function gives bf16 ones (`_create_grouped_mm_output_tensor`: same shape, the operands'
dtype), without the dtype check; checked byte for byte against real CPU runs.
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
        with grouped_mm_in_any_float():
            yield
    finally:
        masking_utils.find_packed_sequence_indices = original


@contextlib.contextmanager
def grouped_mm_in_any_float():
    """The fake aten._grouped_mm gives fp32 and fp16 outputs as the CPU kernel does."""
    import torch
    import torch._meta_registrations as meta

    original = meta._meta_grouped_mm_common

    def common(mat_a, mat_b, scale_a, scale_b, offs=None, bias=None, scale_result=None,
               out_dtype=None, use_fast_accum=False):
        if scale_a is None and scale_b is None and mat_a.dtype == mat_b.dtype \
                and mat_a.dtype in (torch.float32, torch.float16):
            return meta._create_grouped_mm_output_tensor(mat_a, mat_b, offs, out_dtype)
        return original(mat_a, mat_b, scale_a, scale_b, offs, bias, scale_result, out_dtype, use_fast_accum)

    meta._meta_grouped_mm_common = common
    try:
        yield
    finally:
        meta._meta_grouped_mm_common = original
