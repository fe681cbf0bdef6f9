"""Activation memory: what one forward pass keeps for the backward pass, tensor by tensor.

Each function returns bytes. The recipes follow the Hugging Face `transformers` 5.x code
of each family (docs/equations.md lists them with the line of code that keeps each
tensor); they were read off `torch.autograd.graph.saved_tensors_hooks` traces, not
fitted. What differs between families comes from the shape's description (`s.arch`, an
`Architecture`: capacity/architecture.py), never from the family's name. Symbols: N = b·s tokens, h hidden, A = a·d query width, K = a_kv·d key/value
width, I MLP width, V vocabulary, p bytes per value of the model's dtype.

Kernel differences that change what is kept (`Scenario.target`):
- dropout: CUDA's fused kernel keeps a 1-byte mask; the CPU kernel keeps a noise tensor
  of the input's dtype.
- LayerNorm statistics (mean, 1/std per token): fp32 on CUDA, the input dtype on the CPU.
- SDPA with dropout: the CPU has no fused kernel for it and falls back to the math path
  in fp32; CUDA's flash kernel keeps only q, k, v, the output and the log-sum-exp.
"""

from __future__ import annotations

from dataclasses import dataclass

from . import moe
from .architecture import LayerKind
from .params import Linear, attention_linears, mlp_linears
from .scenario import Scenario
from .shape import ModelShape
from .trainable import FULL, LayerGrads, adapter_bytes, autocast_peft

FP32 = 4
INT64 = 8


def _mask_bytes(sc: Scenario) -> int:
    """Bytes per element that a dropout keeps: CUDA's fused kernel a bool mask, the CPU a noise tensor."""
    return 1 if sc.target == "cuda" else _act_bytes(sc)


def _act_bytes(sc: Scenario) -> int:
    """Bytes per activation value: the model's dtype (16-bit under mixed precision)."""
    return sc.bytes_per_value


def stream_bytes(sc: Scenario) -> int:
    """Bytes per value of the residual stream and the norms: the dtype, or fp32 under mixed
    precision (the fp32 embedding's output flows through fp32 residual adds, and autocast
    runs the norms in fp32)."""
    return FP32 if sc.mixed_precision else _act_bytes(sc)


def projection_inputs_bytes(s: ModelShape, sc: Scenario, readers: int, trained: bool = True) -> int:
    """What the linears reading one normalised tensor keep of it for their weights'
    gradients: the tensor once (pNh), or under mixed precision each linear's own 16-bit
    cast of it (autocast caches casts of weights only), readers · 2Nh. Frozen linears keep
    nothing (a linear saves its input only for its weight's gradient)."""
    if not trained:
        return 0
    n, h = sc.tokens, s.hidden_size
    return readers * _act_bytes(sc) * n * h if sc.mixed_precision else _act_bytes(sc) * n * h


def _attention_readers(s: ModelShape) -> int:
    return len(s.arch.attention.qkv)      # one fused qkv projection, or q, k and v


def _mlp_readers(s: ModelShape, kind: LayerKind | None = None) -> int:
    if (kind or s.layers[0]).moe:
        return 1                          # the router (the experts' gather keeps none of it)
    return len(s.arch.mlp.inputs)         # gate and up, or one up (fc1) projection


def _stat_bytes(sc: Scenario) -> int:
    """LayerNorm's saved mean and rstd: fp32 on CUDA, the input dtype on the CPU."""
    return FP32 if sc.target == "cuda" else _act_bytes(sc)


def norm_saved_bytes(s: ModelShape, sc: Scenario, with_input: bool = True, input_bytes: int | None = None,
                     input_grad: bool = True, weight_grad: bool = True) -> int:
    """One normalisation of the N·h residual stream, excluding its output (the next linear
    keeps that). `input_bytes`: bytes per value of its input, the stream's by default (a
    norm on a branch output reads the branch's 16-bit output under mixed precision).

    RMSNorm (Llama, Mistral, Qwen2): x in fp32 (4Nh), 1/rms per token (4N), and the
    normalised x cast back to the input dtype (pNh) that the scale multiplies.
    RMSNorm scaled in fp32 (Gemma, OLMo 2): x in fp32 (4Nh), 1/rms (4N), the normalised x
    in fp32 (4Nh), and with a weight offset, (1 + weight) in fp32 (4h).
    LayerNorm: its input (pNh) and two statistics per token.
    input_grad / weight_grad (a frozen base): whether the norm's input requires grad, whether
    its weight is trained (autograd saves a tensor only for a gradient that is needed).
    """
    p = stream_bytes(sc) if input_bytes is None else input_bytes
    return _norm_saved_bytes(s, sc, sc.tokens, s.hidden_size, p, with_input, input_grad, weight_grad)


def _norm_saved_bytes(s: ModelShape, sc: Scenario, rows: int, width: int, p: int, with_input: bool = True,
                      input_grad: bool = True, weight_grad: bool = True) -> int:
    """The family's norm (s.arch.norm) over `rows` rows of `width` values of p bytes each.

    LlamaRMSNorm.forward: `x.to(float32)` (4·rows·width, kept by pow and mul; the input
    itself when it is fp32), `torch.rsqrt(variance + eps)` (4·rows), and
    `weight * x.to(input_dtype)`, whose backward keeps the normalised x in the input dtype.
    Scaled in fp32 (GemmaRMSNorm: `output * (1.0 + self.weight.float())`; Olmo2RMSNorm:
    `(self.weight * x).to(input_dtype)`): the scale keeps the normalised x in fp32, and
    (1 + weight) in fp32 (4·width) with a weight offset.
    LayerNorm: its input, and mean and rstd per row (fp32 under autocast and on CUDA).
    With a frozen base: the fp32 x and 1/rms (and 1 + weight) are kept for the input's
    gradient, the normalised x for the weight's; LayerNorm keeps its input and statistics
    when either is needed (native_layer_norm saves them for both).
    """
    norm = s.arch.norm
    if norm.kind == "rmsnorm":
        if norm.scale_in_fp32:
            for_input = FP32 * rows * width + FP32 * rows + (FP32 * width if norm.weight_offset else 0)
            return (for_input if input_grad else 0) + (FP32 * rows * width if weight_grad else 0)
        return (FP32 * rows * width + FP32 * rows if input_grad else 0) + (p * rows * width if weight_grad else 0)
    if not (input_grad or weight_grad):
        return 0
    stats = FP32 if sc.mixed_precision else _stat_bytes(sc)   # autocast runs layer_norm in fp32
    return (p * rows * width if with_input else 0) + 2 * stats * rows


