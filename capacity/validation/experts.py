"""Mixture-of-experts runs: which experts implementation runs, which routing, and what the
routers chose.

Experts implementation. transformers 5.23 picks `grouped_mm` for every experts class
(PreTrainedModel.get_correct_experts_implementation); a config's `experts_implementation`
key picks another ("eager": the per-expert loop). The run records what the model used
(`model.config._experts_implementation`).

Routing (`routing`):
  measured   the routers' own choices (real runs only); forward hooks record the tokens each
             expert got, per layer and step, with numpy (no torch allocation: MemTracker
             sees nothing).
  balanced   token t's j-th choice goes to expert (t·k + j) mod E: each expert gets k·N/E.
  worst      every token goes to experts 0..k-1 (N each), the others get none.
Forcing copies a constant pattern, made before the tracker starts, into the indices each
router's own topk returned, in place through `.data`: nothing is allocated, and topk's
saved indices (the same storage) keep their version, so backward runs as it would. (A new
tensor instead would cost N·k·8 bytes that a real run does not have.)

Traces. grouped_mm's memory does not depend on the routing, and a fake-tensor trace of it
needs no forcing. The eager loop asks data-dependent questions (one_hot's range check,
nonzero, torch.where, `if expert_idx == E`) that fake tensors cannot answer: inside a trace
it is replaced by `eager_experts_traced`, the loop with every data-dependent answer taken
from the forced pattern and every allocation of the original made in the same order,
shape, dtype and lifetime (checked byte for byte against the original on real CPU runs).
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F

from ..moe import pattern_counts

ROUTINGS = ("measured", "balanced", "worst")

# Where the eager mirror finds the tokens per expert of the forced pattern.
_COUNTS_ATTR = "_capacity_forced_counts"


def routers(model) -> list:
    """The router (TopKRouter) of every sparse block, first layer to last."""
    return [m for m in model.modules() if type(m).__name__.endswith("TopKRouter")]


def experts_modules(model) -> list:
    """The experts module of every sparse block (the classes @use_experts_implementation wraps)."""
    return [m for m in model.modules() if hasattr(m, "gate_up_proj") and hasattr(m, "_is_expert_parallel")]


def routing_pattern(routing: str, tokens: int, k: int, experts: int) -> torch.Tensor:
    """(tokens, k) int64 expert indices of a forced routing (capacity.moe.pattern_counts)."""
    if routing == "balanced":
        return (torch.arange(tokens * k) % experts).view(tokens, k)
    if routing == "worst":
        return torch.arange(k).expand(tokens, k).contiguous()
    raise ValueError(f"routing: a forced routing is balanced or worst, got {routing!r}")


def force_routing(model, routing: str, tokens: int) -> list[int]:
    """Make every router return the `routing` pattern as its top-k indices (its own topk
    still runs); returns the tokens per expert. In a trace, the eager mirror reads them."""
    rs = routers(model)
    if not rs:
        return []
    k, experts = rs[0].top_k, rs[0].num_experts
    counts = pattern_counts(routing, tokens, k, experts)
    pattern = routing_pattern(routing, tokens, k, experts)   # fake inside a trace
    for router in rs:
        original = router.forward

        def forward(hidden_states, _original=original):
            logits, scores, indices = _original(hidden_states)
            indices.data.copy_(pattern)
            return logits, scores, indices
        router.forward = forward
    for module in experts_modules(model):
        setattr(module, _COUNTS_ATTR, counts)
    return counts


def record_routing(model, log: list) -> list:
    """Forward hooks that append (layer, tokens per expert) for every router call of a real
    run (nothing under fake tensors); returns the hook handles."""
    handles = []
    for i, router in enumerate(routers(model)):
        def hook(module, args, out, _i=i):
            idx = out[2]
            if idx.device.type != "meta" and not hasattr(idx, "fake_mode"):
                log.append((_i, _bincount_numpy(idx, module.num_experts)))
        handles.append(router.register_forward_hook(hook))
    return handles


def _bincount_numpy(indices: torch.Tensor, experts: int) -> list[int]:
    """Tokens per expert, counted in numpy (no torch allocation that a tracker or the CUDA
    allocator sees; a CUDA tensor is copied to the host first)."""
    import numpy as np
    values = indices.detach()
    if values.device.type != "cpu":
        values = values.cpu()
    return np.bincount(values.numpy().reshape(-1), minlength=experts).tolist()


def routing_summary(log: list) -> dict:
    """The recorded counts, and the imbalance: the most pairs one expert got over k·N/E."""
    pairs, experts = sum(log[0][1]), len(log[0][1])
    fair = pairs / experts
    most = max(max(c) for _, c in log)
    return {"tokens_per_expert": [{"layer": layer, "counts": c} for layer, c in log],
            "max_tokens_per_expert": most, "balanced_tokens_per_expert": fair, "imbalance": most / fair}


# ---------------------------------------------------------------- the eager loop in a trace

def eager_experts_traced(self, hidden_states, top_k_index, top_k_weights):
    """transformers' eager experts loop (modeling_mixtral.py MixtralExperts.forward,
    identical in Qwen3-MoE and OLMoE), with each data-dependent answer taken from the forced
    pattern (self._capacity_forced_counts). Every allocation of the original is made here
    too, of the same shape and dtype, in the same order, with the same lifetime."""
    counts = getattr(self, _COUNTS_ATTR, None)
    if counts is None:
        raise ValueError("routing: a trace of the eager experts loop needs a forced routing (balanced or worst)")
    final_hidden_states = torch.zeros_like(hidden_states)
    with torch.no_grad():
        torch.aminmax(top_k_index)                       # one_hot's range check (two 0-d results)
        expert_mask = top_k_index.new_zeros((*top_k_index.shape, self.num_experts + 1))
        expert_mask.scatter_(-1, top_k_index.unsqueeze(-1), 1)
        expert_mask = expert_mask.permute(2, 1, 0)
        hits = [e for e, n in enumerate(counts) if n > 0]
        # the (E+1) sum and its `> 0` are temporaries; nonzero()'s result is (hits, 1) int64
        expert_hit = torch.greater(expert_mask.sum(dim=(-1, -2)), 0).new_empty((len(hits), 1), dtype=torch.long)
    for expert_idx in hits:
        torch.empty((), dtype=torch.bool)                # `expert_idx == self.num_experts`
        nonzero = torch.empty((counts[expert_idx], 2), dtype=torch.long)   # torch.where(mask[e])
        top_k_pos, token_idx = nonzero.unbind(1)
        del nonzero
        current_state = hidden_states[token_idx]
        gate, up = F.linear(current_state, self.gate_up_proj[expert_idx]).chunk(2, dim=-1)
        current_hidden_states = self.act_fn(gate) * up
        current_hidden_states = F.linear(current_hidden_states, self.down_proj[expert_idx])
        current_hidden_states = current_hidden_states * top_k_weights[token_idx, top_k_pos, None]
        final_hidden_states.index_add_(0, token_idx, current_hidden_states.to(final_hidden_states.dtype))
    del expert_hit
    return final_hidden_states


@contextlib.contextmanager
def eager_loop_traced():
    """Inside a trace: the "eager" experts implementation runs eager_experts_traced."""
    from transformers.integrations.moe import ALL_EXPERTS_FUNCTIONS
    ALL_EXPERTS_FUNCTIONS["eager"] = eager_experts_traced
    try:
        yield
    finally:
        del ALL_EXPERTS_FUNCTIONS._local_mapping["eager"]


class RoutingRun:
    """The routing side of one mixture-of-experts run: the routing it runs under (forced,
    or the routers' own, recorded), applied to every model the run builds."""

    def __init__(self, routing: str | None, device: str, experts: str, predicted: str, tokens: int):
        if routing is not None and routing not in ROUTINGS:
            raise ValueError(f"routing: must be one of {', '.join(ROUTINGS)}, got {routing!r}")
        trace = device == "trace"
        if routing is None:
            routing = predicted if trace and experts == "eager" else "measured"
        if trace and experts == "eager" and routing == "measured":
            raise ValueError("routing: a trace cannot follow the routers' own choices through the eager "
                             "experts loop (they depend on values); use balanced or worst, or a real run")
        self.routing, self.trace, self.experts = routing, trace, experts
        self.tokens = tokens
        self.counts: list[int] = []
        self.log: list = []
        # The routing the prediction is made under: the forced one, else the scenario's.
        self.predicted = routing if routing in ("balanced", "worst") else predicted

    def prepare(self, model) -> None:
        """Force the pattern on a freshly built model; in a real run, record what the routers
        return (their own choices, or the forced pattern)."""
        if self.routing in ("balanced", "worst"):
            self.counts = force_routing(model, self.routing, self.tokens)
        if not self.trace:
            record_routing(model, self.log)

    def start_tracking(self) -> None:
        """The tracked steps begin: forget the routing of the warm-up step."""
        self.log.clear()

    def summary(self, model_experts: str | None) -> dict:
        rs = {"experts_implementation": model_experts, "predicted_routing": self.predicted}
        if self.routing in ("balanced", "worst"):
            rs.update(routing=f"forced {self.routing}", forced_tokens_per_expert=self.counts)
        elif self.trace:
            rs["routing"] = "routing-independent (grouped_mm: no tensor's size depends on it; not forced)"
        else:
            rs["routing"] = "measured (the routers' own choices)"
        if self.log:
            rs.update(routing_summary(self.log))
        return rs
