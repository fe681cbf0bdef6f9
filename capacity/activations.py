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

from . import moe
from .architecture import LayerKind
from .scenario import Scenario
from .shape import ModelShape

FP32 = 4
INT64 = 8


def _mask_bytes(sc: Scenario) -> int:
    """Bytes per element that a dropout keeps: CUDA's fused kernel a bool mask, the CPU a noise tensor."""
    return 1 if sc.target == "cuda" else _act_bytes(sc)


def _act_bytes(sc: Scenario) -> int:
    """Bytes per activation value: the model's dtype (16-bit under mixed precision)."""
    return sc.bytes_per_value


def _stream_bytes(sc: Scenario) -> int:
    """Bytes per value of the residual stream and the norms: the dtype, or fp32 under mixed
    precision (the fp32 embedding's output flows through fp32 residual adds, and autocast
    runs the norms in fp32)."""
    return FP32 if sc.mixed_precision else _act_bytes(sc)


def projection_inputs_bytes(s: ModelShape, sc: Scenario, readers: int) -> int:
    """What the linears reading one normalised tensor keep of it: the tensor once (pNh), or
    under mixed precision each linear's own 16-bit cast of it (autocast caches casts of
    weights only), readers · 2Nh."""
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


def norm_saved_bytes(s: ModelShape, sc: Scenario, with_input: bool = True) -> int:
    """One normalisation, excluding its output (the next linear keeps that).

    RMSNorm (Llama, Mistral, Qwen2): x in fp32 (4Nh), 1/rms per token (4N), and the
    normalised x cast back to dtype (pNh) that the scale multiplies.
    RMSNorm scaled in fp32 (Gemma): x in fp32 (4Nh), 1/rms (4N), the normalised x in fp32
    (4Nh), and with a weight offset, (1 + weight) in fp32 (4h).
    LayerNorm: its input (pNh) and two statistics per token.
    """
    n, h, p = sc.tokens, s.hidden_size, _stream_bytes(sc)
    norm = s.arch.norm
    if norm.kind == "rmsnorm":
        if norm.scale_in_fp32:
            return FP32 * n * h + FP32 * n + FP32 * n * h + (FP32 * h if norm.weight_offset else 0)
        return FP32 * n * h + FP32 * n + p * n * h
    stats = FP32 if sc.mixed_precision else _stat_bytes(sc)   # autocast runs layer_norm in fp32
    return (p * n * h if with_input else 0) + 2 * stats * n


def qk_norm_saved_bytes(s: ModelShape, sc: Scenario) -> int:
    """The RMSNorms of q and k (Qwen3MoeRMSNorm / OlmoeRMSNorm on the projections' outputs,
    before RoPE), each as a norm over width W = a·d (q) or a_kv·d (k): the input in fp32 (4NW),
    1/rms per row (4N per head with `qk_norm="head"`, 4N with "projection") and the
    normalised input cast back to the projection's dtype (pNW), which the scale keeps. The
    projection's dtype is the 16-bit one under autocast. (RoPE keeps none of its input:
    q·cos and rotate_half(q)·sin keep only cos and sin.)"""
    mode = s.arch.attention.qk_norm
    if not mode:
        return 0
    n, p = sc.tokens, _act_bytes(sc)
    rows = {"head": (s.num_heads, s.num_kv_heads), "projection": (1, 1)}[mode]
    return sum(FP32 * n * w + FP32 * n * r + p * n * w for w, r in zip((s.q_dim, s.kv_dim), rows))


def repeated_kv_bytes(s: ModelShape, sc: Scenario) -> int:
    """Storage behind k (or v) as eager attention's matmul keeps it: repeat_kv expands the
    a_kv heads to a and reshapes, which copies (pNA) unless the result is still a view:
    with one key/value head and batch 1 the expanded heads merge with stride 0 (pNK)."""
    n, p = sc.tokens, _act_bytes(sc)
    if s.num_kv_heads == 1 and sc.batch == 1:
        return p * n * s.kv_dim
    return p * n * s.q_dim


