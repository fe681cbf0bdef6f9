"""One step of each method in the plain loop, exactly as the memory model describes it.
(The `trainer` loop runs transformers.Trainer itself: trainer_loop.py.)

bp         model.train(); for each of the K micro-batches of the step:
               out = model(input_ids=ids, labels=ids, use_cache=loop.use_cache)
               (out.loss / K).backward()          (out.loss.backward() when K = 1)
           opt.step(); opt.zero_grad(set_to_none=loop.zero_grad_to_none); del out
           With loop.hold_outputs (the default of the plain loop) `out` and its logits stay
           referenced through backward, and the previous micro-batch's `out` until the next
           forward returns, as in a typical loop; otherwise only the loss is kept.
mezo       model.eval(); mezo_n pairs of forward passes around perturbations, then the
           update: ours (mezo.MeZO, z drawn chunk by chunk, in place) or the reference
           trainer's (mezo.ReferenceMeZO: a full-size z per tensor, out-of-place updates)
inference  model.eval(); one forward pass with labels under torch.no_grad()

use_cache=False unless the loop says otherwise: fine-tuning needs no KV cache, and with HF's
default an eval forward keeps every layer's keys and values. torch.no_grad() rather than
inference_mode(): the same memory, but under inference_mode cross_entropy runs as one
composite op whose internal log_softmax buffer a MemTracker trace cannot see
(docs/step_semantics.md). The reference MeZO runs its forwards under inference_mode on real
devices, as published, and under no_grad in a trace (the CPU allocator measures the two
alike: docs/loops.md).

Mixed precision: fp32 parameters and torch.autocast(device_type, dtype=bf16/fp16) around the
forward pass (no GradScaler: it changes no tensor that the memory model counts).
"""

from __future__ import annotations

import contextlib

import torch
from torch._subclasses.fake_tensor import FakeTensor

from ..scenario import LOOPS, Loop, resolved_optimizer_impl
from .mezo import MeZO, ReferenceMeZO

# Learning rates of the validation runs. Memory does not depend on them; they are small
# enough that a few steps on random weights stay finite.
DEFAULT_LR = {"sgd": 1e-4, "momentum": 1e-4, "adam": 1e-5, "adamw": 1e-5, "mezo": 1e-6}
MEZO_EPS = 1e-3   # the perturbation scale ε of Malladi et al.

# torch.optim keyword arguments that select each implementation.
IMPL_KWARGS = {"forloop": {"foreach": False}, "foreach": {"foreach": True}, "fused": {"fused": True}}


def optimizer_class_and_kwargs(name: str, impl: str, lr: float | None = None) -> tuple:
    """(torch optimizer class, keyword arguments) of a scenario's optimizer in one
    implementation (forloop, foreach or fused)."""
    lr = DEFAULT_LR[name] if lr is None else lr
    kwargs = {"lr": lr, **IMPL_KWARGS[impl]}
    if name in ("sgd", "momentum"):
        return torch.optim.SGD, {**kwargs, "momentum": 0.9 if name == "momentum" else 0.0}
    if name == "adam":
        return torch.optim.Adam, kwargs
    if name == "adamw":
        return torch.optim.AdamW, kwargs
    raise ValueError(f"optimizer: unknown {name!r}")


def make_optimizer(name: str, params, lr: float | None = None, impl: str = "foreach") -> torch.optim.Optimizer:
    """The torch optimizer of a scenario, in implementation `impl` (foreach by default: the
    implementation CUDA picks by default, made explicit so that CPU and fake-tensor runs use
    it too)."""
    cls, kwargs = optimizer_class_and_kwargs(name, impl, lr)
    return cls(params, **kwargs)


def decay_parameter_groups(model) -> list[dict]:
    """transformers.Trainer.create_optimizer's two parameter groups: the parameters
    Trainer.get_decay_parameter_names names (weight decay), then the others (biases and
    norms, none)."""
    from transformers import Trainer
    decay = set(Trainer.get_decay_parameter_names(None, model))
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    return [{"params": [p for n, p in named if n in decay]},
            {"params": [p for n, p in named if n not in decay], "weight_decay": 0.0}]


def loss_value(loss: torch.Tensor):
    """A loss as a float; under fake tensors (no values) the 0-d tensor itself."""
    if isinstance(loss, FakeTensor):
        return loss
    return float(loss)


def micro_batches(ids) -> list:
    """A step's micro-batches: a list of id tensors (one tensor is one micro-batch)."""
    return [ids] if isinstance(ids, torch.Tensor) else list(ids)


