"""LoRA and prefix tuning over several devices: capacity's per-device prediction (capacity/sharding.py with the
parameter classes of capacity/trainable.py) against rank 0's peak traced with torch's own
DDP, ZeroRedundancyOptimizer and FSDP2 (accelerate's wrapping of a peft model, built with
get_peft_model before the wrap as Trainer does) under fake tensors and a fake process group.
Small configs; the whole matrix at 7B-70B is in bench/accuracy.py --sharding."""

from dataclasses import replace

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("accelerate")
pytest.importorskip("peft")

import capacity  # noqa: E402
from capacity.scenario import Loop, Parallel, Peft, Scenario  # noqa: E402
from capacity.sharding import fsdp_layout  # noqa: E402
from capacity.validation import sharded  # noqa: E402
from capacity.validation.sharded import measure_sharded  # noqa: E402
from capacity.validation.source import resolve_model  # noqa: E402

from test_sharding_accuracy import LLAMA, OPT, TIED  # noqa: E402  (the same small configs)

TOLERANCE_PCT = 3.0
LORA = Peft(method="lora")
PREFIX = Peft(method="prefix")


def scenario(sharding, devices, method="bp", offload=False, keep=1.0, seq=32, peft=LORA, loop="plain",
             impl="foreach"):
    return Scenario(method=method, optimizer="adamw", batch=2, seq=seq, dtype="bf16", keep=keep, target="cpu",
                    loop=Loop(name=loop, optimizer_impl=impl), peft=peft,
                    parallel=Parallel(devices=devices, sharding=sharding, offload_optimizer=offload))


CASES = [
    ("llama fsdp", LLAMA, scenario("fsdp", 4)),
    ("llama fsdp N=64 (padded adapters)", LLAMA, scenario("fsdp", 64)),
    ("llama fsdp checkpointed", LLAMA, scenario("fsdp", 2, keep=0.0)),
    ("llama zero2", LLAMA, scenario("zero2", 4)),
    ("llama fsdp offload", LLAMA, scenario("fsdp", 4, offload=True)),
    ("llama ddp", LLAMA, scenario("ddp", 2)),
    ("llama zero1", LLAMA, scenario("zero1", 4)),
    ("llama mezo fsdp", LLAMA, scenario("fsdp", 4, method="mezo")),
    ("tied fsdp", TIED, scenario("fsdp", 4)),
    ("opt fsdp all-linear", OPT, scenario("fsdp", 4, peft=Peft(method="lora", lora_targets=("q_proj", "v_proj", "fc1")))),
    ("llama prefix fsdp", LLAMA, scenario("fsdp", 4, peft=PREFIX)),
    ("llama prefix zero1", LLAMA, scenario("zero1", 4, peft=PREFIX)),
    ("llama prefix ddp", LLAMA, scenario("ddp", 2, peft=PREFIX)),
    ("llama prefix mezo zero2 (a growing prefix cache)", LLAMA, scenario("zero2", 8, method="mezo", peft=PREFIX)),
    ("opt prefix fsdp offload", OPT, scenario("fsdp", 4, offload=True, peft=PREFIX)),
    ("tied prefix fsdp", TIED, scenario("fsdp", 4, peft=PREFIX)),
    # Mixed precision (an fp32 model, accelerate's MixedPrecisionPolicy): the frozen base
    # stored in fp32, everything gathered and computed in bf16, the adapters included.
    ("llama fsdp mixed precision", LLAMA, replace(scenario("fsdp", 4, loop="trainer", impl=None), mixed_precision=True)),
    ("opt zero2 mixed precision", OPT, replace(scenario("zero2", 4), mixed_precision=True)),
    ("opt mezo fsdp mixed precision", OPT, replace(scenario("fsdp", 8, method="mezo"), mixed_precision=True)),
]


@pytest.mark.parametrize("name,cfg,sc", CASES, ids=[c[0] for c in CASES])
def test_lora_per_device_peak_matches_the_trace(name, cfg, sc):
    r = measure_sharded(cfg, sc, steps=3, trace_mode="full")
    shape, _ = resolve_model(cfg)
    est = capacity.estimate(shape, sc)
    traced = r["measured_peak_bytes"]
    assert abs(est.peak_bytes - traced) <= TOLERANCE_PCT / 100 * traced, (name, est.peak_bytes, traced)
    if sc.parallel.offload_optimizer:
        assert est.host_bytes == r["host_peak_bytes"]


