"""Memory of one sparse mixture-of-experts block, tensor by tensor.

transformers 5.23 runs Mixtral's, Qwen3-MoE's and OLMoE's sparse blocks alike
(modeling_mixtral.py MixtralSparseMoeBlock, MixtralTopKRouter, MixtralExperts and their
copies): a router (`gate`: F.linear h -> E, an fp32 softmax, topk, an optional in-place
renormalisation) picks top_k experts per token, and the experts run through the
implementation `config._experts_implementation` names (integrations/moe.py,
@use_experts_implementation):

  grouped_mm  transformers' default (PreTrainedModel.get_correct_experts_implementation):
              `grouped_mm_experts_forward` sorts the S = k·N (token, expert) pairs by expert
              and runs two torch.nn.functional.grouped_mm over all S rows. Every tensor has a
              size in S, N, E, never in the tokens of one expert: its memory does not depend
              on the routing. Not autocast-enabled: under autocast the experts run in fp32
              (`_grouped_mm(input.to(weight.dtype), ...)`).
  eager       the class's own loop over the experts that received tokens (opt-in):
              its saved set is the same whatever the routing (the tokens of all experts add
              up to S), except under autocast (each hit expert's 16-bit weight copies); its
              transients and its backward depend on the routing: priced under "balanced"
              (every expert gets S/E pairs) or "worst" (every token to the same k experts).

The block's input (the post-attention norm's output) is kept by the router's F.linear as a
dense MLP's gate projection keeps it, and is counted with the layer (activations.py), as
are autocast's cached 16-bit copy of the router weight (memory.py's weight copies).
Every function here equals the block measured alone on real CPU tensors, byte for byte
(bench/moe_block.py: 216 cases over three families, four shapes, three precisions, both
implementations and three routings); whole models: docs/accuracy.md, tests/test_moe.py.

Symbols: N = b·s tokens, S = k·N routed pairs, h hidden, I expert width, E experts.
Bytes per value: p the model's dtype; under autocast (mixed precision) the stream and the
weights are fp32 and matmuls 16-bit.
"""

from __future__ import annotations

from dataclasses import dataclass

from .scenario import Scenario
from .shape import ModelShape

FP32 = 4
INT64 = 8
INT32 = 4


@dataclass(frozen=True)
class Block:
    """One sparse block's sizes and the dtypes its tensors take in one scenario.

    be  the grouped_mm experts' compute: the weights' dtype (fp32 under autocast)
    bc  the eager experts' F.linear outputs: the model dtype (16-bit under autocast)
    bl  the router logits: F.linear's output dtype (16-bit under autocast)
    bw  the routing weights: fp32 when the router keeps them so (Mixtral), else bl
    wb  the weights (and their gradients): fp32 under autocast
    xb  the block's input and output (the residual stream): fp32 under autocast
    """

    N: int
    h: int
    I: int
    E: int
    k: int
    be: int
    bc: int
    bl: int
    bw: int
    wb: int
    xb: int
    normalize: bool
    mixed: bool

    @property
    def S(self) -> int:
        return self.k * self.N

    @property
    def bo(self) -> int:
        """The grouped_mm weighted output `proj_out * w`: the promotion of be and bw."""
        return max(self.be, self.bw)


def block(s: ModelShape, sc: Scenario) -> Block:
    m, p = s.moe, sc.bytes_per_value
    wide = FP32 if sc.mixed_precision else p
    return Block(N=sc.tokens, h=s.hidden_size, I=m.expert_size, E=m.experts, k=m.top_k,
                 be=wide, bc=p, bl=p, bw=FP32 if m.weights_fp32 else p, wb=wide, xb=wide,
                 normalize=m.normalize_top_k, mixed=sc.mixed_precision)


def routing_counts(s: ModelShape, sc: Scenario) -> list[int]:
    """Routed pairs per expert under the scenario's routing (pattern_counts)."""
    return pattern_counts(sc.routing, sc.tokens, s.moe.top_k, s.moe.experts)


def pattern_counts(routing: str, tokens: int, k: int, experts: int) -> list[int]:
    """Pairs per expert of a routing pattern: "balanced", token t's j-th choice to expert
    (t·k + j) mod E (k·N/E each, when E divides k·N); "worst", every token to experts
    0..k-1 (N each, the others none). The validation engine forces these patterns."""
    if routing == "worst":
        return [tokens] * k + [0] * (experts - k)
    whole, rest = divmod(k * tokens, experts)
    return [whole + (1 if e < rest else 0) for e in range(experts)]