def attention_saved_bytes(s: ModelShape, sc: Scenario) -> int:
    """Attention, from its input (excluded) to the output projection's input.

    Eager: q, k and v as the two matmuls keep them (each pNA: k and v repeated to all
    heads, copied when the layout needs it), the softmax output (fp32 4·b·a·s² in every
    family but GPT-2, whose softmax stays in dtype), the probabilities cast back to dtype
    (p·b·a·s², kept by the second matmul), attention dropout, and the output projection's
    input (pNA).
    SDPA (flash or CPU flash): q (pNA), k and v (pNK each: grouped-query heads are not
    repeated), the output (pNA) and the log-sum-exp (fp32 4·b·a·s). The flash kernels lay
    their output out as (b, s, a, d), so the output projection's input is the same tensor.
    A fused qkv projection with rotary positions (NeoX) keeps more: v is a view into the
    fused projection, which stays alive whole beside the rotated copies of q and k.
    With q/k norms, their sets too (qk_norm_saved_bytes).
    """
    return _attention_core_saved_bytes(s, sc) + qk_norm_saved_bytes(s, sc)


def _attention_core_saved_bytes(s: ModelShape, sc: Scenario) -> int:
    b, seq, n, p = sc.batch, sc.seq, sc.tokens, _act_bytes(sc)
    a, qd, kvd = s.num_heads, s.q_dim, s.kv_dim
    scores = b * a * seq * seq
    dropout = s.attn_dropout > 0
    if sc.attention == "sdpa" and not (dropout and sc.target == "cpu"):
        qkv = p * n * (qd + 2 * kvd)
        if _v_is_view_of_fused_qkv(s):
            qkv += p * n * (qd + kvd)
        return qkv + p * n * qd + FP32 * b * a * seq
    if sc.attention == "sdpa":
        # CPU math fallback (dropout): q, k, v, softmax, noise and dropped probs in fp32.
        return 3 * FP32 * n * qd + 3 * FP32 * scores + p * n * qd
    qkv = p * n * qd + 2 * repeated_kv_bytes(s, sc)
    if _v_is_view_of_fused_qkv(s) and sc.batch == 1 and s.num_kv_heads == s.num_heads:
        # v is a strided view into the fused qkv projection; at batch 1 (and with no
        # repeat_kv copy) the matmul's reshape of it is still a view, so the whole projection
        # (3·pNA) is kept instead of a copy of v.
        qkv += 2 * p * n * qd
    if not s.arch.attention.softmax_fp32 and not sc.mixed_precision:
        probs = p * scores                       # softmax output in dtype, kept by softmax and matmul
        if dropout:
            probs += _mask_bytes(sc) * scores + p * scores
    else:
        probs = FP32 * scores                    # softmax(dtype=float32) output
        if dropout:
            probs += _mask_bytes(sc) * scores + p * scores
        elif p != FP32:
            probs += p * scores                  # .to(dtype) copy kept by the second matmul
    return qkv + probs + p * n * qd


def _v_is_view_of_fused_qkv(s: ModelShape) -> bool:
    """q and k are rotated into new tensors while v stays a view of one fused qkv projection
    (GPTNeoXAttention), so whatever keeps v keeps the whole projection. Without rotary
    positions (GPT-2's c_attn) q, k and v are all views of it: nothing more is kept."""
    return s.arch.attention.fused_qkv and s.arch.positions == "rope"


