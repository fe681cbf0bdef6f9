"""torch's MemTracker, made to follow a model whose parameters are partly frozen.

MemTracker (torch.distributed._tools.mem_tracker) installs a gradient hook on every parameter
of every module it sees run, to file gradients under GRAD; `Tensor.register_hook` refuses a
tensor that does not require grad, so a LoRA, prefix or top-layers model (frozen base
weights) fails on its first forward. `Tracker` installs the hooks only on parameters that
require grad: a frozen parameter never gets a gradient, so nothing is lost. With every
parameter trainable it behaves exactly as MemTracker.

MemTracker's ModTracker registers a multi-grad hook on the inputs of every module
(torch/distributed/_tools/mod_tracker.py, _fw_pre_hook, through
torch.autograd.graph.register_multi_grad_hook, mode "all"). That hook's closure keeps the
list of the inputs' autograd nodes, and it is itself kept by those nodes: a cycle through
C++ that Python's collector cannot break, so each step's autograd graph stays reachable.
The graph's saved tensors are released by backward, but an AccumulateGrad node keeps its
leaf: the frozen embedding's output that transformers makes require grad under checkpointing
(PreTrainedModel.enable_input_require_grads) and its gradient (2·p·N·h) then stay alive
under the tracker, one more per step, inflating every step after the second (measured: a
Llama LoRA model with checkpointing, +N·h·4 bytes per step at bf16 under MemTracker, both
in the tracked totals and in the process's resident memory, and nothing without it).
`Tracker` registers the same hook without the cycle: the node list is dropped once the hook
has counted the nodes it waits for (the first gradient of a backward pass).

MemTracker counts only the tensors it sees created while it is active, or those passed to
`track_external`. Tensors that a model keeps outside its parameters and buffers (the block
statistics of bitsandbytes' quantized weights: peft_models.quant_state_tensors) must be
passed there; MemTracker files them under OTH ("other").

MemTracker also keeps, after every op, the peak of every module that is running
(MemTracker._update_peak_stats walks every module seen in the pass, a weak dictionary, and
deep-copies a snapshot whenever one of them rises): a cost per op that grows with the
number of modules (GPT-2's twelve layers: most of a tracked step's overhead). The
validation reads the tracker's current and global peak snapshots only, never the
per-module ones, so `Tracker` keeps the global peak alone, exactly as MemTracker computes
it (the same totals, compared after the same ops).
"""

from __future__ import annotations

import threading

import torch
from torch.autograd.graph import _get_grad_fn_or_grad_acc, _MultiHandle
from torch.distributed._tools import mod_tracker as _mod_tracker
from torch.distributed._tools.mem_tracker import _TOTAL_KEY, MemTracker, _MemRefType

_register_multi_grad_hook = _mod_tracker.register_multi_grad_hook


def _register_multi_grad_hook_no_cycle(tensors, fn, *, mode="all"):
    """torch.autograd.graph.register_multi_grad_hook (torch 2.13), mode "all", except that
    the closure lets go of the tensors' autograd nodes once it has counted how many of them
    the backward pass will run; mode "any" holds no nodes and is torch's own."""
    if mode != "all":
        return _register_multi_grad_hook(tensors, fn, mode=mode)
    lock = threading.Lock()
    count: dict = {}
    buffer: dict = {}
    state = {"grad_fns": [_get_grad_fn_or_grad_acc(t) for t in tensors], "nb_calls": None}
    n = len(tensors)

    def get_inner_hook(idx):
        def inner_hook(grad):
            task = torch._C._current_graph_task_id()
            count[task] = count.get(task, 0)
            buffer[task] = buffer.get(task, [None] * n)
            with lock:
                current, count[task] = count[task], count[task] + 1
                if current == 0 and state["grad_fns"] is not None:
                    state["nb_calls"] = sum(map(torch._C._will_engine_execute_node, state["grad_fns"]))
                    state["grad_fns"] = None          # no cycle through the graph from here on
            buffer[task][idx] = grad
            if current == state["nb_calls"] - 1:
                fn(buffer[task])
                del count[task]
                del buffer[task]
        return inner_hook

    handles = tuple(t.register_hook(get_inner_hook(i)) for i, t in enumerate(tensors))
    return _MultiHandle(handles)


class FrozenParamsSafe:
    """A mixin for MemTracker and its subclasses (FSDPMemTracker too): gradient hooks on
    trainable parameters only, and module hooks that keep no autograd graph alive."""

    def __enter__(self):
        _mod_tracker.register_multi_grad_hook = _register_multi_grad_hook_no_cycle
        try:
            return super().__enter__()
        except BaseException:
            _mod_tracker.register_multi_grad_hook = _register_multi_grad_hook
            raise

    def __exit__(self, *args):
        try:
            return super().__exit__(*args)
        finally:
            _mod_tracker.register_multi_grad_hook = _register_multi_grad_hook

    def _track_module_params_and_buffers(self, module, install_grad_hooks: bool = True) -> tuple[int, int]:
        # MemTracker._track_module_params_and_buffers (torch 2.13), with the gradient hooks
        # limited to parameters that require grad.
        def grad_hook(grad) -> None:
            self._update_and_maybe_create_winfos(grad, _MemRefType.GRAD)

        param_memory = 0
        for param in module.parameters():
            winfos = self._update_and_maybe_create_winfos(param, _MemRefType.PARAM)
            param_memory += sum(w.mem_consumed for w in winfos)
            if param.grad is not None:
                self._update_and_maybe_create_winfos(param.grad, _MemRefType.GRAD)
            if install_grad_hooks and param.requires_grad and self._param_to_grad_hook_handles.get(param) is None:
                self._param_to_grad_hook_handles[param] = (
                    param.register_hook(grad_hook),
                    param.register_post_accumulate_grad_hook(lambda p: grad_hook(p.grad)),
                )
        buffer_memory = 0
        for buffer in module.buffers():
            winfos = self._update_and_maybe_create_winfos(buffer, _MemRefType.BUFFER)
            buffer_memory += sum(w.mem_consumed for w in winfos)
        return param_memory, buffer_memory



class Tracker(FrozenParamsSafe, MemTracker):
    """MemTracker that hooks the gradients of trainable parameters only, whose module
    hooks keep no autograd graph alive, and that keeps the global peak only (no per-module
    peaks)."""

    def _update_peak_stats(self, peak_state) -> None:
        # MemTracker._update_peak_stats (torch 2.13), its second loop: the global peak.
        for dev, dev_snap in self._curr_mem_snap.items():
            if self._peak_mem.get(dev, 0) < dev_snap[_TOTAL_KEY]:
                self._peak_mem[dev] = dev_snap[_TOTAL_KEY]
                self._peak_mem_snap[dev] = dict(dev_snap)   # its values are ints: a copy is a deep copy

    def track_weights(self, *tensors) -> None:
        """Track tensors created before the tracker as weights (PARAM): the block statistics
        of quantized weights, which are part of the weights but no parameter."""
        for t in tensors:
            self._update_and_maybe_create_winfos(t, _MemRefType.PARAM)