# ---------------------------------------------------------------- the router (every implementation)

def router_saved_bytes(b: Block) -> int:
    """What the TopKRouter keeps for backward besides its input: the fp32 softmax output
    (N, E) (`softmax(router_logits.float())`, or `softmax(..., dtype=torch.float)`), topk's
    indices (N, k) int64, and with the renormalisation `router_top_value /= sum` (in place)
    a clone of the top-k values (N, k) fp32 and the (N, 1) sum."""
    n = b.N * b.E * FP32 + b.N * b.k * INT64
    if b.normalize:
        n += b.N * b.k * FP32 + b.N * FP32
    return n


def _router_outputs_bytes(b: Block) -> int:
    """The router's outputs the block holds while its experts run: the logits (bound to `_`
    until the block returns), the top-k weights and the top-k indices (int64)."""
    return b.N * b.E * b.bl + b.N * b.k * b.bw + b.N * b.k * INT64


# ---------------------------------------------------------------- grouped_mm (the default)

def grouped_mm_saved_bytes(b: Block) -> int:
    """integrations/moe.py grouped_mm_experts_forward, kept for backward: per routed pair
    the gathered input (h), the gate_up output (2I), act(gate) (I), act(gate)·up (I) and the
    down output (h), in be; perm, perm // k and inv_perm (int64); the gathered routing
    weight (bw); per block the offsets (E) int32; and the router's."""
    return b.S * (2 * b.h + 4 * b.I) * b.be + b.S * (3 * INT64 + b.bw) + b.E * INT32 + router_saved_bytes(b)


def grouped_mm_forward_extra_bytes(b: Block) -> int:
    """The most a forward with autograd holds above the block's saved set (its output not
    yet made): the logits and the top-k weights, the sorted expert ids (S int64), histc's
    fp32 input (S; int32 on CUDA, the same size) and output (E), and at the end either
    `weighted_out[inv_perm]` (two (S, h) tensors in bo) or, for k = 1, the permuted output,
    its sum over k (N, h) and that sum's cast to the input dtype."""
    S, N, h = b.S, b.N, b.h
    transient = b.N * b.E * b.bl + b.N * b.k * b.bw + S * INT64 + S * FP32 + b.E * FP32
    at_permute = 2 * S * h * b.bo
    at_sum = S * h * b.bo + N * h * b.bo + (N * h * b.be if b.bo != b.be else 0)
    return transient + max(at_permute, at_sum)


def grouped_mm_nograd_peak_bytes(b: Block) -> int:
    """The most a forward without autograd holds above the block's input, its output
    included: the router's outputs, the sort (ids and perm, int64), the gathered weights, the
    histc input and output and the offsets (and under autocast the cached 16-bit router
    weight), plus the widest of four moments: at act(gate)·up (x_g, gate_up, act, product),
    at the down projection (x_g, product, its output), at the weighting (x_g, proj_out,
    weighted, permuted, inv_perm) and at the sum over k."""
    S, N, h, I = b.S, b.N, b.h, b.I
    base = (_router_outputs_bytes(b) + 2 * S * INT64 + S * b.bw + S * FP32 + 2 * b.E * FP32
            + (b.E * h * 2 if b.mixed else 0))
    gating = S * (h + 4 * I) * b.be
    down = S * (2 * h + I) * b.be
    weighted = S * h * (2 * b.be + 2 * b.bo) + S * INT64
    summed = (S * h * (2 * b.be + b.bo) + S * INT64 + N * h * b.bo
              + (N * h * b.be if b.bo != b.be else 0))
    return base + max(gating, down, weighted, summed)