def qk_norm_saved_bytes(s: ModelShape, sc: Scenario, g: LayerGrads = FULL) -> int:
    """The q and k norms (Attention.qk_norm), each the family's norm applied to the
    projection's 16-bit (or fp32) output: per head (Qwen3Attention:
    `self.q_norm(self.q_proj(x).view(b, s, a, d))`), N·a rows of d for q and N·a_kv rows
    for k; over the projection (Olmo2Attention: `self.q_norm(self.q_proj(x))`), N rows of
    a·d and of a_kv·d. Nothing else of them is kept: the rotation's products keep cos and
    sin, the matmuls (or SDPA) the rotated copies as before. With a frozen base (g), as any
    norm: what its input's gradient needs when q (k) requires grad, the normalised input
    when its weight is trained."""
    att = s.arch.attention
    qk = att.qk_norm
    if not qk:
        return 0
    # The norms read the projections' outputs, before a prefix is concatenated to k.
    norm1_out = layer_flow(s, g).norm1_out
    names = att.qkv * 3 if att.fused_qkv else att.qkv
    q_grad, k_grad = (g.output_grad(name, norm1_out) for name in names[:2])
    n, p = sc.tokens, _act_bytes(sc)
    if qk == "head":
        return (_norm_saved_bytes(s, sc, n * s.num_heads, s.head_dim, p, True, q_grad, g.weights)
                + _norm_saved_bytes(s, sc, n * s.num_kv_heads, s.head_dim, p, True, k_grad, g.weights))
    return _norm_saved_bytes(s, sc, n, s.q_dim, p, True, q_grad, g.weights) \
        + _norm_saved_bytes(s, sc, n, s.kv_dim, p, True, k_grad, g.weights)


BRANCH_OUTPUT_NORMS = ("branch_out", "sandwich")


def branch_output_norm_bytes(s: ModelShape, sc: Scenario) -> int:
    """One norm on a branch's output before its residual add (OLMo 2's
    post_attention_layernorm and post_feedforward_layernorm: `x + norm(attn(x))`; Gemma 2/3's
    post_attention_layernorm and post_feedforward_layernorm beside their pre-norms), what it
    keeps of the branch's output (16-bit under mixed precision); 0 where the placement has
    none. Its backward runs before the branch's own, so these bytes are freed by then."""
    if s.arch.norm_placement not in BRANCH_OUTPUT_NORMS:
        return 0
    return norm_saved_bytes(s, sc, input_bytes=_act_bytes(sc))


def norm_backward_extra_bytes(s: ModelShape, sc: Scenario, rows: int, width: int, p: int) -> int:
    """An RMSNorm's backward at its highest point, beyond what the norm keeps (its
    `_norm_saved_bytes`) and the incoming gradient. Autograd runs the norm's ops backwards in
    fp32 (LlamaRMSNorm, Olmo2RMSNorm, GemmaRMSNorm are composites: to, pow, mean, rsqrt,
    mul): the scale's backward frees the normalised x; at pow's backward (the last), the
    gradient reaching x through `x * rsqrt(...)`, mean's expanded gradient (`div`), x¹
    (`pow`), its product with 2 and with the gradient (`mul`, `mul`) are live at once:
    5 fp32 tensors of the norm's size beside the fp32 x it keeps (traced: Olmo2RMSNorm).
    LayerNorm's backward is one fused kernel: nothing here."""
    norm = s.arch.norm
    if norm.kind != "rmsnorm":
        return 0
    normalised = (FP32 if norm.scale_in_fp32 else p) * rows * width
    return 5 * FP32 * rows * width - normalised


def branch_output_norm_backward_bytes(s: ModelShape, sc: Scenario) -> int:
    """norm_backward_extra_bytes of one branch-output norm (OLMo 2, Gemma 2/3). It runs first
    in its branch's backward, with the branch's saved tensors all still live (recomputed, in
    a checkpointed layer): a peak candidate of its own. 0 where the placement has none."""
    if s.arch.norm_placement not in BRANCH_OUTPUT_NORMS:
        return 0
    return norm_backward_extra_bytes(s, sc, sc.tokens, s.hidden_size, _act_bytes(sc))


def qk_fp32_under_autocast(s: ModelShape, sc: Scenario, kind: LayerKind | None = None) -> bool:
    """Whether q and k reach the attention in fp32 under mixed precision: autocast's
    projections give 16-bit q and k; a q/k norm of the Llama kind promotes them to fp32
    (`weight * x.to(input_dtype)` with the fp32 weight), and so does the rotation with
    fp32 cos/sin tables (`q * cos`: the tables take the fp32 embedding output's dtype),
    unless it casts back (OLMo 2: `q_embed.to(q_type)`, Architecture.rotary_fp32). The
    attention then casts them back to 16 bits as a new tensor."""
    if not sc.mixed_precision:
        return False
    arch, kind = s.arch, kind or s.layers[0]
    fp32 = bool(arch.attention.qk_norm) and arch.norm.kind == "rmsnorm" and not arch.norm.scale_in_fp32
    if arch.positions == "rope" and kind.rope and not arch.rotary_fp32:
        fp32 = True
    return fp32


def repeated_kv_bytes(s: ModelShape, sc: Scenario, kind: LayerKind | None = None) -> int:
    """Storage behind k and v (together) as eager attention's matmuls keep them: repeat_kv
    expands the a_kv heads to a and reshapes, which copies (pNA each) unless the result is
    still a view: with one key/value head and batch 1 the expanded heads merge with stride 0
    (pNK each). Under mixed precision autocast's cast to 16 bits of such a view makes a
    full-size tensor when the source is fp32 (k, when qk_fp32_under_autocast), 2NA.
    Over b·keys rows (key_length: P + s after a prefix)."""
    return sum(repeated_kv_parts(s, sc, kind))


def repeated_kv_parts(s: ModelShape, sc: Scenario, kind: LayerKind | None = None) -> tuple[int, int]:
    """repeated_kv_bytes as (k, v)."""
    rows, p = sc.batch * key_length(s, sc), _act_bytes(sc)
    if s.num_kv_heads == 1 and sc.batch == 1:
        k = p * rows * (s.q_dim if qk_fp32_under_autocast(s, sc, kind) else s.kv_dim)
        return k, p * rows * s.kv_dim
    return p * rows * s.q_dim, p * rows * s.q_dim


def key_length(s: ModelShape, sc: Scenario) -> int:
    """Keys each query attends over: the context, plus the prefix's virtual tokens under
    prefix tuning (peft passes them as past key/values)."""
    return sc.seq + (sc.peft.prefix_tokens if sc.peft.method == "prefix" else 0)


def sdpa_mask_present(s: ModelShape, sc: Scenario, kind: LayerKind | None = None) -> bool:
    """Whether SDPA gets an explicit mask in a layer of `kind`: a sliding-window layer once the
    context reaches the window (masking_utils._ignore_causal_mask_sdpa keeps is_causal only
    while kv_length < the window); full causal attention without padding never does."""
    kind = kind or s.layers[0]
    return sc.attention == "sdpa" and kind.sliding_window > 0 and sc.seq >= kind.sliding_window


