"""torch's MemTracker, made to follow a model whose parameters are partly frozen.

MemTracker (torch.distributed._tools.mem_tracker) installs a gradient hook on every parameter
of every module it sees run, to file gradients under GRAD; `Tensor.register_hook` refuses a
tensor that does not require grad, so a LoRA, prefix or top-layers model (frozen base
weights) fails on its first forward. `Tracker` installs the hooks only on parameters that
require grad: a frozen parameter never gets a gradient, so nothing is lost. With every
parameter trainable it behaves exactly as MemTracker.

MemTracker counts only the tensors it sees created while it is active, or those passed to
`track_external`. Tensors that a model keeps outside its parameters and buffers (the block
statistics of bitsandbytes' quantized weights: peft_models.quant_state_tensors) must be
passed there; MemTracker files them under OTH ("other").
"""

from __future__ import annotations

from torch.distributed._tools.mem_tracker import MemTracker, _MemRefType


class Tracker(MemTracker):
    """MemTracker that hooks the gradients of trainable parameters only."""

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

    def track_weights(self, *tensors) -> None:
        """Track tensors created before the tracker as weights (PARAM): the block statistics
        of quantized weights, which are part of the weights but no parameter."""
        for t in tensors:
            self._update_and_maybe_create_winfos(t, _MemRefType.PARAM)
