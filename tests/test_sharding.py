"""capacity's sharding model (capacity/sharding.py): its parts checked against the parameter
shapes and against each other, and the inverse questions across devices. Standard library
only; the comparison with torch's own DDP, ZeroRedundancyOptimizer and FSDP2 is in
tests/test_sharding_accuracy.py."""

import json
import math
import subprocess
import sys
from dataclasses import replace

import pytest

import capacity as cap
from capacity.inverse import DEVICE_COUNTS, devices_needed_table, fewest_devices, on_devices
from capacity.params import parameter_count, parameter_tensor_count, parameter_tensors
from capacity.scenario import Loop, Parallel, Scenario
from capacity.sharding import (fsdp_layout, sharded_elements, zero1_partition, STRATEGIES)

PLAIN = Loop(name="plain", optimizer_impl="foreach")


def sc(sharding="fsdp", devices=8, method="bp", **kw):
    kw.setdefault("mixed_precision", method == "bp")
    return Scenario(method=method, dtype="bf16", seq=512, loop=PLAIN,
                    parallel=Parallel(devices=devices, sharding=sharding), **kw)


def all_tensors(s):
    """Every parameter tensor (rows, row) of the model, layer by layer."""
    t = parameter_tensors(s)
    out = [x for g, v in t.items() if g != "layer" for x in v]
    for i in range(s.num_layers):
        out += parameter_tensors(s, s.layer_kind(i))["layer"]
    return out


@pytest.mark.parametrize("name", cap.preset_names())
def test_parameter_tensors_add_up_to_the_parameter_count(name):
    s = cap.load_preset(name)
    tensors = all_tensors(s)
    assert sum(r * e for r, e in tensors) == parameter_count(s)
    assert len(tensors) == parameter_tensor_count(s)


@pytest.mark.parametrize("name", ["llama-2-7b", "opt-1.3b", "gpt2", "gemma-2b", "phi-2", "pythia-160m"])
@pytest.mark.parametrize("n", [1, 2, 3, 8, 64])
def test_units_hold_every_parameter_once_with_padded_shards(name, n):
    s = cap.load_preset(name)
    lay = fsdp_layout(s, n)
    units = [lay.root, lay.embedding, lay.tail] + [lay.layer(i) for i in range(s.num_layers)]
    assert sum(u.params for u in units) == parameter_count(s)
    # rank 0 holds ceil(rows / N) rows of every tensor, and the gathered unit N times that
    assert sharded_elements(lay, s) == sum(math.ceil(r / n) * e for r, e in all_tensors(s))
    for u in units:
        assert u.gathered == n * u.shard >= u.params
    if n == 1:
        assert all(u.gathered == u.params for u in units)
    # a tied embedding sits in the tail (accelerate groups [final norm, embedding, head])
    assert (lay.embedding.params == 0) == s.tie_embeddings
    # accelerate finds the final norm only as a direct child of the base model: not OPT's
    assert (lay.tail_norm.params > 0) == (s.arch.final_norm and s.model_type != "opt")


def greedy(sizes, n, groups=None):
    """ZeroRedundancyOptimizer._partition_parameters, one tensor at a time, group after
    group (the loads carry over)."""
    load, count = [0] * n, [0] * n
    for group in (groups or [sizes]):
        for t in sorted(group, reverse=True):
            r = load.index(min(load))
            load[r] += t
            count[r] += 1
    return list(zip(load, count))


@pytest.mark.parametrize("name", ["tiny-llama", "gpt2", "opt-125m", "pythia-160m", "qwen2-0.5b"])
@pytest.mark.parametrize("n", [2, 3, 4, 7, 8, 64])
def test_zero1_partition_in_bulk_equals_one_tensor_at_a_time(name, n):
    s = cap.load_preset(name)
    assert zero1_partition(s, n) == greedy([r * e for r, e in all_tensors(s)], n)
    # deep: whole rounds and water-filling (many tensors of one size, loads far apart)
    deep = replace(s, num_layers=150)
    assert zero1_partition(deep, n) == greedy([r * e for r, e in all_tensors(deep)], n)
    # Trainer's decay and no-decay groups (1-D tensors: norms and biases)
    for shape in (s, deep):
        tensors = all_tensors(shape)
        groups = [[r * e for r, e in tensors if e > 1], [r * e for r, e in tensors if e == 1]]
        assert zero1_partition(shape, n, split_groups=True) == greedy(None, n, groups)


def test_every_strategy_has_the_step_peak_and_its_terms():
    s = cap.load_preset("llama-2-7b")
    for sharding in STRATEGIES:
        for method in ("bp", "mezo"):
            est = cap.estimate(s, sc(sharding, 8, method))
            assert est.peak_bytes == sum(est.breakdown.values()) == max(est.phases.values())
            assert est.phases[est.phase] == est.peak_bytes


def test_ddp_is_one_device_plus_its_gradient_buckets():
    s = cap.load_preset("opt-1.3b")
    for mixed in (False, True):
        one = cap.estimate(s, replace(sc("ddp", 4, mixed_precision=mixed), parallel=Parallel()))
        ddp = cap.estimate(s, sc("ddp", 4, mixed_precision=mixed))
        buckets = (4 if mixed else 2) * parameter_count(s)
        assert ddp.breakdown["gradient_buckets"] == buckets
        assert ddp.peak_bytes == one.peak_bytes + buckets
    # MeZO holds no gradients: DDP adds nothing
    assert cap.estimate(s, sc("ddp", 4, "mezo")).peak_bytes == cap.estimate(s, sc("none", 1, "mezo")).peak_bytes