def sdpa_repeats_kv(s: ModelShape, sc: Scenario, kind: LayerKind | None = None) -> bool:
    """Whether transformers' sdpa_attention_forward repeats grouped key/value heads
    (repeat_kv) instead of passing enable_gqa: when a mask is passed, or the head dim is
    over 256 (integrations/sdpa_attention.use_gqa_in_sdpa)."""
    return s.num_kv_heads != s.num_heads and (sdpa_mask_present(s, sc, kind) or s.head_dim > 256)


def sdpa_math_path(s: ModelShape, sc: Scenario, kind: LayerKind | None = None) -> bool:
    """Whether SDPA runs torch's math path (_scaled_dot_product_attention_math: scaled copies
    of q and k, the softmax kept) instead of a fused kernel. On the CPU: with attention
    dropout, which no fused CPU kernel takes. On CUDA: in fp32 when transformers passes
    enable_gqa (grouped-query heads, no mask, head dim <= 256: sdpa_repeats_kv false): the
    memory-efficient kernel, the only fused one that takes fp32, refuses enable_gqa, and
    flash and cuDNN take 16-bit inputs only. Measured with torch._fused_sdp_choice on an
    H100 (torch 2.11, bench/cuda_mechanisms.py); under mixed precision autocast hands SDPA
    16-bit inputs (a fused kernel)."""
    if sc.attention != "sdpa":
        return False
    if sc.target == "cpu":
        return s.attn_dropout > 0
    return (_act_bytes(sc) == FP32 and s.num_kv_heads != s.num_heads and key_length(s, sc) == sc.seq
            and not sdpa_repeats_kv(s, sc, kind))


def math_noise_bytes(sc: Scenario) -> int:
    """Bytes per score of what the math path's dropout keeps beside its output: the CPU a
    noise tensor in fp32 (its math path runs in fp32); CUDA's native_dropout a bool mask."""
    return FP32 if sc.target == "cpu" else 1


@dataclass(frozen=True)
class _Flow:
    """Which tensors of one decoder layer require grad, front to back (from LayerGrads)."""

    norm1_out: bool          # the (first) norm's output, read by q, k, v
    q: bool
    k: bool
    v: bool
    attn_out: bool           # the output projection's output
    norm2_in: bool           # the MLP's norm's input
    norm2_out: bool          # the MLP's input
    mlp_in: dict             # MLP input projection name -> its output requires grad
    product: bool            # the down projection's input
    mlp_out: bool

    @property
    def probs(self) -> bool:
        return self.q or self.k

    @property
    def attn_ctx(self) -> bool:
        """The attention's output (the output projection's input)."""
        return self.probs or self.v


def layer_flow(s: ModelShape, g: LayerGrads) -> _Flow:
    """Which tensors of a decoder layer require grad, given what is trained in it."""
    arch = s.arch
    att, mlp = arch.attention, arch.mlp
    norm1_out = g.input or g.weights
    q, k, v = (g.output_grad(name, norm1_out) for name in (att.qkv * 3 if att.fused_qkv else att.qkv))
    if g.prefix:
        k = v = True          # torch.cat with the trainable prefix
    ctx = q or k or v
    attn_out = g.output_grad(att.out, ctx)
    if arch.parallel_residual and arch.shared_norm:
        norm2_in, norm2_out = g.input, norm1_out
    elif arch.parallel_residual:
        norm2_in, norm2_out = g.input, g.input or g.weights
    else:
        norm2_in = g.input or attn_out
        norm2_out = norm2_in or g.weights
    mlp_in = {name: g.output_grad(name, norm2_out) for name in mlp.inputs}
    product = any(mlp_in.values())
    return _Flow(norm1_out, q, k, v, attn_out, norm2_in, norm2_out, mlp_in, product,
                 g.output_grad(mlp.out, product))


def dropout_noise_bytes(s: ModelShape, sc: Scenario, kind: LayerKind | None = None) -> int:
    """Bytes per element of what attention dropout keeps: CUDA's fused kernel a bool mask;
    the CPU a noise tensor in the dtype of the probabilities, which is the query's
    (`softmax(..., dtype=float32).to(query.dtype)`): fp32 under mixed precision when q
    reaches the attention in fp32."""
    if sc.target == "cuda":
        return 1
    return FP32 if qk_fp32_under_autocast(s, sc, kind) else _act_bytes(sc)


