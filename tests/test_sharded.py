"""Per-rank memory of data-parallel runs traced with torch's own DDP, ZeroRedundancyOptimizer
and FSDP2 under a fake process group (capacity/validation/sharded.py). Tiny models at N = 2
and 4: what FSDP2 keeps per rank is checked against the parameter shapes (padded shards),
the fast trace against the whole trace, and the DTensor trap (shape propagation on
full-size fake tensors) against a run that counts it."""

import json
import math
import subprocess
import sys

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("accelerate")

from capacity.scenario import Loop, Parallel, Scenario  # noqa: E402
from capacity.validation import sharded  # noqa: E402
from capacity.validation.models import hf_config  # noqa: E402
from capacity.validation.sharded import measure_sharded  # noqa: E402

# An odd vocabulary, so that the embedding and the head are padded to a multiple of N.
LLAMA = {"model_type": "llama", "hidden_size": 32, "intermediate_size": 86, "num_hidden_layers": 2,
         "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 131,
         "max_position_embeddings": 64, "tie_word_embeddings": False}


def scenario(sharding, devices, method="bp", optimizer="adamw", offload=False, **kw):
    return Scenario(method=method, optimizer=optimizer, batch=1, seq=8, dtype="fp32",
                    loop=Loop(name="custom", optimizer_impl="foreach"),
                    parallel=Parallel(devices=devices, sharding=sharding, offload_optimizer=offload), **kw)


def padded_shard_elements(cfg, n):
    """Elements rank 0 holds of every parameter: FSDP2 chunks dim 0 into N and pads every
    chunk to the first (largest) one, ceil(d0/N) rows."""
    from transformers import AutoModelForCausalLM
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(hf_config(cfg))
    params = list(model.parameters())
    return sum(math.ceil(p.shape[0] / n) * math.prod(p.shape[1:]) for p in params), len(params)


@pytest.mark.parametrize("devices", [2, 4])
def test_fsdp_rank_holds_padded_shards_and_adam_states_of_them(devices):
    r = measure_sharded(LLAMA, scenario("fsdp", devices), steps=2)
    shard, tensors = padded_shard_elements(LLAMA, devices)
    b = r["measured_breakdown"]
    assert b["weights"] == 4 * shard
    # AdamW: exp_avg and exp_avg_sq of every local shard, and a 4-byte step per tensor
    assert b["optimizer_states"] == 2 * 4 * shard + 4 * tensors
    assert r["rank"] == 0 and r["host_peak_bytes"] == 0
    # no more than two units' unsharded copies (the current layer and the prefetched one)
    # and one reduce-scatter input at the peak
    assert b["all_gather_buffers"] + b["weights_unsharded"] > 0
    assert r["measured_peak_bytes"] == sum(b.values())


def test_sharding_order_and_mezo_without_gradients():
    peaks = {s: measure_sharded(LLAMA, scenario(s, 4), steps=2)["measured_peak_bytes"]
             for s in ("ddp", "zero2", "fsdp")}
    assert peaks["fsdp"] < peaks["zero2"] < peaks["ddp"]
    mezo = measure_sharded(LLAMA, scenario("fsdp", 4, method="mezo"), steps=2)
    assert mezo["measured_breakdown"]["gradients"] == 0
    assert mezo["measured_breakdown"]["optimizer_states"] == 0
    assert mezo["measured_peak_bytes"] < peaks["fsdp"]


def test_fast_trace_is_exact_for_sharded_runs():
    cfg = dict(LLAMA, num_hidden_layers=5)
    for sc in (scenario("fsdp", 4), scenario("fsdp", 2, keep=0.0), scenario("ddp", 2)):
        full = measure_sharded(cfg, sc, steps=2, trace_mode="full")
        fast = measure_sharded(cfg, sc, steps=2, trace_mode="extrapolated")
        assert fast["trace_mode"] == "extrapolated"
        for key in ("measured_peak_bytes", "measured_breakdown", "measured_phases"):
            assert fast[key] == full[key], key