def test_lora_adapters_alone_carry_optimizer_state_on_every_strategy():
    """AdamW's states on rank 0 as the next step's forward finds them: the adapters' (padded
    shards under FSDP2; the rank's whole tensors under ZeRO-1; all of them under DDP),
    never the frozen base's; the prediction's the same bytes. (Inside the optimizer step
    the tracker files the step's temporaries as states too; ZeroRedundancyOptimizer's
    local states are not filed as states at all: its totals are checked above.)"""
    shape, _ = resolve_model(LLAMA)
    for sharding, n in (("fsdp", 4), ("zero2", 2), ("ddp", 2)):
        sc = scenario(sharding, n)
        r = measure_sharded(LLAMA, sc, steps=2, trace_mode="full")
        traced = r["measured_phase_breakdown"]["forward"]["optimizer_states"]
        assert capacity.estimate(shape, sc).breakdown["optimizer_states"] == traced, sharding


def test_ddp_is_the_one_device_lora_step_plus_buckets_of_the_adapters():
    """N = 1 equivalence: DDP's rank runs the one-device step; what it adds is its gradient
    buckets, which cover only the parameters that require grad (the fp32 adapters)."""
    from capacity.validation import measure
    one = Scenario(method="bp", optimizer="adamw", batch=2, seq=32, dtype="bf16", target="cpu",
                   loop=Loop(name="plain", optimizer_impl="foreach"), peft=LORA)
    single = measure(LLAMA, one, steps=3, device="trace", trace_mode="full")
    r = measure_sharded(LLAMA, scenario("ddp", 2), steps=3, trace_mode="full")
    from capacity.trainable import trainable_value_bytes
    shape, _ = resolve_model(LLAMA)
    adapters = trainable_value_bytes(shape, one)
    assert r["gradient_bucket_bytes"] == adapters == 4 * single["trainable_params"]
    assert r["measured_peak_bytes"] == single["measured_peak_bytes"] + adapters


def test_accelerate_leaves_a_lora_models_final_norm_to_the_root():
    """fsdp_utils._find_final_norm looks through PeftModel to the causal LM, whose children
    hold no norm: the tail unit is the head alone (capacity.sharding.final_norm_in_tail),
    and every decoder layer's unit holds its frozen weights and its adapters together."""
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.distributed.fsdp import FSDPModule
    shape, _ = resolve_model(LLAMA)
    sc = scenario("fsdp", 2)
    lay = fsdp_layout(shape, 2, sc)
    with sharded.fake_world(2) as mesh, FakeTensorMode():
        run = sharded.ShardedRun(LLAMA, sc, "fsdp", mesh=mesh)
        groups = {}
        for name, module in run.model.named_modules():
            if isinstance(module, FSDPModule):
                group = module._get_fsdp_state()._fsdp_param_group
                if group is not None:
                    groups[name] = ([fp for fp in group.fsdp_params])
    tail = groups["base_model.model.lm_head"]
    assert sum(fp._orig_size.numel() for fp in tail) == lay.tail.params == lay.head.params
    root = groups[""]
    assert sum(fp._orig_size.numel() for fp in root) == lay.root.params == shape.hidden_size
    layer = groups["base_model.model.model.layers.0"]
    assert sum(fp._orig_size.numel() for fp in layer) == lay.layer(0).params
    assert sum(fp._orig_size.numel() for fp in layer if fp.sharded_param.requires_grad) == lay.layer(0).trained_params


