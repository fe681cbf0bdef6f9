"""What a torch.optim step allocates beyond the optimizer's states, by implementation.

torch 2.13 (torch/optim/adam.py, sgd.py), for the settings the calculator models (no
amsgrad, maximize, nesterov; SGD and Adam without weight decay, AdamW's decoupled decay
applied in place):

  forloop  _single_tensor_adam, one parameter at a time:
           `denom = (exp_avg_sq.sqrt() / bias_correction2_sqrt).add_(eps)`: the square
           root and the quotient are both live for a moment, and the previous tensor's
           `denom` is still bound until the assignment: 2·t_i + t_(i−1) over consecutive
           tensors of a group, in registration order (forloop_adam_temp_params).
  foreach  _multi_tensor_adam, one call per parameter group (and per device and dtype in
           it): `exp_avg_sq_sqrt = torch._foreach_sqrt(device_exp_avg_sqs)` holds a square
           root of every tensor of the group at once (the later foreach ops are in place).
           With one group, the size of all parameters; with transformers.Trainer's decay and
           no-decay groups, of the larger (decay) group.
  fused    _fused_adam: torch._fused_adam(w)_ updates in one kernel, with no temporaries
           (on the CPU too: the allocator records none, docs/loops.md).
  SGD and momentum: every implementation updates in place (`_foreach_add_`, `add_`,
           `mul_`); no temporaries.
Under a PEFT method the optimizer holds the trained parameters only (trainable.py).

Adam's per-tensor `step` counters are fp32 scalars on the CPU for forloop and foreach, and on
the parameters' device for fused (`_init_group`: `capturable or fused`).
"""

from __future__ import annotations

from . import trainable
from .params import expert_tensors, layer_linears, no_decay_params, parameter_count
from .scenario import Scenario
from .shape import ModelShape

def optimizer_group_params(s: ModelShape, sc: Scenario) -> int:
    """Parameters of the largest parameter group: all of them, or with decay and no-decay
    groups (Loop.split_decay_groups) the larger of the two."""
    p = parameter_count(s)
    if not sc.loop.split_decay_groups:
        return p
    nd = no_decay_params(s)
    return max(p - nd, nd)


def forloop_adam_temp_params(s: ModelShape, sc: Scenario) -> int:
    """max over consecutive tensors of a parameter group of 2·t_i + t_(i−1), in registration
    order (embeddings, the layers, the final norm and the head). The pairs that can be the
    largest:
      the token table, first (2·V·e);
      a learned position table after the token table (GPT-2, OPT: 2·P·h + V·e);
      an untied LM head after the final norm (2·V·e + h), or in a decay group without norms
      and biases (Loop.split_decay_groups) after the last layer's last projection;
      a layer's projections after one another (params.layer_linears' order), each after the
      previous one's bias if it has one (and the group holds biases); a mixture of experts'
      stacked gate_up_proj after its router, and down_proj after gate_up_proj. A norm registered
      between two projections makes that pair smaller; it is taken as adjacent (an upper
      bound, never the largest pair in the families here).
    """
    h, split = s.hidden_size, sc.loop.split_decay_groups
    token = s.vocab_size * s.embed_dim
    pairs = [2 * token]
    if s.position_table_rows:
        pairs.append(2 * s.position_table_rows * h + token)
    for kind in s.layer_counts():
        linears = layer_linears(s, kind)
        for before, lin in zip(linears, linears[1:]):
            previous = before.fan_out if before.bias and not split else before.fan_in * before.fan_out
            pairs.append(2 * lin.fan_in * lin.fan_out + previous)
        last = linears[-1].fan_in * linears[-1].fan_out
        experts = expert_tensors(s, kind)
        if experts:
            # A mixture of experts' stacked gate_up_proj after its router (Mixtral, OLMoE;
            # Qwen3-MoE registers the router after the experts, and a k norm before them:
            # an upper bound by E·h), then down_proj.
            gate_up, down = experts
            pairs += [2 * gate_up + last, 2 * down + gate_up]
            last = max(last, down)
        if not s.tie_embeddings:
            pairs.append(2 * token + (last if split else h))
    return max(pairs)


def optimizer_step_temp_bytes(s: ModelShape, sc: Scenario, state_bytes_per_value: int) -> int:
    """Bytes the optimizer step holds at its highest beyond states, gradients and weights:
    Adam/AdamW forloop twice a tensor and the one before it, foreach the largest group,
    fused none; SGD and momentum none. In the states' dtype."""
    if sc.optimizer not in ("adam", "adamw"):
        return 0
    if trainable.trains_part(sc):
        # A PEFT method: the same over the trained tensors (capacity/trainable.py).
        values = {"forloop": trainable.forloop_pair_params(s, sc), "foreach": trainable.largest_group_params(s, sc),
                  "fused": 0}[sc.optimizer_impl]
        return values * trainable.trained_value_bytes(sc)
    values = {"forloop": forloop_adam_temp_params(s, sc), "foreach": optimizer_group_params(s, sc),
              "fused": 0}[sc.optimizer_impl]
    return values * state_bytes_per_value


def adam_steps_on_device(sc: Scenario) -> bool:
    """Whether Adam's `step` counters live on the parameters' device (fused) rather than
    on the CPU (which counts for target="cpu" anyway)."""
    return sc.target == "cpu" or sc.optimizer_impl == "fused"