def attention_backward_extra_bytes(s: ModelShape, sc: Scenario) -> int:
    """Eager attention's backward at the softmax, beyond the tensors the layer keeps: the
    incoming gradient (fp32 after the cast back, in dtype for GPT-2's dtype softmax), the
    softmax backward's result (fp32 on the copy path, see below), less the tensor the second matmul kept, which is
    freed once that matmul's backward has run (the dropped or cast probabilities, when they
    are not the softmax output itself). SDPA: the gradients of q, k and v."""
    b, seq, n, p = sc.batch, sc.seq, sc.tokens, _act_bytes(sc)
    a, qd, kvd = s.num_heads, s.q_dim, s.kv_dim
    if sc.attention == "sdpa" and not (s.attn_dropout > 0 and sc.target == "cpu"):
        return p * n * (qd + 2 * kvd)
    fp32_softmax = s.arch.attention.softmax_fp32
    grad = FP32 if fp32_softmax else p
    # softmax(dtype=float32) runs as a copy to fp32 and an fp32 softmax, whose backward
    # returns fp32 (the cast back to dtype is the next node); on CUDA fp16 has a direct
    # half-to-float kernel whose backward returns fp16.
    copy_path = fp32_softmax and not (sc.target == "cuda" and sc.dtype == "fp16")
    result = FP32 if copy_path else p
    kept_by_matmul_freed = p if (s.attn_dropout > 0 or (fp32_softmax and p != FP32)) else 0
    return (grad + result - kept_by_matmul_freed) * b * a * seq * seq + p * n * qd


def attention_forward_extra_bytes(s: ModelShape, sc: Scenario) -> int:
    """Eager attention's forward with autograd, at the softmax, beyond the tensors the layer
    keeps: the fp32 copy softmax(dtype=float32) makes of the scores (none when they are
    fp32 already, or fp16 on CUDA), less the output projection's input, not yet made.
    A softmax in dtype (GPT-2's) makes no copy. SDPA: nothing but its kept outputs."""
    b, seq, n, p = sc.batch, sc.seq, sc.tokens, _act_bytes(sc)
    if sc.attention == "sdpa" or not s.arch.attention.softmax_fp32:
        return 0
    copy = 0 if (p == FP32 or (sc.target == "cuda" and sc.dtype == "fp16")) else FP32
    return copy * b * s.num_heads * seq * seq - p * n * s.q_dim


def mlp_saved_bytes(s: ModelShape, sc: Scenario, kind: LayerKind | None = None) -> int:
    """MLP, from its input (excluded) to the down projection's input (included).
    A mixture-of-experts layer keeps its sparse block's set (capacity/moe.py).

    Gated (Llama...): gate output (kept by the activation), activation output and up
    output (kept by the product), product (kept by down): 4·pNI.
    ReLU (OPT): its output, kept by both ReLU and fc2: pNI.
    GELU exact (NeoX) or tanh: input and output: 2·pNI.
    gelu_new (GPT-2, Phi), a Python composite 0.5·x·(1 + tanh(c·(x + 0.044715·x³))):
    x, tanh(...), 0.5·x, 1 + tanh(...) and the output: 5·pNI.
    """
    if (kind or s.layers[0]).moe:
        return moe.saved_bytes(s, sc)
    n, inter, p = sc.tokens, s.intermediate_size, _act_bytes(sc)
    if s.arch.mlp.gated:
        return 4 * p * n * inter
    per_act = {"relu": 1, "gelu": 2, "gelu_tanh": 2, "silu": 2, "gelu_new": 5}[s.arch.mlp.activation]
    return per_act * p * n * inter