def attention_saved_bytes(s: ModelShape, sc: Scenario, kind: LayerKind | None = None, g: LayerGrads = FULL) -> int:
    """Attention, from its input (excluded) to the output projection's input.

    Eager: q, k and v as the two matmuls keep them (each pNA: k and v repeated to all
    heads, copied when the layout needs it), the softmax output (fp32 4·b·a·s² in every
    family but GPT-2, whose softmax stays in dtype), the probabilities cast back to dtype
    (p·b·a·s², kept by the second matmul), attention dropout, and the output projection's
    input (pNA).
    The scores' soft-cap (Gemma 2: cap·tanh(scores / cap)) keeps tanh's output (in dtype).
    SDPA (flash or CPU flash): q (pNA), k and v (pNK each: grouped-query heads are not
    repeated, unless sdpa_repeats_kv: repeated_kv_bytes), the output (pNA) and the
    log-sum-exp (fp32 4·b·a·s). The flash kernels lay their output out like q: (b, s, a, d)
    after an elementwise rotation, so the output projection's input is the same tensor; after
    a rotation by concatenation the `.transpose(1, 2).contiguous()` copies it
    (_query_is_contiguous_by_head: pNA more). A sliding-window layer with a mask
    (sdpa_mask_present): the boolean mask converted to a float one in the query's dtype,
    (b, 1, s, s), which the kernel keeps for backward, one per layer.
    A fused qkv projection with rotary positions (NeoX, Phi-3) keeps more: v is a view into
    the fused projection, which stays alive whole beside the rotated copies of q and k.
    With a frozen base (g) each is kept only for a gradient that is needed: QK^T keeps q for
    k's gradient and k for q's, PV keeps the probabilities for v's gradient and v for the
    probabilities', the softmax its output when the scores need a gradient, the output
    projection its input only when its weight is trained; SDPA keeps all it saves when any
    of q, k, v needs a gradient. After a prefix the keys are P + s long (key_length).
    """
    f = layer_flow(s, g)
    b, seq, n, p = sc.batch, sc.seq, sc.tokens, _act_bytes(sc)
    a, qd, kvd = s.num_heads, s.q_dim, s.kv_dim
    keys = key_length(s, sc)
    scores = b * a * seq * keys
    dropout = s.attn_dropout > 0
    out_input = p * n * qd if g.weights else 0
    prefix = keys != seq
    # With a prefix, k and v are the cache's torch.cat copies, P + s long (the KV cache:
    # memory.bp_kv_cache_bytes counts what it holds beyond what attention keeps).
    k_kept, v_kept = repeated_kv_parts(s, sc, kind)
    # v stays a view of a fused projection (NeoX) unless the cache's cat copied it.
    v_view = _v_is_view_of_fused_qkv(s) and not prefix
    math = sdpa_math_path(s, sc, kind)
    if sc.attention == "sdpa" and not math:
        if not f.attn_ctx:
            return out_input
        if prefix:
            # An explicit mask (the prefix breaks is_causal): transformers then repeats the
            # key/value heads itself (use_gqa_in_sdpa: repeat_kv copies them, unless there is
            # one, whose expanded view the kernel takes as it is), and the mask, made per
            # layer as a float tensor, is kept by the kernel.
            sdpa_kv = k_kept + v_kept if kv_repeat_copies(s, sc) else 2 * p * b * keys * kvd
            if autocast_peft(sc):
                # Under autocast the cache is fp32 (the fp32 prefix promotes torch.cat), and
                # SDPA keeps its 16-bit casts of k and v, at every head: a cast materialises
                # one key/value head's expanded view too.
                sdpa_kv = 2 * p * b * keys * qd
            qkv = p * n * qd + sdpa_kv + p * b * seq * keys
        elif sdpa_repeats_kv(s, sc, kind) and s.num_kv_heads == 1:
            # One key/value head: repeat_kv's reshape of the expanded tensor is a view (the
            # size-1 head merges), which the kernel takes as it is at any batch (eager's
            # matmul copies it at batch > 1: repeated_kv_parts).
            qkv = p * n * (qd + 2 * kvd)
        elif sdpa_repeats_kv(s, sc, kind):
            qkv = p * n * qd + repeated_kv_bytes(s, sc, kind)
        else:
            qkv = p * n * (qd + 2 * kvd)
        if v_view and not sdpa_repeats_kv(s, sc, kind):
            qkv += p * n * (qd + kvd)
        # The output projection's input, a copy of the output (_query_is_contiguous_by_head),
        # kept for its weight's gradient.
        out_copy = out_input if _query_is_contiguous_by_head(s, kind) else 0
        mask = p * b * seq * seq if sdpa_mask_present(s, sc, kind) and not prefix else 0
        return qkv + p * n * qd + out_copy + FP32 * b * a * seq + mask
    if math:
        # The math path (CPU with dropout, CUDA fp32 with enable_gqa): the scaled q and k and
        # v at every head, the softmax, and with dropout its noise and the dropped probs, in fp32.
        probs = FP32 * scores + ((FP32 + math_noise_bytes(sc)) * scores if dropout else 0)
        return (2 * FP32 * n * qd + math_v_bytes(s, sc) + probs if f.attn_ctx else 0) + out_input
    q_kept = p * n * qd
    if prefix and s.arch.attention.fused_qkv and s.arch.positions != "rope" and sc.batch == 1:
        q_kept = p * n * (qd + 2 * kvd)   # q, a view of GPT-2's c_attn output, keeps all of it
    qkv = (q_kept if f.k else 0) + (k_kept if f.q else 0) + (v_kept if f.probs else 0)
    if v_view and sc.batch == 1 and s.num_kv_heads == s.num_heads and f.probs:
        # v is a strided view into the fused qkv projection; at batch 1 (and with no
        # repeat_kv copy) the matmul's reshape of it is still a view, so the whole projection
        # (3·pNA) is kept instead of a copy of v.
        qkv += 2 * p * n * qd
    noise = dropout_noise_bytes(s, sc, kind) * scores if dropout and f.probs else 0
    if not s.arch.attention.softmax_fp32 and not sc.mixed_precision:
        # softmax output in dtype, kept by the softmax and (without dropout) by PV
        probs = p * scores if (f.probs or (f.v and not dropout)) else 0
        if dropout:
            probs += noise + (p * scores if f.v else 0)
    else:
        probs = FP32 * scores if (f.probs or (f.v and not dropout and p == FP32)) else 0   # softmax(dtype=float32)
        if dropout:
            probs += noise + (p * scores if f.v else 0)
        elif p != FP32:
            probs += p * scores if f.v else 0     # .to(dtype) copy kept by the second matmul
    # The soft-cap's tanh output, kept by its backward when the scores need a gradient.
    softcap = p * scores if s.arch.attention.logit_softcap and f.probs else 0
    return qkv + softcap + probs + out_input


def kv_repeat_copies(s: ModelShape, sc: Scenario) -> bool:
    """Whether the k and v attention keeps are repeat_kv copies of the projected (or cached)
    ones rather than those tensors themselves: grouped-query heads are repeated (eager,
    except one key/value head at batch 1, a view; SDPA only with an explicit mask, except
    one key/value head)."""
    if s.num_kv_heads == s.num_heads:
        return False
    if sc.attention == "sdpa":
        # SDPA gets an explicit mask only after a prefix; then one key/value head expands to
        # a view (the size-1 head dimension merges), more heads are copied.
        return key_length(s, sc) != sc.seq and s.num_kv_heads > 1
    return repeated_kv_bytes(s, sc) != 2 * _act_bytes(sc) * sc.batch * key_length(s, sc) * s.kv_dim


def _query_is_contiguous_by_head(s: ModelShape, kind: LayerKind | None = None) -> bool:
    """The query SDPA gets is laid out (b, a, s, d) in memory: a rotation by concatenation
    (Architecture.rotary_by_concat) ends with `torch.cat((q_rot, q_pass), dim=-1)` (NeoX,
    Phi, Phi-3 even with the whole head rotated), a new contiguous tensor. The CPU flash
    kernel lays its output out like the query, so the output projection's input
    (`attn_output.transpose(1, 2).reshape(...)`) is a copy, kept beside the output. A
    query rotated elementwise on the transposed view of its projection (Llama) or a view of
    it (GPT-2) is laid out (b, s, a, d): the output projection reads the output itself."""
    kind = kind or s.layers[0]
    return s.arch.positions == "rope" and bool(kind.rope) and s.arch.rotary_by_concat


def _v_is_view_of_fused_qkv(s: ModelShape) -> bool:
    """q and k are rotated into new tensors while v stays a view of one fused qkv projection
    (GPTNeoXAttention), so whatever keeps v keeps the whole projection. Without rotary
    positions (GPT-2's c_attn) q, k and v are all views of it: nothing more is kept."""
    return s.arch.attention.fused_qkv and s.arch.positions == "rope"