def test_zero1_traces_the_rank_with_the_largest_share():
    r = measure_sharded(LLAMA, scenario("zero1", 4), steps=2)
    shares = r["rank_parameter_elements"]
    assert len(shares) == 4 and shares[r["rank"]] == max(shares)
    ddp = measure_sharded(LLAMA, scenario("ddp", 4), steps=2)
    assert r["measured_breakdown"]["optimizer_states"] < ddp["measured_breakdown"]["optimizer_states"]


def test_offload_keeps_shards_and_states_on_the_host():
    on = measure_sharded(LLAMA, scenario("fsdp", 2, offload=True), steps=2)
    off = measure_sharded(LLAMA, scenario("fsdp", 2), steps=2)
    shard, tensors = padded_shard_elements(LLAMA, 2)
    assert on["measured_breakdown"].get("weights", 0) == 0
    assert on["measured_breakdown"].get("optimizer_states", 0) == 0
    assert on["host_breakdown"]["weights"] == 4 * shard
    # the host peak falls in the optimizer step: states, and the foreach step's temporary
    assert on["host_breakdown"]["optimizer_states"] >= 8 * shard + 4 * tensors
    assert on["host_breakdown"]["gradients"] == 4 * shard
    assert on["measured_peak_bytes"] < off["measured_peak_bytes"]


def test_dtensor_shape_propagation_is_not_counted(monkeypatch):
    """With torch's sharding caches cleared before the tracked steps (as in a tracked first
    step), DTensor propagates shapes by running the optimizer's ops on full-size fake
    tensors; counted, they inflate the optimizer step; skipped, the step is what it is with
    warm caches (every real step after the first)."""
    from torch.distributed.tensor.debug import _clear_sharding_prop_cache
    warm = measure_sharded(LLAMA, scenario("fsdp", 4), steps=2)
    track = sharded.ShardedRun.track

    def cold(self):
        _clear_sharding_prop_cache()
        return track(self)

    monkeypatch.setattr(sharded.ShardedRun, "track", cold)
    skipped = measure_sharded(LLAMA, scenario("fsdp", 4), steps=2)
    counted = measure_sharded(LLAMA, scenario("fsdp", 4), steps=2, skip_propagation=False)
    phase = "optimizer step"
    assert skipped["measured_phases"][phase] == warm["measured_phases"][phase]
    assert counted["measured_phases"][phase] > warm["measured_phases"][phase]


def test_validate_command_line_sharded(tmp_path):
    cfg = tmp_path / "config.json"
    cfg.write_text(json.dumps(LLAMA))
    base = [sys.executable, "-m", "capacity", "validate", "--config", str(cfg), "--method", "bp",
            "--dtype", "fp32", "--seq", "8", "--steps", "2", "--progress", "none"]
    out = subprocess.run(base + ["--devices", "2", "--sharding", "fsdp", "--json"],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    r = json.loads(out.stdout.strip().splitlines()[-1])
    assert r["parallel"] == {"devices": 2, "sharding": "fsdp", "offload_optimizer": False}
    # capacity's per-device prediction beside the traced rank (tests/test_sharding_accuracy.py)
    assert r["measured_peak_bytes"] > 0
    assert abs(r["predicted_peak_bytes"] - r["measured_peak_bytes"]) <= 0.03 * r["measured_peak_bytes"]
    bad = subprocess.run(base + ["--devices", "2", "--sharding", "fsdp", "--device", "cpu"],
                         capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and "traced" in bad.stderr


@pytest.mark.parametrize("sharding", ["ddp", "fsdp"])
def test_comparable_breakdown_names_the_same_classes_on_both_sides(sharding):
    """`validate`'s per-device table compares classes both sides name (the tracker's
    activations/temporaries against the model's activations/logits): each side adds up to
    its peak, and on a tiny traced run every class agrees within 3% of the peak."""
    r = sharded.compare_sharded(LLAMA, scenario(sharding, 2), steps=2)
    pair = r["breakdown"]["comparable"]
    assert set(pair["measured"]) == set(pair["predicted"])
    assert sum(pair["measured"].values()) == r["measured_peak_bytes"]
    assert sum(pair["predicted"].values()) == r["predicted_peak_bytes"]
    for name, measured in pair["measured"].items():
        assert abs(pair["predicted"][name] - measured) <= 0.03 * r["measured_peak_bytes"], name