def grouped_mm_backward_peak_bytes(b: Block, gradients_exist: bool = False) -> int:
    """The most the block's backward holds above what is live when it starts (its saved
    set and its output's gradient), walking the backward ops of grouped_mm_experts_forward
    in the order autograd runs them, each allocation and each release of a saved tensor at
    its op. The weight gradients are kept as they are made (grouped_mm's backward returns
    them in the parameters' layout: no AccumulateGrad copy); when the gradients exist
    already (gradient accumulation, zeroed gradients kept), AccumulateGrad, which runs
    first once its input is ready, adds each new one in place and releases it."""
    S, N, h, I, E = b.S, b.N, b.h, b.I, b.E
    be, bo, bw, wb = b.be, b.bo, b.bw, b.wb
    walk = _Walk()
    if bo != b.xb:
        walk.alloc(N * h * bo)                                # `.to(hidden dtype)` backward
    walk.alloc(S * h * bo)                                    # the k-sum's backward: expand, clone
    if bo != b.xb:
        walk.free(N * h * bo)
    walk.alloc(S * h * bo, S * h * bo)                        # weighted_out[inv_perm] backward: zeros, index_put
    walk.free(S * h * bo, S * h * bo, S * INT64)              # the clone, the zeros, saved inv_perm
    walk.alloc(S * h * bo)                                    # grad proj_out = g · w
    walk.alloc(S * h * bo)                                    # g · proj_out
    if be != bo:
        walk.alloc(S * h * be)                                # grad proj_out cast to its dtype
        walk.free(S * h * bo)
    walk.alloc(S * bo)                                        # its sum over h: grad of w
    if bw != bo:
        walk.alloc(S * bw)
        walk.free(S * bo)
    walk.free(S * h * bo, S * h * bo)                         # g, g · proj_out
    walk.free(S * h * be, S * bw)                             # saved proj_out, w
    walk.alloc(E * h * I * wb)                                # grad down_proj
    walk.alloc(S * I * be)                                    # grad of act·up
    walk.free(S * h * be, S * I * be)                         # grad proj_out, saved act·up
    if gradients_exist:
        walk.free(E * h * I * wb)                             # added into down_proj.grad
    walk.alloc(S * I * be, S * I * be)                        # grad act, grad up
    walk.free(S * I * be, S * I * be)                         # grad of act·up, saved act
    walk.alloc(S * I * be)                                    # silu_backward
    walk.free(S * I * be, 2 * S * I * be)                     # grad act, saved gate_up
    walk.alloc(2 * S * I * be)                                # cat: grad gate_up output
    walk.free(S * I * be, S * I * be)
    walk.alloc(E * 2 * I * h * wb)                            # grad gate_up_proj
    walk.alloc(S * h * be)                                    # grad of the gathered input
    walk.free(2 * S * I * be, S * h * be)                     # the cat, saved x_g
    if gradients_exist:
        walk.free(E * 2 * I * h * wb)                         # added into gate_up_proj.grad
    walk.alloc(S * bw, S * bw)                                # sample_weights[perm] backward
    walk.free(S * bw, S * bw)
    walk.alloc(N * h * be, N * h * be)                        # x_g backward: zeros, index_put
    return walk.peak


class _Walk:
    """Live bytes along a sequence of allocations and releases, and their highest point."""

    def __init__(self):
        self.live = self.peak = 0

    def alloc(self, *sizes: int) -> None:
        for n in sizes:
            self.live += n
            self.peak = max(self.peak, self.live)

    def free(self, *sizes: int) -> None:
        for n in sizes:
            self.live -= n


# ---------------------------------------------------------------- the block in a step

def saved_bytes(s: ModelShape, sc: Scenario) -> int:
    """What one sparse block keeps for backward (its input excluded), under the scenario's
    experts implementation, with the auxiliary loss's and the router jitter's share."""
    b = block(s, sc)
    kept = grouped_mm_saved_bytes(b) if sc.experts == "grouped_mm" \
        else eager_saved_bytes(b, routing_counts(s, sc))
    return kept + aux_loss_pending_bytes(s, sc) + jitter_noise_bytes(s, sc)


def forward_extra_bytes(s: ModelShape, sc: Scenario) -> int:
    """The most a forward with autograd holds in the block above what it keeps."""
    b = block(s, sc)
    if sc.experts == "grouped_mm":
        return grouped_mm_forward_extra_bytes(b)
    return eager_forward_extra_bytes(b, routing_counts(s, sc))