def test_zero1_keeps_a_share_of_the_optimizer_states():
    s = cap.load_preset("llama-2-7b")
    ddp, zero1 = cap.estimate(s, sc("ddp", 8)), cap.estimate(s, sc("zero1", 8))
    elements = max(e for e, _ in zero1_partition(s, 8))
    assert elements >= parameter_count(s) / 8
    assert zero1.breakdown["optimizer_states"] < ddp.breakdown["optimizer_states"] / 7
    assert zero1.peak_bytes < ddp.peak_bytes


@pytest.mark.parametrize("name", ["llama-2-7b", "opt-6.7b", "gpt2-xl", "llama-3-8b"])
def test_more_sharding_less_memory_and_fsdp_falls_with_devices(name):
    s = cap.load_preset(name)
    for method in ("bp", "mezo"):
        peaks = {k: cap.estimate(s, sc(k, 8, method)).peak_bytes for k in ("ddp", "zero1", "zero2", "fsdp")}
        assert peaks["fsdp"] <= peaks["zero2"] <= peaks["zero1"] <= peaks["ddp"]
    fsdp = [cap.estimate(s, sc("fsdp", n)).peak_bytes for n in (1, 2, 4, 8, 16, 32, 64)]
    assert fsdp == sorted(fsdp, reverse=True)
    # MeZO on FSDP needs no gradients and no optimizer states
    mezo = cap.estimate(s, sc("fsdp", 8, "mezo"))
    assert mezo.breakdown["gradients"] == mezo.breakdown["optimizer_states"] == 0
    assert mezo.peak_bytes < fsdp[3]


def test_fsdp_state_is_a_shard_of_the_model():
    s = cap.load_preset("llama-2-70b")
    est = cap.estimate(s, sc("fsdp", 64))
    S = sharded_elements(fsdp_layout(s, 64), s)
    # fp32 sharded parameters (mixed precision), Adam's two states and a step per tensor on cuda
    assert est.breakdown["weights"] == 4 * S
    assert est.breakdown["optimizer_states"] == 8 * S


def test_offload_moves_the_sharded_state_to_the_host():
    s = cap.load_preset("llama-2-7b")
    on = cap.estimate(s, replace(sc("fsdp", 8), parallel=Parallel(8, "fsdp", True)))
    off = cap.estimate(s, sc("fsdp", 8))
    assert on.host_bytes > 0 and off.host_bytes == 0
    assert not any(on.breakdown[t] for t in ("weights", "gradients", "optimizer_states"))
    assert on.peak_bytes < off.peak_bytes
    S = sharded_elements(fsdp_layout(s, 8), s)
    # weights, reduced gradients and two Adam states in fp32, and the foreach step's temporary
    assert on.host_bytes == 4 * S * 5
    with pytest.raises(ValueError, match="offload"):
        cap.estimate(s, replace(sc("ddp", 8), parallel=Parallel(8, "ddp", True)))


def test_fewest_devices_is_the_first_count_that_fits():
    s = cap.load_preset("opt-13b")
    budget = 80 * 2**30
    for method in ("bp", "mezo"):
        n, est = fewest_devices(s, sc("fsdp", 1, method), budget)
        assert n is not None and est.peak_bytes <= budget
        for smaller in (c for c in DEVICE_COUNTS if c < n):
            assert cap.estimate(s, on_devices(sc("fsdp", 1, method), smaller)).peak_bytes > budget
    assert fewest_devices(s, sc("fsdp", 1), 10**6) == (None, None)
    # DDP replicates: more devices never help
    assert fewest_devices(s, sc("ddp", 1), budget) == (None, None)


def test_devices_needed_table():
    models = {n: cap.load_preset(n) for n in ("opt-1.3b", "opt-13b", "opt-66b")}
    methods = {"BP": sc("fsdp", 1), "MeZO": sc("fsdp", 1, "mezo")}
    rows = devices_needed_table(models, methods, 40 * 10**9)
    assert [r["model"] for r in rows] == list(models)
    for r in rows:
        for label, cell in r["methods"].items():
            if cell is not None:
                assert cell["devices"] in DEVICE_COUNTS and cell["peak_bytes"] <= 40 * 10**9
        bp, mezo = r["methods"]["BP"], r["methods"]["MeZO"]
        assert mezo is not None and (bp is None or mezo["devices"] <= bp["devices"])
    with pytest.raises(ValueError, match="devices"):
        devices_needed_table(models, methods, 10**9, counts=(0, 2))


def run(*args):
    return subprocess.run([sys.executable, "-m", "capacity", *args], capture_output=True, text=True, timeout=120)


def test_command_line_devices():
    out = run("estimate", "--preset", "llama-2-7b", "--method", "bp", "--mixed-precision",
              "--devices", "8", "--sharding", "fsdp", "--offload-optimizer", "--json")
    assert out.returncode == 0, out.stderr
    r = json.loads(out.stdout)
    assert r["scenario"]["parallel"] == {"devices": 8, "sharding": "fsdp", "offload_optimizer": True}
    assert r["host_bytes"] > r["peak_bytes"] > 0
    out = run("fit", "--preset", "opt-13b", "--budget", "80GiB", "--sharding", "fsdp", "--json")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["bp"]["devices_needed"]["devices"] in DEVICE_COUNTS
    for bad in (["--devices", "8"], ["--sharding", "ddp", "--offload-optimizer"], ["--devices", "0", "--sharding", "fsdp"],
                ["--sharding", "zero4"]):
        out = run("estimate", "--preset", "gpt2", "--method", "bp", *bad)
        assert out.returncode == 2 and len(out.stderr.strip().splitlines()) == 1, (bad, out.stderr)
