"""Compute and time per step: FLOPs, bytes moved, and a roofline time on a device.

FLOPs count multiply-adds as 2. The roofline time max(FLOPs / peak, bytes / bandwidth)
is a lower bound: real steps reach a fraction of peak (the `efficiency` argument).
"""

from __future__ import annotations

from .memory import kept_layers, optimizer_state_bytes, runnable_attention
from .params import active_experts_params, layer_linears, parameter_count
from .presets import Device
from .scenario import Scenario
from .shape import ModelShape

# MeZO needs many more steps than BP. The MeZO paper (Malladi et al. 2023, Sec. 4 and
# Table 23 discussion) reports about 32x more steps than fine-tuning at OPT-30B.
MEZO_STEPS_MULTIPLIER = 32
MEZO_STEPS_SOURCE = ("Malladi et al. 2023, 'Fine-Tuning Language Models with Just Forward Passes' "
                     "(arXiv 2305.17333): at OPT-30B MeZO needed about 32x more steps than FT.")

# Passes MeZO makes over every weight per step: perturb +eps, perturb -2eps, restore, update
# (Algorithm 1). Each reads and writes the weight and draws z.
MEZO_WEIGHT_PASSES = 4


def matmul_params(s: ModelShape) -> int:
    """Weights that take part in a matmul per token (all but norms and embedding lookups):
    every projection of every layer, and the LM head. A mixture-of-experts layer: its
    router and the top_k experts a token is routed to (the active parameters)."""
    per_kind = {kind: sum(lin.fan_in * lin.fan_out for lin in layer_linears(s, kind))
                + active_experts_params(s, kind) for kind in s.layer_counts()}
    return sum(n * per_kind[kind] for kind, n in s.layer_counts().items()) + s.vocab_size * s.embed_dim


def forward_flops(s: ModelShape, sc: Scenario) -> float:
    """2·N·(matmul weights) + attention 4·b·s²·(a·d) per layer (QKᵀ and PV; the eager path
    computes the full square, SDPA's causal kernels about half)."""
    n = sc.tokens
    attn = 4 * sc.batch * sc.seq * sc.seq * s.q_dim * s.num_layers
    if runnable_attention(s, sc) == "sdpa":
        attn /= 2
    return 2.0 * n * matmul_params(s) + attn


def flops_per_step(s: ModelShape, sc: Scenario) -> float:
    """BP: forward + backward (twice the forward) + recomputation of the checkpointed
    layers, for each of the loop's K micro-batches. MeZO: two forwards per perturbation
    (mezo_n of them; the weight passes are memory-bound, see bytes_per_step).
    Inference: one forward."""
    fwd = forward_flops(s, sc)
    if sc.method == "inference":
        return fwd
    if sc.method == "mezo":
        return 2 * sc.loop.mezo_n * fwd
    recompute = (s.num_layers - kept_layers(s, sc)) / s.num_layers * fwd
    return sc.loop.grad_accum * (3 * fwd + recompute)


def bytes_per_step(s: ModelShape, sc: Scenario) -> float:
    """Bytes moved through memory at least once per step: the weights per forward, and
    for BP the gradients read and written per micro-batch and the optimizer states once
    per step; for MeZO two forwards and four read-and-write passes over the weights per
    perturbation."""
    p = parameter_count(s)
    w = p * sc.bytes_per_value
    if sc.method == "inference":
        return w
    if sc.method == "mezo":
        return sc.loop.mezo_n * (2 * w + MEZO_WEIGHT_PASSES * 2 * w)
    return sc.loop.grad_accum * (3 * w + 2 * w) + 2 * optimizer_state_bytes(s, sc) + 2 * w


def step_time_seconds(s: ModelShape, sc: Scenario, device: Device, efficiency: float = 1.0) -> float:
    """Roofline time of one step: max(FLOPs / (peak · efficiency), bytes / (bandwidth · efficiency))."""
    if not 0 < efficiency <= 1:
        raise ValueError(f"efficiency: must be in (0, 1], got {efficiency!r}")
    return max(flops_per_step(s, sc) / (device.peak_flops * efficiency),
               bytes_per_step(s, sc) / (device.bandwidth_bytes_s * efficiency))