def backward_extra_bytes(s: ModelShape, sc: Scenario, gradients_exist: bool = False) -> int:
    """The most the block's backward holds above its saved set and its output's gradient,
    its new weight gradients included (kept as they are made, or added into existing ones)."""
    b = block(s, sc)
    if sc.experts == "grouped_mm":
        return grouped_mm_backward_peak_bytes(b, gradients_exist)
    return eager_backward_peak_bytes(b, routing_counts(s, sc), gradients_exist)


def nograd_peak_bytes(s: ModelShape, sc: Scenario) -> int:
    """The most a forward without autograd holds in the block above its input, output included."""
    b = block(s, sc)
    if sc.experts == "grouped_mm":
        return grouped_mm_nograd_peak_bytes(b)
    return eager_nograd_peak_bytes(b, routing_counts(s, sc))


def aux_loss_pending_bytes(s: ModelShape, sc: Scenario) -> int:
    """With the auxiliary load-balancing loss (output_router_logits), per sparse layer
    until its backward: load_balancing_loss_func's softmax keeps its (N, E) output (in
    the logits' dtype) until the loss's backward, whose gradient for the router logits then
    waits in the router's node until the layer's backward reaches it."""
    if not s.moe.router_aux_loss or sc.method != "bp":
        return 0
    return sc.tokens * s.moe.experts * sc.bytes_per_value


def router_logits_held_bytes(s: ModelShape, sc: Scenario) -> int:
    """With the auxiliary loss, the model output keeps every sparse layer's router logits
    (capture_outputs' OutputRecorder of the router's first output) to the end of the step:
    (N, E) in the logits' dtype per sparse layer."""
    if not s.moe.router_aux_loss:
        return 0
    layers = sum(n for kind, n in s.layer_counts().items() if kind.moe)
    return layers * sc.tokens * s.moe.experts * sc.bytes_per_value


def jitter_noise_bytes(s: ModelShape, sc: Scenario) -> int:
    """Mixtral's router jitter in training: `hidden_states *= noise` keeps the (N, h) noise
    (in the stream's dtype) for the in-place product's backward."""
    if not s.moe.router_jitter or sc.method != "bp":
        return 0
    return sc.tokens * s.hidden_size * (FP32 if sc.mixed_precision else sc.bytes_per_value)


# ---------------------------------------------------------------- eager (the per-expert loop)

def eager_saved_bytes(b: Block, counts: list[int]) -> int:
    """The experts loop (MixtralExperts.forward and its copies), kept for backward: per
    routed pair, in the F.linear output dtype bc, the gathered input (h), the gate_up output
    (2I), act (I), act·up (I) and the down output (h); the weighted output index_add_ adds,
    in the stream's dtype (its backward formula names `source`, so autograd keeps it);
    torch.where's (n_e, 2) int64 result (kept through token_idx and top_k_pos); the gathered
    routing weight (bw). Under autocast also each hit expert's 16-bit copies of its gate_up
    and down slices (F.linear keeps its cast weight; a slice is not a leaf, so autocast does
    not cache it). The pairs of all experts add up to S whatever the routing: only the
    autocast term depends on it (the experts hit)."""
    hits = sum(1 for c in counts if c)
    return (b.S * ((2 * b.h + 4 * b.I) * b.bc + b.h * b.xb + 2 * INT64 + b.bw) + router_saved_bytes(b)
            + (hits * 3 * b.h * b.I * 2 if b.mixed else 0))


