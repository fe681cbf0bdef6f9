"""One step of each method, exactly as the memory model describes it.

bp         model.train(); out = model(input_ids=ids, labels=ids, use_cache=False);
           out.loss.backward(); opt.step(); opt.zero_grad(set_to_none=True); del out
           (the logits stay alive through the backward pass, as in a typical training loop)
mezo       model.eval(); two forward passes under torch.no_grad() around in-place
           perturbations (see mezo.py); each output dropped once its loss is read
inference  model.eval(); one forward pass with labels under torch.no_grad()

use_cache=False everywhere: fine-tuning needs no KV cache, and with HF's default an eval
forward would keep every layer's keys and values. torch.no_grad() rather than
inference_mode(): the same memory on a GPU, but under inference_mode cross_entropy runs as
one composite op whose internal log_softmax buffer a MemTracker trace cannot see
(docs/step_semantics.md).

Mixed precision: fp32 parameters and torch.autocast(device_type, dtype=bf16/fp16) around the
forward pass (no GradScaler: it changes no tensor that the memory model counts).
"""

from __future__ import annotations

import contextlib

import torch
from torch._subclasses.fake_tensor import FakeTensor

from .mezo import MeZO

# Learning rates of the validation runs. Memory does not depend on them; they are small
# enough that a few steps on random weights stay finite.
DEFAULT_LR = {"sgd": 1e-4, "momentum": 1e-4, "adam": 1e-5, "adamw": 1e-5, "mezo": 1e-6}
MEZO_EPS = 1e-3   # the perturbation scale ε of Malladi et al.


def make_optimizer(name: str, params, lr: float | None = None) -> torch.optim.Optimizer:
    """The torch optimizer of a scenario. foreach=True explicitly, so that CPU and fake-tensor
    runs use the multi-tensor implementation that CUDA picks by default."""
    lr = DEFAULT_LR[name] if lr is None else lr
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=0.0, foreach=True)
    if name == "momentum":
        return torch.optim.SGD(params, lr=lr, momentum=0.9, foreach=True)
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, foreach=True)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, foreach=True)
    raise ValueError(f"optimizer: unknown {name!r}")


def loss_value(loss: torch.Tensor):
    """A loss as a float; under fake tensors (no values) the 0-d tensor itself."""
    if isinstance(loss, FakeTensor):
        return loss
    return float(loss)


class Stepper:
    """Runs steps of one method on one model; `phase` names where a step currently is
    (for out-of-memory messages)."""

    def __init__(self, model, method: str, optimizer: str = "adamw", autocast_dtype=None,
                 lr: float | None = None, eps: float = MEZO_EPS, seed: int = 0,
                 mezo_chunk_elements: int | None = None):
        self.model, self.method = model, method
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
            self.optimizer = make_optimizer(optimizer, [p for p in model.parameters() if p.requires_grad], lr)
        elif method == "mezo":
            model.eval()
            self.mezo = MeZO(model.parameters(), lr=DEFAULT_LR["mezo"] if lr is None else lr,
                             eps=eps, seed=seed, chunk_elements=mezo_chunk_elements)
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

    def step(self, ids: torch.Tensor):
        """One step; returns its loss (a float, or a 0-d fake tensor)."""
        if self.method == "bp":
            return self._bp(ids)
        if self.method == "mezo":
            self.phase = "perturbation"
            return loss_value(self.mezo.step(lambda: self._forward_loss(ids)))
        return self._forward_loss(ids)

    def _bp(self, ids):
        self.phase = "forward"
        self.reset_tracker()
        with self.autocast():
            out = self.model(input_ids=ids, labels=ids, use_cache=False)
        self.phase = "backward"
        out.loss.backward()
        self.phase = "optimizer step"
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        loss = out.loss.detach()
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
