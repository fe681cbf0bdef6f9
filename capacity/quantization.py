"""Quantized base weights as bitsandbytes (0.50.2) stores and computes them.

transformers' BitsAndBytesConfig replaces every nn.Linear and Conv1D of the model but the
output embedding (quantizers/base.py: get_keys_to_not_convert) by bitsandbytes' Linear8bitLt
or Linear4bit at load time (integrations/bitsandbytes.py: replace_with_bnb_linear). The
embeddings, the norms, the head and the linears' biases stay in the model's dtype.

Storage, per linear of n = out·in weights (bitsandbytes/nn/modules.py: Int8Params,
Params4bit; functional.py: quantize_4bit, QuantState):
  8-bit   the int8 weight (n bytes) and one fp32 scale per output row (SCB, 4·out).
  4-bit   two weights per uint8 (⌈n/2⌉), blocks of 64 weights with one fp32 absmax each
          (4·⌈n/64⌉), and the 16-entry fp32 code of NF4 or FP4 (64 bytes). With double
          quantization (bnb_4bit_use_double_quant) the absmax values are quantized again, to
          uint8 in blocks of 256 (⌈n/64⌉ bytes) with a second-level fp32 absmax per block
          (4·⌈n/16384⌉), a 256-entry fp32 code (1 KiB) and an fp32 offset (4 bytes).
NF4 and FP4 take the same bytes.

Compute (bitsandbytes/autograd/_functions.py):
  4-bit   MatMul4Bit dequantizes the weight to the compute dtype and runs F.linear
          (backends/default/ops.py: _gemm_4bit_default_impl; on CUDA for more than 512
          tokens, and for fewer on some GPUs, a fused kernel skips the dequantized copy:
          backends/cuda/ops.py: _gemm_4bit_use_custom_cuda). Nothing of the input is kept
          for backward (ctx.tensors = (None, B)); the backward dequantizes the weight again.
          With double quantization the block scales are dequantized first (fp32, 4·⌈n/64⌉,
          plus the offset added into a second such tensor).
  8-bit   MatMul8bitLt casts the input to fp16 and quantizes it row-wise to int8 (2·N·in +
          N·in bytes, one fp32 scale per row), multiplies in int8 to int32 (4·N·out) and
          dequantizes to the output. It keeps its input A for backward whenever the input
          requires grad (`ctx.tensors = (CAt, subA, A)`), as a plain ctx attribute that
          checkpointing's saved-tensor hooks do not see: kept even in checkpointed layers.
          The backward dequantizes the weight (`CB.to(dtype, copy=True)`, out·in·p, and
          SCB/127 in fp32, 4·out).
LLM.int8's outlier columns (|x| >= 6.0, a few per layer in real LLMs, none in random
weights) add N·outliers values per linear; not modelled (docs/peft.md).
"""

from __future__ import annotations

from .params import Linear

FP32 = 4
FP16 = 2
INT32 = 4
BLOCKSIZE_4BIT = 64          # Params4bit's default blocksize (BitsAndBytesConfig has no other)
BLOCKSIZE_ABSMAX = 256       # double quantization's blocks of absmax values
CODE_4BIT_BYTES = 16 * FP32  # NF4 / FP4 code: 16 fp32 values
CODE_8BIT_BYTES = 256 * FP32  # the second level's dynamic 8-bit code


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def weight_elements(lin: Linear) -> int:
    return lin.fan_in * lin.fan_out


def int8_weight_bytes(lin: Linear) -> int:
    """Int8Params: the int8 weight (CB) and fp32 row scales (SCB). Bias apart."""
    return weight_elements(lin) + FP32 * lin.fan_out


def absmax_blocks(lin: Linear) -> int:
    return _ceil_div(weight_elements(lin), BLOCKSIZE_4BIT)


def int4_weight_bytes(lin: Linear, double_quant: bool) -> int:
    """Params4bit and its QuantState: packed weights, block scales, code (and with double
    quantization the second level). Bias apart."""
    n = weight_elements(lin)
    blocks = absmax_blocks(lin)
    packed = _ceil_div(n, 2) + CODE_4BIT_BYTES
    if double_quant:
        return packed + blocks + FP32 * _ceil_div(blocks, BLOCKSIZE_ABSMAX) + CODE_8BIT_BYTES + FP32
    return packed + FP32 * blocks


def quantized_weight_bytes(lin: Linear, bits: int, double_quant: bool) -> int:
    """Stored bytes of one quantized linear's weight (its bias is stored apart, in dtype)."""
    return int8_weight_bytes(lin) if bits == 8 else int4_weight_bytes(lin, double_quant)


def dequantized_weight_bytes(lin: Linear, p: int) -> int:
    """The weight dequantized to the compute dtype (p bytes per value): out·in·p."""
    return weight_elements(lin) * p


def absmax_dequant_bytes(lin: Linear, double_quant: bool) -> int:
    """4-bit with double quantization: the block scales dequantized to fp32 (and the offset
    added into a new tensor), held while the weight is dequantized."""
    return FP32 * absmax_blocks(lin) if double_quant else 0


def forward_peak_bytes(lin: Linear, bits: int, double_quant: bool, tokens: int, p: int) -> int:
    """The most one quantized linear's forward holds beyond its input, its output included.

    4-bit: the dequantized weight (and the fp32 block scales with double quantization) beside
    the output F.linear makes (_gemm_4bit_default_impl).
    8-bit (MatMul8bitLt): first the input cast to fp16 (2·N·in) beside its int8 quantization
    (N·in) and one fp32 scale per row; then the int8 input and scales beside the int32
    product (4·N·out) and the output it is dequantized to (int8_scaled_mm). The kernels'
    own buffers on a GPU and LLM.int8's outlier columns are not counted (docs/peft.md)."""
    out = p * tokens * lin.fan_out
    if bits == 4:
        return dequantized_weight_bytes(lin, p) + absmax_dequant_bytes(lin, double_quant) + out
    quantize = (FP16 + 1) * tokens * lin.fan_in + FP32 * tokens
    product = tokens * lin.fan_in + FP32 * tokens + INT32 * tokens * lin.fan_out + out
    return max(quantize, product)


def backward_transient_bytes(lin: Linear, bits: int, double_quant: bool, p: int) -> int:
    """What one quantized linear's backward (its input's gradient) holds beyond the incoming
    gradient and its result: the dequantized weight (8-bit: and SCB/127 in fp32)."""
    if bits == 4:
        return dequantized_weight_bytes(lin, p) + absmax_dequant_bytes(lin, double_quant)
    return dequantized_weight_bytes(lin, p) + FP32 * lin.fan_out