def eager_nograd_peak_bytes(b: Block, counts: list[int]) -> int:
    """The most a forward without autograd holds above the block's input, output included,
    walking the loop with Python's lifetimes: a name's previous value (the previous expert's
    gathered input, its gate_up output through `gate`/`up`, its weighted output through
    `current_hidden_states`, its torch.where result through token_idx/top_k_pos) is freed
    only when the name is bound again, so each expert's peak holds part of the previous
    one's. Before the loop: the router's outputs, final_hidden_states (N, h), one_hot's mask
    (N, k, E+1) int64 (kept by `expert_mask` to the end), nonzero's (hits, 1) int64."""
    N, h, I, E, bc, xb, bw = b.N, b.h, b.I, b.E, b.bc, b.xb, b.bw
    bo = max(bc, bw)                              # down output * routing weight
    hits = [c for c in counts if c]
    walk = _Walk()
    walk.alloc(_router_outputs_bytes(b) + N * h * xb + (E * h * 2 if b.mixed else 0))
    walk.alloc(N * b.k * (E + 1) * INT64)         # expert_mask
    walk.alloc((E + 1) * INT64, E + 1)            # its sum and the `> 0`
    walk.free((E + 1) * INT64, E + 1)
    walk.alloc(len(hits) * INT64)                 # expert_hit
    prev = 0
    for n in hits:
        walk.alloc(1)                             # `expert_idx == E`
        walk.free(1)
        walk.alloc(n * 2 * INT64)                 # torch.where: nonzero (n, 2)
        walk.free(prev * 2 * INT64)               # the previous token_idx/top_k_pos
        walk.alloc(n * h * xb)                    # current_state
        walk.free(prev * h * xb)
        if b.mixed:
            walk.alloc(n * h * 2, 2 * I * h * 2)  # autocast's casts of x and the weight slice
        walk.alloc(n * 2 * I * bc)                # gate_up
        if b.mixed:
            walk.free(n * h * 2 + 2 * I * h * 2)
        walk.free(prev * 2 * I * bc)              # the previous gate/up
        walk.alloc(n * I * bc, n * I * bc)        # act, act·up
        walk.free(n * I * bc)                     # act
        walk.free(prev * h * bo)                  # the previous weighted output
        if b.mixed:
            walk.alloc(h * I * 2)                 # the down slice's cast
        walk.alloc(n * h * bc)                    # down output
        if b.mixed:
            walk.free(h * I * 2)
        walk.free(n * I * bc)                     # act·up (its name rebound)
        walk.alloc(n * bw)                        # top_k_weights[token_idx, top_k_pos]
        walk.alloc(n * h * bo)                    # weighted
        walk.free(n * bw + n * h * bc)            # its weight, the down output
        if bo != xb:
            walk.alloc(n * h * xb)                # .to(final dtype), added, dropped
            walk.free(n * h * xb)
        prev = n
    return walk.peak


def eager_forward_extra_bytes(b: Block, counts: list[int]) -> int:
    """The most a forward with autograd holds above the block's saved set, walking the loop:
    the router's outputs, final_hidden_states (the output, made first), one_hot's mask and
    nonzero's expert list throughout; and what autograd does not keep of an expert while
    Python still holds it (until the name is bound again, or the function returns): under
    autocast the fp32 gathered input (F.linear keeps its 16-bit cast), and when the routing
    weights are wider than the stream (Mixtral in 16 bits) the weighted output before its
    cast (index_add_ keeps the cast)."""
    N, h, I, bc, xb, bw = b.N, b.h, b.I, b.bc, b.xb, b.bw
    bo = max(bc, bw)
    walk = _Walk()
    walk.alloc(router_saved_bytes(b), N * b.E * b.bl + N * b.k * bw, N * h * xb,   # (topk's indices are saved)
               N * b.k * (b.E + 1) * INT64, sum(1 for c in counts if c) * INT64)
    prev_x = prev_w = 0
    for n in (c for c in counts if c):
        walk.alloc(n * 2 * INT64, n * h * xb)     # torch.where's result, current_state
        walk.free(prev_x)
        if b.mixed:
            walk.alloc(n * h * 2, 2 * I * h * 2)  # autocast's casts of x and the gate_up slice
        walk.alloc(2 * n * I * bc, n * I * bc, n * I * bc)   # gate_up, act, act·up
        walk.free(prev_w)
        if b.mixed:
            walk.alloc(h * I * 2)                 # the down slice's cast
        walk.alloc(n * h * bc, n * bw, n * h * bo)  # down output, gathered weight, weighted
        if bo != xb:
            walk.alloc(n * h * xb)                # .to(final dtype): index_add_'s source
        prev_x = n * h * xb if b.mixed else 0
        prev_w = n * h * bo if bo != xb else 0
    return walk.peak - eager_saved_bytes(b, counts)