def attention_backward_extra_bytes(s: ModelShape, sc: Scenario, kind: LayerKind | None = None,
                                   g: LayerGrads = FULL, v_held: bool = False) -> int:
    """Eager attention's backward, beyond the tensors the layer keeps, at the larger of two
    moments. The output projection's backward has run first: its input (p·N·A) is freed.
    - The second matmul's backward (probabilities @ v), its two gradients made: the
      incoming gradient (p·N·A), the probabilities' gradient and v's (p·N·A, at all heads),
      in the matmul's dtype.
    - The softmax's backward: the second matmul's and the dropout's saved tensors are freed
      (v as the matmul kept it, v_freed_bytes; the dropped or cast probabilities, when they
      are not the softmax output itself; the dropout's noise); v's gradient waits for
      repeat_kv's backward; the softmax backward holds its incoming gradient (fp32 after the
      cast back, in dtype for GPT-2's dtype softmax) and its result (fp32 on the copy path,
      see below).
    SDPA with dropout on the CPU runs the math path (no fused kernel), all of it in fp32.
    SDPA otherwise: the gradients of q, k and v (of every head where k and v were repeated:
    sdpa_repeats_kv), less the output projection's input when it is a copy
    (_query_is_contiguous_by_head).
    With a frozen base (g) only what was kept is freed: the output projection's input when
    its weight is trained, v when the probabilities need a gradient, unless a held KV cache
    still references it (v_held); over P + s keys after a prefix."""
    f = layer_flow(s, g)
    b, seq, n, p = sc.batch, sc.seq, sc.tokens, _act_bytes(sc)
    a, qd, kvd = s.num_heads, s.q_dim, s.kv_dim
    dropout = s.attn_dropout > 0
    math = sdpa_math_path(s, sc, kind)
    if sc.attention == "sdpa" and not math:
        # The output projection's input, when it is a copy of the output, is freed by then.
        grads = p * n * 3 * qd if sdpa_repeats_kv(s, sc, kind) else p * n * (qd + 2 * kvd)
        return grads - (p * n * qd if _query_is_contiguous_by_head(s, kind) and g.weights else 0)
    keys = key_length(s, sc)
    scores = b * a * seq * keys
    fp32_softmax = s.arch.attention.softmax_fp32
    pm = FP32 if math else p                    # the second matmul's operands and gradients
    grad = FP32 if fp32_softmax or math else p
    # softmax(dtype=float32) runs as a copy to fp32 and an fp32 softmax, whose backward
    # returns fp32 (the cast back to dtype is the next node); on CUDA fp16 has a direct
    # half-to-float kernel whose backward returns fp16.
    copy_path = math or (fp32_softmax and not (sc.target == "cuda" and sc.dtype == "fp16"))
    result = FP32 if copy_path else p
    kept_by_matmul_freed = pm if (dropout or (fp32_softmax and p != FP32)) else 0
    noise_freed = (math_noise_bytes(sc) if math else dropout_noise_bytes(s, sc, kind)) if dropout else 0
    v_grad, out_proj_input = pm * n * qd, (p * n * qd if g.weights else 0)
    if not f.probs or v_held:
        v_freed = 0
    elif math:
        v_freed = math_v_bytes(s, sc)
    elif keys != seq:
        v_freed = repeated_kv_parts(s, sc, kind)[1]   # the cache's cat copy of v, repeated
    else:
        v_freed = v_freed_bytes(s, sc, kind)
    at_second_matmul = pm * n * qd + pm * scores + v_grad - out_proj_input
    at_softmax = (grad + result - kept_by_matmul_freed - noise_freed) * scores + v_grad - out_proj_input - v_freed
    return max(at_second_matmul, at_softmax)


def math_v_bytes(s: ModelShape, sc: Scenario) -> int:
    """SDPA's math path on CUDA (sdpa_math_path: enable_gqa repeats v, a copy at every head,
    4NA). Its CPU math path (torch's _scaled_dot_product_attention_math, taken with dropout):
    it scales q and k into new fp32 tensors and keeps v as it gets it, upcast to fp32 (a
    copy at all heads, 4NA); in fp32 nothing upcasts it, and v as the model made it is kept:
    at batch 1 a view of one fused qkv projection (GPT-2's c_attn) holds all of it."""
    n = sc.tokens
    if sc.target == "cuda":   # enable_gqa: the math path repeats v to every head (a copy)
        return FP32 * n * s.q_dim
    if _act_bytes(sc) == FP32 and s.arch.attention.fused_qkv and sc.batch == 1:
        return FP32 * n * (s.q_dim + 2 * s.kv_dim)
    return FP32 * n * s.q_dim


def v_freed_bytes(s: ModelShape, sc: Scenario, kind: LayerKind | None = None) -> int:
    """Eager attention: the storage the second matmul kept for v, freed by its backward.
    Separate projections: v as repeat_kv gave it (its copy at all heads, p·N·A, or at one
    key/value head and batch 1 the stride-0 view of the projection, p·N·K). One fused
    projection: at batch 1 the matmul keeps a view of it; with rotary positions (NeoX) q and
    k were rotated into copies, so v's view held the whole projection alone (3 parts freed,
    with full heads); without (GPT-2), q's and k's views still hold it (nothing freed). At
    batch > 1 the matmul's reshape copied v (p·N·A)."""
    n, p = sc.tokens, _act_bytes(sc)
    if s.arch.attention.fused_qkv:
        if sc.batch > 1:
            return p * n * s.q_dim
        if _v_is_view_of_fused_qkv(s):
            return p * n * (s.q_dim + 2 * s.kv_dim) if s.num_kv_heads == s.num_heads else p * n * s.q_dim
        return 0
    if s.num_kv_heads == 1 and sc.batch == 1:
        return p * n * s.kv_dim
    return p * n * s.q_dim


def attention_forward_extra_bytes(s: ModelShape, sc: Scenario) -> int:
    """Eager attention's forward with autograd, at the softmax, beyond the tensors the layer
    keeps: the fp32 copy softmax(dtype=float32) makes of the scores (none when they are
    fp32 already, or fp16 on CUDA), less the output projection's input, not yet made.
    A softmax in dtype (GPT-2's) makes no copy. SDPA: nothing but its kept outputs."""
    b, seq, n, p = sc.batch, sc.seq, sc.tokens, _act_bytes(sc)
    if sc.attention == "sdpa" or not s.arch.attention.softmax_fp32:
        return 0
    copy = 0 if (p == FP32 or (sc.target == "cuda" and sc.dtype == "fp16")) else FP32
    return copy * b * s.num_heads * seq * key_length(s, sc) - p * n * s.q_dim


def returned_probabilities_extra_bytes(s: ModelShape, sc: Scenario, kind: LayerKind | None = None) -> int:
    """Eager attention returns its probabilities to the decoder layer, which holds them
    (`hidden_states, _ = self.self_attn(...)`) through the MLP: beyond what the layer keeps
    only when the second matmul kept a cast of them instead, i.e. the dropped probabilities
    in fp32 under mixed precision (q in fp32, qk_fp32_under_autocast): 4·b·a·s². They count
    in a checkpointed layer's recomputed forward, which runs until its last saved tensor."""
    if sc.attention != "eager" or not s.attn_dropout > 0 or not qk_fp32_under_autocast(s, sc, kind):
        return 0
    return FP32 * sc.batch * s.num_heads * sc.seq * sc.seq


def recompute_end_extra_bytes(s: ModelShape, sc: Scenario, kind: LayerKind | None = None) -> int:
    """A checkpointed layer's recomputed forward runs until its last saved tensor (the down
    projection's input, or its 16-bit weight copy): what the layer holds then beyond what
    it keeps: the probabilities its attention returned (returned_probabilities_extra_bytes)
    and, under mixed precision, the MLP's input (the fp32 output of its norm, held as the
    MLP's argument while autocast's 16-bit casts of it are what the projections keep)."""
    mlp_input = stream_bytes(sc) * sc.tokens * s.hidden_size \
        if sc.mixed_precision and s.arch.norm_placement != "branch_out" else 0
    return returned_probabilities_extra_bytes(s, sc, kind) + mlp_input


