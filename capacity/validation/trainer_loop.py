"""The `trainer` loop: transformers.Trainer.train() itself, measured.

What runs is what a Trainer user gets with the defaults of the pinned versions
(transformers 5.23, accelerate 1.15, torch 2.13): an in-memory dataset of the engine's
token batches ({"input_ids", "labels"} per sequence, collated by Trainer's default
collator), report_to="none", no saving, no evaluation, no hub; max_steps = the run's
steps; per_device_train_batch_size = the scenario's batch (one micro-batch);
gradient_accumulation_steps = the loop's K; learning rate of the validation runs.
The loop's settings map to Trainer arguments:
  * optimizer: AdamW in Trainer's own implementation choice (optim="adamw_torch_fused",
    the default) when the loop leaves it open; any other optimizer or implementation is
    handed over as `optimizer_cls_and_kwargs`, which Trainer builds with its own parameter
    groups (decay and no decay);
  * mixed precision: `bf16=True` (or `fp16=True`) on an fp32 model (accelerate's autocast,
    outputs converted to fp32);
  * L'/L = 0: `activation_checkpointing=True` (Trainer's `gradient_checkpointing`); another
    L'/L checkpoints the first layers of the model before it is handed over;
  * use_cache=False: model.config.use_cache = False, as users do.
Settings Trainer has no way to express (outputs held through backward, zeroed gradients
kept, labels that are the input ids, one parameter group) are refused with a message.

The measurement starts with step 2 (Trainer's on_step_begin, after it has prefetched the
step's micro-batches) and ends with the last step (on_step_end, after zero_grad); the run
stops there, before Trainer's closing bookkeeping.

Under fake tensors (device trace), three things of the run are adapted, none of which
allocates on the device: the dataloader runs on real tensors (its sampler and worker seed
read values) and each collated batch becomes a fake tensor of the same size, made by one
tracked op (as collation is); `model.to(cpu)`, a move to the device the model is on, is
skipped (nn.Module.to cannot swap fake parameters); `logging_nan_inf_filter` is off (it
reads the loss's value; on a real run it makes two 1-byte flags after backward).
"""

from __future__ import annotations

import contextlib
import copy
import shutil
import tempfile
import time
import types

import torch
from torch.utils._python_dispatch import _disable_current_modes

from ..scenario import resolved_optimizer_impl
from .models import checkpoint_first_layers, decoder_layers, num_checkpointed_layers
from .steps import DEFAULT_LR, optimizer_class_and_kwargs


class _Done(Exception):
    """Raised by the measuring callback after the last step."""


def trainer_refusal(scenario, device: str = "cpu") -> str | None:
    """Why transformers.Trainer cannot run this scenario's loop on `device`, or None."""
    lp = scenario.loop
    if scenario.method != "bp":
        return None
    if lp.hold_outputs:
        return "loop trainer: Trainer.compute_loss keeps only the loss; outputs held through backward need the plain loop"
    if not lp.zero_grad_to_none:
        return "loop trainer: Trainer calls model.zero_grad() (set_to_none=True); zeroed gradients kept need the plain loop"
    if not lp.split_decay_groups:
        return "loop trainer: Trainer.create_optimizer always makes decay and no-decay parameter groups"
    if not lp.separate_labels:
        return "loop trainer: Trainer's collator makes labels a tensor of their own"
    if scenario.mixed_precision and scenario.dtype == "fp16" and device != "cuda":
        return "loop trainer: fp16 mixed precision (a GradScaler) needs a GPU; use bf16"
    return None


class _TokenDataset(torch.utils.data.Dataset):
    """One example per sequence of the engine's batches: input_ids and labels, the same ids."""

    def __init__(self, rows: list):
        self.rows = rows

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i):
        return {"input_ids": self.rows[i], "labels": self.rows[i]}


class _FakeBatches:
    """A dataloader whose batches are collated on real tensors, outside every mode, then
    become fake tensors by one tracked op each (clone), as a real collation allocates them."""

    def __init__(self, loader, fake_mode):
        self.loader, self.fake_mode = loader, fake_mode

    def __len__(self):
        return len(self.loader)

    def __getattr__(self, name):
        return getattr(self.loader, name)

    def __iter__(self):
        it = iter(self.loader)
        while True:
            with _disable_current_modes():
                try:
                    batch = next(it)
                except StopIteration:
                    return
                fakes = {k: self.fake_mode.from_tensor(v) if torch.is_tensor(v) else v for k, v in batch.items()}
            yield {k: v.clone() if torch.is_tensor(v) else v for k, v in fakes.items()}