def eager_backward_peak_bytes(b: Block, counts: list[int], gradients_exist: bool = False) -> int:
    """The most the loop's backward holds above its saved set and its output's gradient,
    walking autograd's order: the experts last to first, each from its index_add_ back to its
    gathered input. Each expert's weight slice (`self.gate_up_proj[e]`, a select) gets a
    zero-filled gradient the size of the whole stacked parameter (select_backward), which
    autograd adds, out of place, to the sum so far (its input buffer): from the second
    expert on, three full-size copies of a stacked gradient are live at that add, while only
    the saved tensors of the experts already done are gone. So the peak falls early, and
    lower when few experts hold all the tokens (the worst routing): not an upper bound.
    The sum becomes the parameter's gradient after the last expert; when the gradients exist
    already (gradient accumulation, zeroed gradients kept) AccumulateGrad adds it in place
    and releases it."""
    N, h, I, E, k = b.N, b.h, b.I, b.E, b.k
    bc, xb, bw, wb = b.bc, b.xb, b.bw, b.wb
    bo = max(bc, bw)
    walk = _Walk()
    first = True

    def buffered(size: int) -> None:
        """A gradient (already allocated) joins its input buffer: kept as it is the first
        time, later added to the sum so far, out of place."""
        if not first:
            walk.alloc(size)
            walk.free(size, size)

    hits = [c for c in counts if c][::-1]
    for j, n in enumerate(hits):
        last = j == len(hits) - 1
        # index_add_: the gradient of its source, then the saved source is released
        walk.alloc(n * h * xb)
        walk.free(n * h * xb)
        g = n * h * xb
        if bo != xb:                              # .to() backward
            walk.alloc(n * h * bo)
            walk.free(g)
            g = n * h * bo
        # weighted = down · w: both gradients, the first cast to down's dtype, the second summed
        walk.alloc(n * h * bo, n * h * bo)
        if bc != bo:
            walk.alloc(n * h * bc)
            walk.free(n * h * bo)
        walk.alloc(n * bo)
        walk.free(n * h * bo)
        if bw != bo:
            walk.alloc(n * bw)
            walk.free(n * bo)
        walk.free(g, n * h * bc, n * bw)          # incoming gradient, saved down output and weight
        # top_k_weights[token_idx, top_k_pos]: zeros (N, k, 1) and index_put
        walk.alloc(N * k * bw, N * k * bw)
        walk.free(N * k * bw, n * bw)
        buffered(N * k * bw)
        # down projection: the weight's gradient (h, I), the input's (n, I)
        walk.alloc(h * I * bc, n * I * bc)
        walk.free(n * h * bc, n * I * bc)         # grad of the down output, saved act·up
        if b.mixed:                               # the slice's cast: its copy released, the gradient cast back
            walk.free(h * I * 2)
            walk.alloc(h * I * wb)
            walk.free(h * I * bc)
        walk.alloc(E * h * I * wb)                # select_backward: the whole stacked gradient
        walk.free(h * I * wb)
        buffered(E * h * I * wb)
        if last and gradients_exist:
            walk.free(E * h * I * wb)             # added into down_proj.grad
        # act·up: both factors' gradients; saved act released
        walk.alloc(n * I * bc, n * I * bc)
        walk.free(n * I * bc, n * I * bc)
        walk.alloc(n * I * bc)                    # silu_backward
        walk.free(n * I * bc, 2 * n * I * bc)     # grad act, the gate_up output (its last user)
        walk.alloc(2 * n * I * bc)                # cat: grad of the gate_up output
        walk.free(n * I * bc, n * I * bc)
        # gate_up projection: the weight's gradient (2I, h), the input's (n, h)
        walk.alloc(2 * I * h * bc, n * h * bc)
        walk.free(2 * n * I * bc, n * h * bc)     # the cat, saved input (or its cast)
        if b.mixed:
            walk.free(2 * I * h * 2)
            walk.alloc(2 * I * h * wb)
            walk.free(2 * I * h * bc)
            walk.alloc(n * h * xb)                # the input's cast back to fp32
            walk.free(n * h * bc)
        walk.alloc(E * 2 * I * h * wb)            # select_backward
        walk.free(2 * I * h * wb)
        buffered(E * 2 * I * h * wb)
        if last and gradients_exist:
            walk.free(E * 2 * I * h * wb)         # added into gate_up_proj.grad
        # hidden_states[token_idx]: zeros (N, h) and index_put; torch.where's result released
        walk.alloc(N * h * xb, N * h * xb)
        walk.free(N * h * xb, n * h * xb, n * 2 * INT64)
        buffered(N * h * xb)
        first = False
    return walk.peak
