"""What a parameter-efficient scenario trains, built with the libraries users use.

`Scenario.peft` (capacity.scenario.Peft) says what is trained and how the frozen base weights
are stored. `prepare(model, peft, device)` turns the causal LM that models.build_model made
into the model a user of that method fine-tunes:

  weights_bits 8 or 4  every linear of the decoder becomes bitsandbytes' Linear8bitLt or
      Linear4bit with quantized, frozen weights, as `from_pretrained(...,
      quantization_config=BitsAndBytesConfig(...))` makes them
      (transformers/integrations/bitsandbytes.py: replace_with_bnb_linear, Bnb4bitQuantize,
      Bnb8bitQuantize): the output head (and a head tied to the input embedding) stays
      16-bit (transformers/quantizers/base.py: get_keys_to_not_convert); 4-bit blocks of 64
      values, uint8 storage, `quant` nf4 or fp4, `double_quant` quantising the block
      statistics again (bnb_4bit_use_double_quant); the compute dtype is the scenario's
      dtype (the QLoRA recipe's bnb_4bit_compute_dtype=bfloat16; BitsAndBytesConfig's own
      default, float32, would compute in fp32); 8-bit with LLM.int8's outlier threshold 6.0
      (BitsAndBytesConfig's default llm_int8_threshold) and no 16-bit copy of the weights.
  lora    peft.get_peft_model(model, LoraConfig(r, lora_alpha, lora_dropout, target_modules,
      task_type="CAUSAL_LM")); no targets: peft's default targets for the model type
      (peft/utils/constants.py: TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING);
      adapters in fp32 under a 16-bit base (get_peft_model's autocast_adapter_dtype=True).
  prefix  peft.get_peft_model(model, PrefixTuningConfig(num_virtual_tokens, task_type=
      "CAUSAL_LM")): a trainable key and value prefix per layer, passed to attention as a
      transformers Cache.
  freeze  every parameter frozen but those of the top `trainable_layers` decoder layers
      (the embeddings, the final norm and the head stay frozen).
  none    every parameter trained (the model is returned as it is).

Under FakeTensorMode (device "trace") peft's Module.to() calls cannot swap fake parameters:
`fake_safe_module_moves` does what they do on one device. bitsandbytes' parameter classes
cannot hold a fake tensor, so quantized bases run on real tensors only (cpu, cuda).

On the CPU bitsandbytes takes branches that a GPU does not; `gpu_code_paths` makes a CPU run
take the GPU's (see there), as faithful.py does for transformers' packed-sequence check.
"""

from __future__ import annotations

import contextlib
import logging
import warnings

import torch

from ..scenario import Peft
from .models import decoder_layers

# bitsandbytes' 4-bit block size (BitsAndBytesConfig and Params4bit default) and LLM.int8's
# outlier threshold (BitsAndBytesConfig.llm_int8_threshold default).
BLOCKSIZE_4BIT = 64
INT8_THRESHOLD = 6.0

# peft's task type for a causal LM (PeftModelForCausalLM).
TASK_TYPE = "CAUSAL_LM"


def _quiet_bitsandbytes() -> None:
    """bitsandbytes logs warnings on import (peft imports it when installed: a CPU kernel it
    would fetch from the Hugging Face Hub, which is never reached here) and on every 8-bit
    matmul of a bf16 input; keep stderr for the engine's progress and errors."""
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)


class UnsupportedPeft(ValueError):
    """A PEFT setting that cannot run here (a clear one-line message)."""


def check(peft: Peft, device: str, checkpointing: bool = False) -> None:
    """Refuse, before anything is built, what cannot run."""
    if peft.method == "prefix" and checkpointing:
        # transformers' GradientCheckpointingLayer sets past_key_values=None in a
        # checkpointed layer (modeling_layers.py), while the attention mask was built for
        # the prefix + sequence: the forward fails (transformers 5.23, peft 0.21.2).
        raise UnsupportedPeft("prefix tuning with checkpointing (--keep below 1) does not run: transformers "
                              "drops the prefix key/values in checkpointed layers")
    if peft.weights_bits != 16 and peft.method not in ("lora", "prefix"):
        raise UnsupportedPeft(f"weights_bits {peft.weights_bits}: quantized base weights are frozen; "
                              "train them with --peft lora or --peft prefix")
    if peft.weights_bits != 16 and device == "trace":
        raise UnsupportedPeft("weights_bits 8 and 4 run on real tensors only (bitsandbytes' quantized "
                              "parameters cannot hold fake tensors): use --device cpu for a small model, "
                              "or cuda")