# What an activation keeps of its input for the input's gradient, in MLP widths (its output
# apart): silu, gelu and gelu_tanh their input; relu nothing (its backward reads its
# output); gelu_new, a Python composite 0.5·x·(1 + tanh(c·(x + 0.044715·x³))), x, tanh(...),
# 0.5·x and 1 + tanh(...).
_ACTIVATION_KEEPS = {"silu": 1, "gelu": 1, "gelu_tanh": 1, "relu": 0, "gelu_new": 4}


def mlp_saved_bytes(s: ModelShape, sc: Scenario, kind: LayerKind | None = None, g: LayerGrads = FULL) -> int:
    """MLP, from its input (excluded) to the down projection's input (included).
    A mixture-of-experts layer keeps its sparse block's set (capacity/moe.py).

    Gated (Llama...): gate output (kept by the activation), activation output and up
    output (kept by the product), product (kept by down): 4·pNI.
    ReLU (OPT): its output, kept by both ReLU and fc2: pNI.
    GELU exact (NeoX) or tanh: input and output: 2·pNI.
    gelu_new (GPT-2, Phi), a Python composite 0.5·x·(1 + tanh(c·(x + 0.044715·x³))):
    x, tanh(...), 0.5·x, 1 + tanh(...) and the output: 5·pNI.
    With a frozen base (g): the activation keeps what its input's gradient needs when that
    input requires grad; the product keeps each factor for the other's gradient; the down
    projection keeps its input only when its weight is trained.
    """
    if (kind or s.layers[0]).moe:
        return moe.saved_bytes(s, sc)
    f = layer_flow(s, g)
    n, inter, p = sc.tokens, s.intermediate_size, _act_bytes(sc)
    mlp = s.arch.mlp
    width = p * n * inter
    down_input = width if g.weights else 0
    if mlp.gated:
        # A fused gate/up projection (Phi-3): one output, chunked into gate and up.
        names = mlp.inputs * 2 if mlp.fused_gate_up else mlp.inputs
        gate, up = (f.mlp_in[name] for name in names)
        # act(gate) keeps gate's output; gate·up keeps act(gate) for up's gradient and up
        # for act(gate)'s.
        return (width if gate else 0) + (width if up else 0) + (width if gate else 0) + down_input
    up = f.mlp_in[mlp.inputs[0]]
    kept = _ACTIVATION_KEEPS[mlp.activation] * width if up else 0
    if mlp.activation == "relu":
        return kept + (width if (up or g.weights) else 0)   # relu's output, kept by relu and fc2
    return kept + down_input


def _lora_mask_bytes(sc: Scenario) -> int:
    """LoRA dropout of the adapter's input (fp32, or the model's dtype: adapter_bytes): CUDA
    keeps a bool mask, the CPU a noise tensor of the input's dtype."""
    return 1 if sc.target == "cuda" else adapter_bytes(sc)


def lora_saved_bytes(s: ModelShape, sc: Scenario, linears: list[Linear], input_grad: bool,
                     shared_input: bool = False) -> int:
    """What the LoRA adapters of `linears`, all reading one tensor, keep for backward
    (peft/tuners/lora/layer.py Linear.forward: `x = self._cast_input_dtype(x, fp32)`;
    `result + lora_B(lora_A(dropout(x))) * scaling`).

    Each adapter: lora_A keeps its input (the fp32 cast of x, 4·N·in: under a 16-bit base
    every adapter makes its own cast; under an fp32 one the cast is x itself, one tensor for
    all adapters reading it, and none when `shared_input` says the base keeps it already),
    lora_B keeps lora_A's output (4·N·r). With dropout > 0, lora_A keeps the dropout's output
    instead (4·N·in per adapter) and the dropout its mask (CUDA) or noise (CPU) when x
    requires grad."""
    if not linears:
        return 0
    n, r, ab = sc.tokens, sc.peft.lora_rank, adapter_bytes(sc)
    if autocast_peft(sc):
        # Under autocast (an fp32 model, mixed precision) the adapters compute in 16 bits:
        # lora_A keeps its own 16-bit cast of x (autocast caches casts of leaves only; a
        # 16-bit x is first cast to the adapters' fp32 by peft, then back), lora_B keeps
        # lora_A's 16-bit output. (LoRA dropout is refused under autocast: check_peft.)
        p = _act_bytes(sc)
        return sum(p * n * (lin.fan_in + r) for lin in linears)
    total = sum(ab * n * r for _ in linears)
    if sc.peft.lora_dropout > 0:
        m = _lora_mask_bytes(sc) if input_grad else 0
        return total + sum((ab + m) * n * lin.fan_in for lin in linears)
    if sc.bytes_per_value == ab:
        return total + (0 if shared_input else ab * n * linears[0].fan_in)
    return total + sum(ab * n * lin.fan_in for lin in linears)


def quantized_inputs_bytes(s: ModelShape, sc: Scenario, kind: LayerKind | None = None,
                           g: LayerGrads = FULL) -> dict[str, int]:
    """An 8-bit base keeps the input of each of its linears (MatMul8bitLt's ctx.tensors)
    whenever that input requires grad, once for the linears reading one tensor (q, k, v;
    gate and up): the attention's and the MLP's norm outputs, the attention output, the
    product the down projection reads. A 4-bit base keeps none. By part, as
    layer_saved_bytes. These escape checkpointing's saved-tensor hooks."""
    if sc.peft.weights_bits != 8:
        return {"attention": 0, "mlp": 0}
    f = layer_flow(s, g)
    n, p = sc.tokens, _act_bytes(sc)
    arch = s.arch
    out_kept = sc.attention == "sdpa" and f.attn_ctx and not sdpa_math_path(s, sc, kind)
    attn = (p * n * s.hidden_size if f.norm1_out else 0) + (p * n * s.q_dim if f.attn_ctx and not out_kept else 0)
    mlp = p * n * s.intermediate_size if f.product else 0
    if not (arch.parallel_residual and arch.shared_norm):
        mlp += p * n * s.hidden_size if f.norm2_out else 0
    return {"attention": attn, "mlp": mlp}


def relu_output_kept(s: ModelShape, g: LayerGrads = FULL) -> bool:
    """Whether a ReLU MLP (OPT) keeps its output, the tensor the down projection reads
    (mlp_saved_bytes): a LoRA adapter on the down projection computing in the same dtype
    keeps that same tensor, adding nothing (lora_saved_bytes' shared_input)."""
    mlp = s.arch.mlp
    if mlp.gated or mlp.activation != "relu":
        return False
    return bool(layer_flow(s, g).mlp_in[mlp.inputs[0]]) or g.weights