def run(model, scenario, rows: list, steps: int, device: str, fake_mode, lr, seed, tracker, alloc, where,
        on_step=None, checkpointed: int | None = None, on_phase=None, on_measure_start=None,
        track_extra_step: bool = False):
    """Train `model` for `steps` optimizer steps with transformers.Trainer; `tracker` (a
    MemTracker, entered here) measures steps 2..N, `alloc` (a CpuAllocatorPeak or None)
    marks the same region. on_step(i, loss or None, seconds) is called after each step.
    track_extra_step: the steps run untracked (their times carry no MemTracker dispatch)
    and one more step, N + 1, runs under the tracker for the breakdown (rows must hold it);
    on cuda, torch.cuda.max_memory_allocated is read at the end of step N into
    `where["cuda_peak"]`.
    checkpointed: how many first layers to checkpoint (default: from the scenario's L'/L).
    on_phase(name) is called as the step moves through "forward" (each micro-batch),
    "backward", "optimizer step" and "step end"; on_measure_start() when step 2 begins
    (the fast trace marks its timeline with them).
    Returns (the Trainer, the tracker's live bytes when step 2 began)."""
    import transformers
    from transformers import Trainer, TrainerCallback, TrainingArguments

    why = trainer_refusal(scenario, device)
    if why:
        raise ValueError(why)
    lp = scenario.loop
    target = "cuda" if device == "cuda" else "cpu"
    impl = resolved_optimizer_impl(lp, scenario.optimizer, target)
    trainer_default = scenario.optimizer == "adamw" and impl == "fused" and lp.optimizer_impl is None
    lr = DEFAULT_LR[scenario.optimizer] if lr is None else lr
    n_layers = len(decoder_layers(model))
    ckpt = num_checkpointed_layers(n_layers, scenario.keep) if checkpointed is None else checkpointed
    if not lp.use_cache:
        model.config.use_cache = False
    if 0 < ckpt < n_layers:
        checkpoint_first_layers(model, ckpt)
    report_phase = on_phase or (lambda name: None)

    def on_phase(name):
        where["stepper"].phase = name
        report_phase(name)
    if fake_mode is not None:
        model.to = types.MethodType(lambda self, *a, **k: self, model)

    last = steps + 1 if track_extra_step else steps
    args = dict(output_dir=tempfile.mkdtemp(prefix="capacity-trainer-"), report_to="none",
                save_strategy="no", eval_strategy="no", push_to_hub=False, disable_tqdm=True,
                per_device_train_batch_size=scenario.batch, gradient_accumulation_steps=lp.grad_accum,
                max_steps=last, learning_rate=lr, seed=seed, use_cpu=device != "cuda",
                activation_checkpointing=ckpt == n_layers and ckpt > 0,
                dataloader_pin_memory=device == "cuda")
    if scenario.mixed_precision:
        args[scenario.dtype] = True
    if fake_mode is not None:
        args["logging_nan_inf_filter"] = False
    extra = {}
    if not trainer_default:
        extra["optimizer_cls_and_kwargs"] = optimizer_class_and_kwargs(scenario.optimizer, impl, lr)

    state = {"measuring": False, "trainer": None}
    on_step = on_step or (lambda i, loss, seconds: None)

    def running_loss():
        tr_loss = getattr(state["trainer"], "_tr_loss", None)
        return None if fake_mode is not None or tr_loss is None else float(tr_loss)

    def start_region():
        tracker._peak_mem = {d: s["Total"] for d, s in tracker._curr_mem_snap.items()}
        tracker._peak_mem_snap = copy.deepcopy(tracker._curr_mem_snap)
        state["start_total"] = sum(tracker._peak_mem.values())
        if alloc is not None:
            state["region"] = alloc.region()
            state["region"].__enter__()
        if on_measure_start is not None:
            on_measure_start()

    class Measure(TrainerCallback):
        def on_step_begin(self, a, st, control, **kw):
            where["step"] = st.global_step + 1
            if device == "cuda":
                torch.cuda.synchronize()
            state["began"], state["loss_before"] = time.perf_counter(), running_loss()
            if st.global_step == 1 and not state["measuring"]:
                state["measuring"] = True
                if device == "cuda":
                    torch.cuda.reset_peak_memory_stats()
                if not track_extra_step:
                    start_region()

        def on_pre_optimizer_step(self, a, st, control, **kw):
            on_phase("optimizer step")

        def on_step_end(self, a, st, control, **kw):
            if device == "cuda":
                torch.cuda.synchronize()
            seconds = time.perf_counter() - state["began"]
            if st.global_step > steps:   # the extra, tracked step
                raise _Done()
            after = running_loss()
            loss = after - state["loss_before"] if after is not None and state["loss_before"] is not None else None
            on_step(st.global_step, loss, seconds)
            if st.global_step >= steps:
                if device == "cuda":
                    where["cuda_peak"] = int(torch.cuda.max_memory_allocated())
                if not track_extra_step:
                    raise _Done()
                # The extra step: the tracker starts from what is live now (weights, optimizer
                # states), before the Trainer fetches the step's batch.
                opt = state["trainer"].optimizer
                tracker.track_external(model, getattr(opt, "optimizer", opt))
                track()
                start_region()
            on_phase("step end")

    class _Trainer(Trainer):
        def get_train_dataloader(self):
            loader = super().get_train_dataloader()
            return _FakeBatches(loader, fake_mode) if fake_mode is not None else loader

    trainer_cls = _Trainer if fake_mode is not None else Trainer
    trainer = trainer_cls(model=model, args=TrainingArguments(**args), train_dataset=_TokenDataset(rows),
                          callbacks=[Measure()], **extra)
    state["trainer"] = trainer
    transformers.logging.set_verbosity_error()

    # The tracker runs from the start, or (track_extra_step) from the end of step N.
    tracking = contextlib.ExitStack()

    def track():
        tracking.enter_context(tracker)
        state["tracking"] = True

    def reset_before_root_forward(module, inputs):
        if module is model and state.get("tracking"):
            tracker.reset_mod_stats()

    hooks = [torch.nn.modules.module.register_module_forward_pre_hook(reset_before_root_forward),
             model.register_forward_pre_hook(lambda module, inputs: on_phase("forward")),
             model.register_forward_hook(lambda module, inputs, output: on_phase("backward"))]
    tracker.track_external(model)
    try:
        with tracking:
            if not track_extra_step:
                track()
            try:
                trainer.train()
            except _Done:
                pass
    finally:
        for hook in hooks:
            hook.remove()
        shutil.rmtree(args["output_dir"], ignore_errors=True)   # nothing is saved; the folder goes
        if alloc is not None and "region" in state:
            state["region"].__exit__(None, None, None)
    if not state["measuring"]:
        raise RuntimeError("trainer loop: the run ended before step 2")
    return trainer, state["start_total"]