def prepare(model, peft: Peft, device: str, dtype: torch.dtype):
    """The model a user of `peft` fine-tunes, built from the plain causal LM `model`
    (its weights in `dtype`); on `device` ("cpu", "cuda" or "trace")."""
    check(peft, device)
    _quiet_bitsandbytes()
    if peft.weights_bits != 16:
        quantize_linears(model, peft, dtype)
    if peft.method == "none":
        return model
    if peft.method == "freeze":
        freeze_all_but_top_layers(model, peft.trainable_layers)
        return model
    from peft import LoraConfig, PrefixTuningConfig, get_peft_model
    if peft.method == "lora":
        config = LoraConfig(r=peft.lora_rank, lora_alpha=peft.lora_alpha, lora_dropout=peft.lora_dropout,
                            target_modules=lora_target_modules(peft.lora_targets), task_type=TASK_TYPE)
    else:
        config = PrefixTuningConfig(num_virtual_tokens=peft.prefix_tokens, task_type=TASK_TYPE)
    moves = fake_safe_module_moves() if device == "trace" else contextlib.nullcontext()
    try:
        with moves, warnings.catch_warnings():
            # peft's notes on a Conv1D target (GPT-2) and transformers' deprecation of
            # is_gradient_checkpointing, which peft reads, are not the user's concern here.
            warnings.simplefilter("ignore", UserWarning)
            warnings.simplefilter("ignore", FutureWarning)
            # Peft.adapter_dtype "model": the adapters stay in the model's dtype.
            return get_peft_model(model, config, autocast_adapter_dtype=peft.adapter_dtype == "fp32")
    except ValueError as err:   # e.g. no default targets for this model type
        raise UnsupportedPeft(f"peft: {str(err)[:200]}") from None


def lora_target_modules(targets: tuple):
    """peft's target_modules for Peft.lora_targets: None (the model type's default),
    "all-linear", or the list of module names."""
    if not targets:
        return None
    if targets == ("all-linear",):
        return "all-linear"
    if "all-linear" in targets:
        raise UnsupportedPeft("lora_targets: all-linear cannot be combined with module names")
    return list(targets)


def freeze_all_but_top_layers(model, k: int) -> None:
    """requires_grad only for the parameters of the last k decoder layers."""
    layers = decoder_layers(model)
    if k > len(layers):
        raise UnsupportedPeft(f"trainable_layers: the model has {len(layers)} decoder layers, got {k}")
    for p in model.parameters():
        p.requires_grad_(False)
    for layer in layers[len(layers) - k:]:
        for p in layer.parameters():
            p.requires_grad_(True)


def added_parameters(peft: Peft, trainable: int) -> int:
    """Parameters a method adds to the base model: LoRA's adapters and the prefix are new
    parameters (all trainable); top-layer training adds none."""
    return trainable if peft.method in ("lora", "prefix") else 0


def trainable_parameters(model) -> list:
    return [p for p in model.parameters() if p.requires_grad]


# ------------------------------------------------------------------ quantized base weights

def _linears_to_quantize(model) -> list[str]:
    """Names of the nn.Linear / Conv1D modules transformers quantizes: all but the output
    embedding (and what is tied to it)."""
    from transformers.pytorch_utils import Conv1D
    head = model.get_output_embeddings()
    return [name for name, m in model.named_modules()
            if (type(m) is torch.nn.Linear or isinstance(m, Conv1D)) and m is not head]