def mlp_freed_bytes(s: ModelShape, sc: Scenario, kind: LayerKind | None = None, g: LayerGrads = FULL) -> int:
    """What the MLP part keeps that is released before its activation's backward: the
    output projection's backward has run, freeing its kept input (the product, kept for its
    weight's gradient, unless the activation keeps that same tensor: ReLU's output) and its
    adapter's tensors."""
    f = layer_flow(s, g)
    down = mlp_linears(s, kind)[-1]
    adapter = lora_saved_bytes(s, sc, [down] if down.name in g.lora else [], f.product,
                               shared_input=relu_output_kept(s, g))
    relu_shares = not s.arch.mlp.gated and s.arch.mlp.activation == "relu"
    product = _act_bytes(sc) * sc.tokens * s.intermediate_size if g.weights and not relu_shares else 0
    return adapter + product


def attention_freed_bytes(s: ModelShape, sc: Scenario, kind: LayerKind | None = None, g: LayerGrads = FULL) -> int:
    """What the attention part keeps that is released before its softmax's backward beyond
    what attention_backward_extra_bytes nets out (the output projection's input, v): the
    output projection's LoRA adapter's tensors (its backward has run)."""
    f = layer_flow(s, g)
    o_proj = attention_linears(s, kind)[-1]
    if o_proj.name not in g.lora:
        return 0
    out_kept = sc.attention == "sdpa" and f.attn_ctx and not sdpa_math_path(s, sc, kind)
    return lora_saved_bytes(s, sc, [o_proj], f.attn_ctx, shared_input=out_kept)


def layer_saved_bytes(s: ModelShape, sc: Scenario, kind: LayerKind | None = None,
                      g: LayerGrads = FULL) -> dict[str, int]:
    """Bytes one decoder layer (of `kind`: the model's first by default) keeps for
    backward, by part (attention part, MLP part), given what needs a gradient in it (g;
    full fine-tuning by default). A mixture-of-experts kind keeps its sparse block in place
    of the dense MLP's set (full fine-tuning only); a sliding-window layer keeps what full
    attention keeps, and under SDPA past its window its own float mask and repeated key/value
    heads (attention_saved_bytes); a layer without RoPE keeps the same bytes. Gemma 2/3's
    norms on the branch outputs beside the pre-norms (full fine-tuning only:
    trainable.check_peft) keep what branch_output_norm_bytes says, in each part."""
    n, h = sc.tokens, s.hidden_size
    arch = s.arch
    f = layer_flow(s, g)
    mask = _mask_bytes(sc) * n * h if s.resid_dropout > 0 else 0
    attn_mask, mlp_mask = (mask if f.attn_out else 0), (mask if f.mlp_out else 0)
    attn = attention_saved_bytes(s, sc, kind, g) + qk_norm_saved_bytes(s, sc, g)
    mlp = mlp_saved_bytes(s, sc, kind, g)
    attn_in = projection_inputs_bytes(s, sc, _attention_readers(s), g.weights)
    mlp_in = projection_inputs_bytes(s, sc, _mlp_readers(s, kind), g.weights)
    if arch.norm_placement == "branch_out":
        # OLMo 2: q, k, v read the layer input and the MLP the residual sum themselves; each
        # branch's output is normalised before its residual add. (Full fine-tuning only:
        # trainable.check_peft.)
        out_norm = branch_output_norm_bytes(s, sc)
        return {"attention": attn_in + attn + out_norm + attn_mask, "mlp": mlp_in + mlp + out_norm + mlp_mask}
    qkv, (o_proj,) = attention_linears(s, kind)[:-1], attention_linears(s, kind)[-1:]
    mlp_lin = mlp_linears(s, kind)
    ins, down = mlp_lin[:-1], mlp_lin[-1]

    def adapted(linears):
        return [lin for lin in linears if lin.name in g.lora]

    # The output projection's input is sdpa's saved output (the same tensor) when attention
    # keeps its tensors: an fp32 adapter or an 8-bit base keeping it adds nothing.
    out_kept = sc.attention == "sdpa" and f.attn_ctx and not sdpa_math_path(s, sc, kind)
    o_extra = lora_saved_bytes(s, sc, adapted([o_proj]), f.attn_ctx, shared_input=out_kept)
    down_extra = lora_saved_bytes(s, sc, adapted([down]), f.product, shared_input=relu_output_kept(s, g))
    quantized = quantized_inputs_bytes(s, sc, kind, g)
    norm_in = norm_saved_bytes(s, sc, input_grad=g.input, weight_grad=g.weights)
    if arch.parallel_residual and arch.shared_norm:
        # Phi: one LayerNorm feeds both branches; its output is kept once (or cast per linear).
        readers = qkv + ins
        attn_part = norm_in + projection_inputs_bytes(s, sc, len(readers), g.weights) \
            + lora_saved_bytes(s, sc, adapted(readers), f.norm1_out) + attn + o_extra + attn_mask
        mlp_part = mlp + down_extra + mlp_mask
    else:
        attn_part = norm_in + attn_in + lora_saved_bytes(s, sc, adapted(qkv), f.norm1_out) + attn + o_extra + attn_mask
        # NeoX: both LayerNorms read the layer input, kept once.
        norm2 = norm_saved_bytes(s, sc, with_input=not arch.parallel_residual,
                                 input_grad=f.norm2_in, weight_grad=g.weights)
        mlp_part = norm2 + mlp_in + lora_saved_bytes(s, sc, adapted(ins), f.norm2_out) + mlp + down_extra + mlp_mask
    attn_part += quantized["attention"]
    mlp_part += quantized["mlp"]
    if arch.norm_placement == "sandwich":
        # Gemma 2/3: Llama's pre-norms, and each branch's output normalised before its
        # residual add.
        out_norm = branch_output_norm_bytes(s, sc)
        attn_part += out_norm
        mlp_part += out_norm
    if quantized["mlp"] and not arch.mlp.gated and arch.mlp.activation == "relu" and f.product:
        # ReLU keeps its output (mlp_saved_bytes), the tensor the down projection reads:
        # an 8-bit base keeping that input keeps the same tensor.
        mlp_part -= _act_bytes(sc) * n * s.intermediate_size
    return {"attention": attn_part, "mlp": mlp_part}


def layer_activation_bytes(s: ModelShape, sc: Scenario, kind: LayerKind | None = None,
                           g: LayerGrads = FULL) -> int:
    """A_layer: total bytes one decoder layer keeps for backward."""
    return sum(layer_saved_bytes(s, sc, kind, g).values())


def mask_kind(kind: LayerKind) -> str:
    """The mask a layer of `kind` reads: "sliding" (a sliding-window layer) or "full"."""
    return "sliding" if kind.sliding_window else "full"