def test_peft_over_several_devices_refuses_what_is_not_modelled_by_name():
    shape, _ = resolve_model(LLAMA)
    ok = capacity.estimate(shape, scenario("fsdp", 8))
    assert ok.trainable_params > 0 and ok.peak_bytes > 0
    assert capacity.estimate(shape, scenario("zero2", 4, peft=PREFIX)).trainable_params > 0
    for peft, words in ((Peft(method="lora", weights_bits=4), "quantized base"),
                        (Peft(method="prefix", weights_bits=8), "quantized base"),
                        (Peft(method="freeze"), "top layers")):
        for sharding, n, offload in (("fsdp", 8, False), ("ddp", 2, False), ("zero2", 4, True)):
            with pytest.raises(ValueError, match=words):
                capacity.estimate(shape, scenario(sharding, n, offload=offload, peft=peft))
    # mixed precision: LoRA under FSDP (16-bit compute, no autocast) and autocast over the fp32
    # model on one device are modelled; autocast under ddp and zero1 is refused
    assert capacity.estimate(shape, replace(scenario("fsdp", 8), mixed_precision=True)).peak_bytes > 0
    assert capacity.estimate(shape, replace(scenario("none", 1), mixed_precision=True)).peak_bytes > 0
    for sharding, n in (("ddp", 2), ("zero1", 4)):
        with pytest.raises(ValueError, match="modelled on one device"):
            capacity.estimate(shape, replace(scenario(sharding, n), mixed_precision=True))
    # one device: unchanged (QLoRA and prefix tuning are modelled there)
    assert capacity.estimate(shape, Scenario(method="bp", dtype="bf16", peft=Peft(method="prefix"))).peak_bytes > 0
    with pytest.raises(ValueError, match="quantized"):
        measure_sharded(LLAMA, scenario("fsdp", 2, peft=Peft(method="lora", weights_bits=4)), steps=2)
    with pytest.raises(ValueError, match="top layers"):
        measure_sharded(LLAMA, scenario("ddp", 2, peft=Peft(method="freeze")), steps=2)
    with pytest.raises(ValueError, match="checkpointing"):
        measure_sharded(LLAMA, scenario("fsdp", 2, keep=0.0, peft=PREFIX), steps=2)


def test_prefix_tuning_under_fsdp_mixed_precision_does_not_run(monkeypatch):
    """capacity refuses prefix tuning with mixed precision under FSDP as a run that fails,
    and the real stack does fail: with the refusal lifted, the traced step (peft's prefix,
    accelerate's FSDP2 mixed precision) stops at the attention's matmul of 16-bit queries
    and the fp32 prefix keys (peft casts them to the model's stored dtype), eager or SDPA."""
    from dataclasses import replace
    from capacity import trainable
    mixed = replace(scenario("fsdp", 2, peft=PREFIX, loop="trainer", impl=None), mixed_precision=True)
    shape, _ = resolve_model(LLAMA)
    with pytest.raises(ValueError, match="does not run"):
        capacity.estimate(shape, mixed)
    check = trainable.check_peft
    monkeypatch.setattr(trainable, "check_peft", lambda s, sc: check(s, replace(sc, mixed_precision=False)))
    for attention, words in (("eager", "expected scalar type"), ("sdpa", "same dtype")):
        with pytest.raises(RuntimeError, match=words):
            measure_sharded(LLAMA, replace(mixed, attention=attention), steps=2)


def test_fast_trace_of_a_lora_model_is_exact():
    """The 3- and 4-layer samples are peft models too (ShardedRun builds the peft model from
    each sample's config): extrapolated, a 5-layer LoRA model's trace is the whole trace."""
    cfg = dict(LLAMA, num_hidden_layers=5)
    for sc in (scenario("fsdp", 4), scenario("fsdp", 2, keep=0.0),
               scenario("fsdp", 4, method="mezo")):
        full = measure_sharded(cfg, sc, steps=3, trace_mode="full")
        fast = measure_sharded(cfg, sc, steps=3, trace_mode="extrapolated")
        assert fast["trace_mode"] == "extrapolated"
        for key in ("measured_peak_bytes", "measured_breakdown", "measured_phases"):
            assert fast[key] == full[key], (sc.parallel.sharding, key)
    # A prefix model's backward is not the same op by op in the 3- and 4-layer samples (the
    # gradient of the prefix's cache, one table for every layer): the engine says so and
    # traces the whole model.
    fast = measure_sharded(cfg, scenario("fsdp", 4, method="bp", peft=PREFIX), steps=3, trace_mode="extrapolated")
    assert fast["trace_mode"] == "full" and "differ" in fast["trace_fallback"]