def quantize_linears(model, peft: Peft, dtype: torch.dtype) -> None:
    """Replace each linear to quantize by bitsandbytes' Linear4bit or Linear8bitLt holding its
    weight quantized (on the weight's device), as transformers' Bnb4bitQuantize /
    Bnb8bitQuantize do at load time."""
    import bitsandbytes as bnb
    from transformers.pytorch_utils import Conv1D
    for name in _linears_to_quantize(model):
        old = model.get_submodule(name)
        weight = old.weight.detach()
        if isinstance(old, Conv1D):      # Conv1D keeps (in, out); bitsandbytes wants (out, in)
            weight = weight.t().contiguous()
        out_features, in_features = weight.shape
        device = weight.device
        has_bias = old.bias is not None
        if peft.weights_bits == 4:
            new = bnb.nn.Linear4bit(in_features, out_features, has_bias, compute_dtype=dtype,
                                    compress_statistics=peft.double_quant, quant_type=peft.quant,
                                    device="meta")
            new.weight = bnb.nn.Params4bit(weight, requires_grad=False, blocksize=BLOCKSIZE_4BIT,
                                           compress_statistics=peft.double_quant, quant_type=peft.quant,
                                           module=new).to(device)
            # On a CPU with AVX512-BF16, an eval forward without autograd repacks the weights
            # into a CPU-only layout; a GPU never does (gpu_code_paths).
            new.support_avx512bf16_for_cpu = False
        else:
            new = bnb.nn.Linear8bitLt(in_features, out_features, has_bias, has_fp16_weights=False,
                                      threshold=INT8_THRESHOLD, device="meta")
            new.weight = bnb.nn.Int8Params(weight.to("cpu"), requires_grad=False,
                                           has_fp16_weights=False).to(device)
        if has_bias:
            new.bias = torch.nn.Parameter(old.bias.detach(), requires_grad=False)
        new.requires_grad_(False)
        model.set_submodule(name, new)
        del old, weight


def quant_state_tensors(model) -> list:
    """The tensors of quantized weights that live outside parameters and buffers: a 4-bit
    weight's QuantState (absmax, code, and with double quantization the offset and the
    second-level absmax and code), an 8-bit weight's row statistics (SCB, fp32 per output
    row). The int8 weight itself (CB) is the parameter's data."""
    out, seen = [], set()

    def add(t):
        if isinstance(t, torch.Tensor) and id(t) not in seen:
            seen.add(id(t))
            out.append(t)

    for module in model.modules():
        weight = getattr(module, "weight", None)
        state = getattr(weight, "quant_state", None)
        if state is not None:
            for t in (state.absmax, state.code, state.offset):
                add(t)
            if state.state2 is not None:
                add(state.state2.absmax)
                add(state.state2.code)
        # An 8-bit weight's row statistics: on the weight until the first forward, then on the
        # layer's MatmulLtState (Linear8bitLt.init_8bit_state moves CB and SCB there).
        add(getattr(weight, "SCB", None))
        add(getattr(getattr(module, "state", None), "SCB", None))
    return out


# ------------------------------------------------------------------ code paths

@contextlib.contextmanager
def fake_safe_module_moves():
    """nn.Module.to() as it acts on one device, for fake parameters.

    peft moves every new adapter to its base layer's device and dtype with Module.to()
    (tuners_utils.BaseTunerLayer._move_adapter_to_device_of_base_layer, lora.model._replace_module).
    Under FakeTensorMode Module._apply swaps each parameter's tensor, which fails for a fake
    parameter that a weak reference points to. On one device a move changes nothing, and a
    cast to another dtype gives each floating parameter and buffer a new tensor of that dtype:
    this does exactly that, replacing them (requires_grad kept)."""
    original = torch.nn.Module.to

    def to(self, *args, **kwargs):
        _, dtype, _, _ = torch._C._nn._parse_to(*args, **kwargs)
        if dtype is None:
            return self
        for module in self.modules():
            for key, p in list(module._parameters.items()):
                if p is not None and (p.is_floating_point() or p.is_complex()) and p.dtype != dtype:
                    module._parameters[key] = torch.nn.Parameter(p.detach().to(dtype), requires_grad=p.requires_grad)
            for key, b in list(module._buffers.items()):
                if b is not None and (b.is_floating_point() or b.is_complex()) and b.dtype != dtype:
                    module._buffers[key] = b.to(dtype)
        return self

    torch.nn.Module.to = to
    try:
        yield
    finally:
        torch.nn.Module.to = original