class Stepper:
    """Runs steps of one method on one model in the plain loop; `phase` names where a step
    currently is (for out-of-memory messages)."""

    def __init__(self, model, method: str, optimizer: str = "adamw", autocast_dtype=None,
                 lr: float | None = None, eps: float = MEZO_EPS, seed: int = 0,
                 mezo_chunk_elements: int | None = None, loop: Loop | None = None):
        self.model, self.method = model, method
        self.loop = LOOPS["plain"] if loop is None else loop
        # Called with the new phase's name whenever `phase` is set (the fast trace marks
        # phase boundaries in its timeline with it).
        self.on_phase = lambda phase: None
        self.phase = "setup"
        # Called before every forward pass (and after MeZO's): a MemTracker needs
        # reset_mod_stats() there, since it refuses a second pass of the root module
        # otherwise, and an empty module table keeps its per-operation cost low.
        self.reset_tracker = lambda: None
        device_type = next(model.parameters()).device.type
        self.autocast = (lambda: torch.autocast(device_type, dtype=autocast_dtype)) \
            if autocast_dtype is not None else contextlib.nullcontext
        self.optimizer = None
        self.mezo = None
        if method == "bp":
            model.train()
            # Over the trainable parameters only (all of them, unless a PEFT method froze some).
            impl = resolved_optimizer_impl(self.loop, optimizer, "cuda" if device_type == "cuda" else "cpu")
            params = decay_parameter_groups(model) if self.loop.split_decay_groups \
                else [p for p in model.parameters() if p.requires_grad]
            self.optimizer = make_optimizer(optimizer, params, lr, impl)
        elif method == "mezo":
            model.eval()
            lr = DEFAULT_LR["mezo"] if lr is None else lr
            if self.loop.mezo_impl == "reference":
                self.mezo = ReferenceMeZO(model.named_parameters(), lr=lr, eps=eps, seed=seed)
            else:
                self.mezo = MeZO(model.parameters(), lr=lr, eps=eps, seed=seed, chunk_elements=mezo_chunk_elements)
        elif method == "inference":
            model.eval()
        else:
            raise ValueError(f"method: unknown {method!r}")

    @property
    def phase(self) -> str:
        return self._phase

    @phase.setter
    def phase(self, name: str) -> None:
        self._phase = name
        self.on_phase(name)

    def step(self, ids):
        """One step on `ids` (a tensor, or a list of the step's micro-batches); returns its
        loss (a float, or a 0-d fake tensor)."""
        batches = micro_batches(ids)
        if self.method == "bp":
            return self._bp(batches)
        if self.method == "mezo":
            self.phase = "perturbation"
            forward = self._reference_forward_loss if self.loop.mezo_impl == "reference" else self._forward_loss
            return loss_value(self.mezo.step(lambda: forward(batches[0]), n=self.loop.mezo_n))
        return self._forward_loss(batches[0])

    def _bp(self, batches):
        k_total = len(batches)
        out = None
        for k, ids in enumerate(batches):
            self.phase = "forward" if k_total == 1 else f"forward (micro-batch {k + 1}/{k_total})"
            self.reset_tracker()
            with self.autocast():
                out = self.model(input_ids=ids, labels=ids, use_cache=self.loop.use_cache)
            loss = out.loss
            if not self.loop.hold_outputs:
                out = None
            self.phase = "backward" if k_total == 1 else f"backward (micro-batch {k + 1}/{k_total})"
            (loss / k_total if k_total > 1 else loss).backward()
        self.phase = "optimizer step"
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=self.loop.zero_grad_to_none)
        loss = loss.detach()
        del out
        return loss_value(loss)

    def _forward_loss(self, ids):
        """A forward pass without autograd; the output is dropped once its loss is read."""
        previous, self.phase = self.phase, "forward"
        self.reset_tracker()
        with torch.no_grad(), self.autocast():
            out = self.model(input_ids=ids, labels=ids, use_cache=False)
            loss = out.loss
            del out
            loss = loss_value(loss)
        self.reset_tracker()
        self.phase = previous if self.method == "mezo" else "forward"
        return loss

    def _reference_forward_loss(self, ids):
        """MeZO's OurTrainer.zo_forward: model.eval(), compute_loss (`model(**inputs)`, the
        config's use_cache, the output dropped) under torch.inference_mode on a real
        device; under no_grad in a trace (see the module docstring)."""
        previous, self.phase = self.phase, "forward"
        self.reset_tracker()
        fake = isinstance(ids, FakeTensor)
        with (torch.no_grad() if fake else torch.inference_mode()), self.autocast():
            loss = self.model(input_ids=ids, labels=ids).loss
            loss = loss.detach() if fake else float(loss)
        self.reset_tracker()
        self.phase = previous
        return loss