def layer_saved_bytes(s: ModelShape, sc: Scenario, kind: LayerKind | None = None) -> dict[str, int]:
    """Bytes one decoder layer (of `kind`: the model's first by default) keeps for
    backward, by part (attention part, MLP part). A mixture-of-experts kind keeps its
    sparse block in place of the dense MLP's set; sliding windows are priced as full
    attention (LayerKind)."""
    n, h = sc.tokens, s.hidden_size
    resid_mask = _mask_bytes(sc) * n * h if s.resid_dropout > 0 else 0
    norm_in = norm_saved_bytes(s, sc)
    attn = attention_saved_bytes(s, sc)
    mlp = mlp_saved_bytes(s, sc, kind)
    attn_in = projection_inputs_bytes(s, sc, _attention_readers(s))
    mlp_in = projection_inputs_bytes(s, sc, _mlp_readers(s, kind))
    if s.arch.parallel_residual and s.arch.shared_norm:
        # Phi: one LayerNorm feeds both branches; its output is kept once (or cast per linear).
        attn_part = norm_in + projection_inputs_bytes(s, sc, _attention_readers(s) + _mlp_readers(s)) \
            + attn + resid_mask
        mlp_part = mlp + resid_mask
    elif s.arch.parallel_residual:
        # NeoX: both LayerNorms read the layer input, kept once; each output is kept.
        attn_part = norm_in + attn_in + attn + resid_mask
        mlp_part = norm_saved_bytes(s, sc, with_input=False) + mlp_in + mlp + resid_mask
    else:
        attn_part = norm_in + attn_in + attn + resid_mask
        mlp_part = norm_saved_bytes(s, sc) + mlp_in + mlp + resid_mask
    return {"attention": attn_part, "mlp": mlp_part}


def layer_activation_bytes(s: ModelShape, sc: Scenario, kind: LayerKind | None = None) -> int:
    """A_layer: total bytes one decoder layer keeps for backward."""
    return sum(layer_saved_bytes(s, sc, kind).values())


def causal_mask_bytes(s: ModelShape, sc: Scenario) -> int:
    """The additive causal mask the eager path builds once per forward: (b, 1, s, s) in dtype.
    SDPA without padding passes no mask (is_causal)."""
    if sc.attention == "sdpa":
        return 0
    return _act_bytes(sc) * sc.batch * sc.seq * sc.seq


def rotary_bytes(s: ModelShape, sc: Scenario) -> int:
    """cos and sin tables for the rotated share of the head dim: 2 · s · d_rot in dtype, for
    each distinct rotary table the layers use (LayerKind.rope), made once per forward."""
    if s.arch.positions != "rope":
        return 0
    tables = {kind.rope for kind in s.layer_counts() if kind.rope}
    rot = int(s.head_dim * s.arch.rotary_fraction)
    return len(tables) * 2 * _act_bytes(sc) * sc.seq * rot


def norm_keeps_layer_input(s: ModelShape, sc: Scenario) -> bool:
    """Whether a layer's first norm keeps the layer input itself (LayerNorm always; RMSNorm
    when the stream is already fp32, so its upcast is a no-op): then a checkpointed layer's
    kept input and its recomputed activations share that tensor."""
    return s.arch.norm.kind == "layernorm" or _stream_bytes(sc) == FP32


def checkpoint_saved_bytes(s: ModelShape, sc: Scenario) -> int:
    """A checkpointed layer keeps only its input hidden states (pNh); the mask and the
    rotary tables it also keeps are shared by all layers and counted once."""
    return _act_bytes(sc) * sc.tokens * s.hidden_size


def embedding_saved_bytes(s: ModelShape, sc: Scenario) -> int:
    """Before the first layer: the token ids the embedding keeps (int64), the embedding
    dropout, OPT-350m's project_in input. (Gemma's scaling by sqrt(h) multiplies by a
    constant, which keeps nothing.)"""
    n, h, p = sc.tokens, s.hidden_size, _act_bytes(sc)
    total = INT64 * n
    if s.embd_dropout > 0:
        total += _mask_bytes(sc) * n * h
    if s.embed_dim != s.hidden_size:
        total += p * n * s.embed_dim
    return total


def head_saved_bytes(s: ModelShape, sc: Scenario) -> int:
    """After the last layer: the final norm and the LM head's input (pNh, or pNe through
    OPT-350m's project_out)."""
    n, h, p = sc.tokens, s.hidden_size, _act_bytes(sc)
    total = norm_saved_bytes(s, sc) if s.arch.final_norm else 0
    total += p * n * h
    if s.embed_dim != s.hidden_size:
        total += p * n * s.embed_dim
    return total


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