@contextlib.contextmanager
def gpu_code_paths(peft: Peft, device: str):
    """On the CPU, make bitsandbytes run what it runs on a GPU, visibly to MemTracker.

    * 8-bit: `bitsandbytes.matmul` trains through MatMul8bitFp on CPU tensors (the weight
      dequantized, the input kept); a GPU always runs MatMul8bitLt (the input quantized to
      int8 row-wise, int8 matmul). Here MatMul8bitLt runs on the CPU too.
    * 4-bit: MemTracker (a TorchDispatchMode) sees a bitsandbytes op as one op and not the
      tensors its kernel allocates. The CPU kernel of gemm_4bit, and the CUDA one for more
      than 1536 rows (bitsandbytes/backends/cuda/ops.py: _dequant_linear_fallback; fewer rows
      use a fused kernel with no dequantized weight), dequantize the block statistics and the
      weight and then run F.linear. Here gemm_4bit runs as that composition
      (backends/default/ops.py: _gemm_4bit_default_impl), so that each temporary is tracked.
    * 8-bit's int8_scaled_mm and int8_mixed_scaled_mm have no CUDA kernel of their own: their
      default composition runs on a GPU; here it runs as the same composition, op by op.
    Nothing changes on a GPU, or for a 16-bit base.
    """
    if peft.weights_bits == 16 or device == "cuda":
        yield
        return
    import bitsandbytes as bnb
    from bitsandbytes.autograd._functions import MatMul8bitLt, MatmulLtState
    from bitsandbytes.backends.default.ops import _gemm_4bit_default_impl

    ops = torch.ops.bitsandbytes

    def int8_scaled_mm(A, B, row_stats, col_stats, bias=None, dtype=None):
        # bitsandbytes/backends/default/ops.py, int8_scaled_mm's default kernel
        out_i32 = torch.ops.bitsandbytes.int8_linear_matmul.default(A, B)
        return ops.int8_mm_dequant.default(out_i32, row_stats, col_stats, dtype=dtype or torch.float16, bias=bias)

    def int8_mixed_scaled_mm(A, CA, CB, SCA, SCB, outlier_cols=None, bias=None):
        # bitsandbytes/backends/default/ops.py, int8_mixed_scaled_mm's default kernel
        subB = None
        if outlier_cols is not None and outlier_cols.numel():
            subA = A[:, outlier_cols].contiguous()
            subB = ops.int8_vectorwise_dequant.default(CB[:, outlier_cols].contiguous(), SCB).to(A.dtype).t()
        else:
            subA = torch.empty(0, device=A.device, dtype=A.dtype)
        output = int8_scaled_mm(CA, CB, SCA, SCB, bias=bias, dtype=A.dtype)
        if subB is not None:
            output = output.addmm(subA, subB)
        return output, subA

    # The call sites look the ops up on torch.ops.bitsandbytes at every call
    # (`torch.ops.bitsandbytes.gemm_4bit.default(...)`), in forward, in backward and in a
    # checkpointed layer's recompute inside backward: replacing the namespace's attributes
    # reaches all three (a TorchFunctionMode is not active inside the autograd engine).
    compositions = {"gemm_4bit": _gemm_4bit_default_impl, "int8_scaled_mm": int8_scaled_mm,
                    "int8_mixed_scaled_mm": int8_mixed_scaled_mm}
    originals = {name: getattr(ops, name) for name in compositions}

    class Composed:
        """Stands for an op packet: called as the packet or as its .default overload."""

        def __init__(self, fn):
            self.default = fn
            self._fn = fn

        def __call__(self, *args, **kwargs):
            return self._fn(*args, **kwargs)

    def matmul(A, B, out=None, state=None, threshold=0.0, bias=None):
        # bitsandbytes.autograd._functions.matmul without its CPU/XPU branch to MatMul8bitFp
        state = state or MatmulLtState()
        if threshold > 0.0:
            state.threshold = threshold
        return MatMul8bitLt.apply(A, B, out, bias, state)

    original = bnb.matmul
    bnb.matmul = matmul
    for name, fn in compositions.items():
        setattr(ops, name, Composed(fn))
    try:
        yield
    finally:
        bnb.matmul = original
        for name, op in originals.items():
            setattr(ops, name, op)