def attention_masks(s: ModelShape, sc: Scenario) -> dict[str, int]:
    """The masks the model's forward builds once and holds through its layer loop, by the
    attention they serve ("full", "sliding"): one per kind of attention its layers use, and
    those it builds whatever its layers are (Architecture.masks_always_built). Eager
    (masking_utils.eager_mask): an additive (b, 1, s, s) mask in the embedding output's
    dtype (`dtype=inputs_embeds.dtype`: fp32 under mixed precision), (b, 1, s, P + s) after
    a prefix (key_length). SDPA without padding (sdpa_mask): none for full attention
    (is_causal); for a sliding window, none while the context is shorter than the window,
    then a boolean (1, 1, s, s) mask expanded to the batch (s² bytes)."""
    kinds = sorted({mask_kind(k) for k in s.layer_counts()} | set(s.arch.masks_always_built))
    windows = [k.sliding_window for k in s.layer_counts() if k.sliding_window]
    out = {}
    for m in kinds:
        if sc.attention == "eager":
            out[m] = stream_bytes(sc) * sc.batch * sc.seq * key_length(s, sc)
        elif m == "sliding" and windows and sc.seq >= min(windows):
            out[m] = sc.seq * sc.seq
        else:
            out[m] = 0
    return out


def causal_mask_bytes(s: ModelShape, sc: Scenario) -> int:
    """Every mask the model's forward builds, held through a forward pass (attention_masks)."""
    return sum(attention_masks(s, sc).values())


def rotary_table_bytes(s: ModelShape, sc: Scenario) -> int:
    """Bytes per value of the cos and sin tables: the embedding output's dtype
    (LlamaRotaryEmbedding.forward: `cos.to(dtype=x.dtype)`), so fp32 under mixed precision
    (the fp32 embedding's output), or fp32 always (Architecture.rotary_fp32: OLMo 2)."""
    return FP32 if s.arch.rotary_fp32 else stream_bytes(sc)


def rotary_tables(s: ModelShape, sc: Scenario) -> dict[str, int]:
    """The cos and sin tables for the rotated share of the head dim, by table: 2 · s · d_rot
    values each, for each distinct rotary table the layers use (LayerKind.rope: Gemma 3's
    sliding layers have their own, "local"), made once per forward by the model (which
    makes its global table even when no layer applies it: SmolLM3Model)."""
    if s.arch.positions != "rope":
        return {}
    tables = {kind.rope for kind in s.layer_counts() if kind.rope} or {"global"}
    rot = int(s.head_dim * s.arch.rotary_fraction)
    return {name: 2 * rotary_table_bytes(s, sc) * sc.seq * rot for name in sorted(tables)}


def rotary_bytes(s: ModelShape, sc: Scenario) -> int:
    """Every rotary table's cos and sin (rotary_tables)."""
    return sum(rotary_tables(s, sc).values())


def norm_keeps_layer_input(s: ModelShape, sc: Scenario) -> bool:
    """Whether the layer's own saved tensors include the layer input itself: a first norm
    that keeps it (LayerNorm always; RMSNorm when the stream is already fp32, so its upcast
    is a no-op), or, with norms only on the branch outputs (OLMo 2), the q, k and v
    projections reading it directly (except under autocast, where each keeps its own 16-bit
    cast). Then a checkpointed layer's kept input and its recomputed activations share
    that tensor."""
    if s.arch.norm_placement == "branch_out":
        return not sc.mixed_precision
    return s.arch.norm.kind == "layernorm" or stream_bytes(sc) == FP32


def checkpoint_saved_bytes(s: ModelShape, sc: Scenario) -> int:
    """A checkpointed layer keeps only its input hidden states, in the residual stream's
    dtype (pNh; fp32 under mixed precision); the mask and the rotary tables it also keeps
    are shared by all layers and counted once. (An 8-bit base keeps more:
    quantized_inputs_bytes.)"""
    return stream_bytes(sc) * sc.tokens * s.hidden_size


def embedding_saved_bytes(s: ModelShape, sc: Scenario, output_grad: bool = True, trained: bool = True) -> int:
    """Before the first layer: the token ids (int64, kept by a trained embedding and held by
    the step anyway), the embedding dropout's mask when the embedding's output requires
    grad, OPT-350m's project_in input when it is trained, and Gemma's scale sqrt(h), a 0-d
    tensor in the stream's dtype that the product keeps for the trained table's gradient
    (GemmaModel's `normalizer`; Gemma2TextScaledWordEmbedding:
    `* self.embed_scale.to(self.weight.dtype)`)."""
    n, h, p = sc.tokens, s.hidden_size, _act_bytes(sc)
    total = INT64 * n + (stream_bytes(sc) if s.arch.embedding_scale and trained else 0)
    if s.embd_dropout > 0 and output_grad:
        total += _mask_bytes(sc) * n * h
    if s.embed_dim != s.hidden_size and trained:
        total += p * n * s.embed_dim
    return total


def head_saved_bytes(s: ModelShape, sc: Scenario, input_grad: bool = True, trained: bool = True) -> int:
    """After the last layer: the final norm and, when the head is trained, the LM head's
    input (pNh, or pNe through OPT-350m's project_out); the final soft-cap's tanh output
    (final_logit_softcap_bytes). input_grad: the last layer's output requires grad."""
    n, h, p = sc.tokens, s.hidden_size, _act_bytes(sc)
    total = norm_saved_bytes(s, sc, input_grad=input_grad, weight_grad=trained) if s.arch.final_norm else 0
    if trained:
        total += p * n * h
        if s.embed_dim != s.hidden_size:
            total += p * n * s.embed_dim
    return total + final_logit_softcap_bytes(s, sc)


def final_logit_softcap_bytes(s: ModelShape, sc: Scenario) -> int:
    """The final logits' soft-cap (Gemma2ForCausalLM: logits / cap, tanh, · cap): tanh keeps
    its output for backward, pNV in the logits' dtype; the scalar products keep nothing."""
    return _act_bytes(sc) * sc.tokens * s.vocab_size if s.arch.final_logit_softcap else 0


def logits_bytes(s: ModelShape, sc: Scenario) -> int:
    """Logits in dtype (pNV), held by the model's output for the rest of the step; with a
    mixture of experts' auxiliary loss, every router's logits too (capacity/moe.py)."""
    routers = moe.router_logits_held_bytes(s, sc) if s.moe is not None else 0
    return _act_bytes(sc) * sc.tokens * s.vocab_size + routers


def loss_saved_bytes(s: ModelShape, sc: Scenario) -> int:
    """Cross-entropy upcasts logits to fp32; log_softmax keeps its fp32 output (4NV);
    nll_loss keeps the shifted labels (int64)."""
    return FP32 * sc.tokens * s.vocab_size + INT64 * sc.tokens


def korthikanti_layer_bytes(s: ModelShape, sc: Scenario) -> int:
    """Textbook per-layer activations (Korthikanti et al. 2022, eq. 2), scaled to the
    model's dtype: s·b·h·(34 + 5·a·s/h) bytes at 16 bits with dropout and MLP width 4h."""
    return int(sc.tokens * s.hidden_size * (34 + 5 * s.num_heads * sc.seq / s.hidden_size)
               * sc.bytes_per_value / 2)
