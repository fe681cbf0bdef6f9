"""Mixtures of experts (capacity/moe.py, capacity/validation/experts.py): the prediction
against real CPU runs of small models under forced and measured routing, fake-tensor traces
against the same CPU runs byte for byte, grouped_mm's independence of the routing, config
keys read as transformers reads them, the parameter and FLOP counts of the active experts.
The whole matrix is in bench/accuracy.py (capacity.accuracy.moe_matrix)."""

from dataclasses import replace

import pytest

import capacity as cap
from capacity import moe
from capacity.compute import matmul_params
from capacity.params import active_parameter_count, experts_params, largest_tensor_params

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from capacity.validation import compare, measure  # noqa: E402

TOLERANCE_PCT = 3.0

# Small enough for a CPU step in about a second; dims multiples of 8 (grouped_mm's 16-byte rule).
MIXTRAL = {"model_type": "mixtral", "hidden_size": 64, "intermediate_size": 128, "num_attention_heads": 4,
           "num_key_value_heads": 2, "num_hidden_layers": 2, "vocab_size": 256, "num_local_experts": 8,
           "num_experts_per_tok": 2}


def scenario(**kw):
    """The plain loop (the trainer's, the default, in test_the_trainer_loop_runs_a_mixture_of_experts)."""
    return cap.Scenario(**{"method": "bp", "optimizer": "sgd", "batch": 2, "seq": 64, "dtype": "fp32",
                           "attention": "sdpa", "target": "cpu", "loop": cap.loop_preset("plain"), **kw})


# ------------------------------------------------------------------ real runs and traces

@pytest.mark.parametrize("kw,routing", [
    (dict(experts="eager"), "worst"),
    (dict(experts="eager", dtype="bf16", mixed_precision=True, keep=0.5), "balanced"),
    (dict(experts="eager", method="mezo", dtype="bf16"), "worst"),
    (dict(experts="grouped_mm", dtype="bf16", mixed_precision=True), "balanced"),
])
def test_trace_equals_the_cpu_run_under_forced_routing(kw, routing):
    """The fake-tensor trace (grouped_mm's meta patch, the eager loop's mirror) holds the
    same bytes as real CPU tensors under the same forced routing; MeZO keeps its 0-d loss
    4 bytes longer under fake tensors (as on dense models)."""
    sc = scenario(**kw)
    cpu = compare(dict(MIXTRAL), sc, device="cpu", routing=routing)
    trace = compare(dict(MIXTRAL), sc, device="trace", routing=routing)
    assert cpu["moe"]["routing"] == trace["moe"]["routing"] == f"forced {routing}"
    assert 0 <= trace["measured_peak_bytes"] - cpu["measured_peak_bytes"] <= (4 if sc.method == "mezo" else 0)
    assert abs(cpu["error_pct"]) <= TOLERANCE_PCT


def test_grouped_mm_memory_does_not_depend_on_the_routing():
    """Measured on real CPU tensors: the same peak under the routers' own choices, balanced
    and worst routing; and predicted so."""
    sc = scenario(dtype="bf16")
    peaks = {r: measure(dict(MIXTRAL), sc, device="cpu", routing=r)["measured_peak_bytes"]
             for r in ("measured", "balanced", "worst")}
    assert len(set(peaks.values())) == 1, peaks
    shape = cap.from_hf_config(MIXTRAL)
    assert cap.estimate(shape, replace(sc, routing="worst")) == cap.estimate(shape, sc)


def test_eager_loop_with_the_routers_own_choices_is_recorded_and_within_tolerance():
    """A real run with the routers' own (uneven) choices: the counts are recorded, they add
    up to top_k·tokens per layer, and the balanced prediction is within tolerance."""
    result = compare(dict(MIXTRAL), scenario(experts="eager"), device="cpu")
    m = result["moe"]
    assert m["routing"].startswith("measured") and m["experts_implementation"] == "eager"
    assert m["predicted_routing"] == "balanced"
    assert all(sum(c["counts"]) == 2 * 128 for c in m["tokens_per_expert"])
    assert m["imbalance"] > 1.0
    assert abs(result["error_pct"]) <= TOLERANCE_PCT


def test_eager_routing_changes_the_peak_and_worst_is_not_an_upper_bound_for_bp():
    """The eager loop's backward peaks at its second expert: with every token on two experts
    most of the saved set is gone by then, so BP peaks lower under the worst routing, while
    the forward without autograd (MeZO) peaks higher. Measured, and predicted the same way."""
    shape = cap.from_hf_config(MIXTRAL)
    for method, worst_is_higher in (("bp", False), ("mezo", True)):
        sc = scenario(experts="eager", method=method, batch=4)
        measured = {r: measure(dict(MIXTRAL), sc, device="trace", routing=r)["measured_peak_bytes"]
                    for r in ("balanced", "worst")}
        predicted = {r: cap.estimate(shape, replace(sc, routing=r)).peak_bytes for r in ("balanced", "worst")}
        assert (measured["worst"] > measured["balanced"]) == worst_is_higher, measured
        assert (predicted["worst"] > predicted["balanced"]) == worst_is_higher, predicted


def test_the_trainer_loop_runs_a_mixture_of_experts():
    """transformers.Trainer (the default loop) on a mixture of experts, under forced routing:
    the trace within tolerance of the prediction, the routing stated."""
    sc = replace(scenario(experts="eager", dtype="bf16", optimizer="adamw"), loop=cap.loop_preset("trainer"))
    result = compare(dict(MIXTRAL), sc, device="trace", routing="worst")
    assert result["moe"]["routing"] == "forced worst"
    assert abs(result["error_pct"]) <= TOLERANCE_PCT


def test_a_trace_refuses_the_routers_own_choices_through_the_eager_loop():
    with pytest.raises(ValueError, match="routing: a trace cannot follow"):
        measure(dict(MIXTRAL), scenario(experts="eager"), device="trace", routing="measured")


def test_the_cli_states_the_experts_and_routing(capsys):
    from capacity.cli import main
    assert main(["estimate", "--preset", "mixtral-8x7b", "--method", "mezo"]) == 0
    out = capsys.readouterr().out
    assert "memory does not depend on the routing" in out and "Active parameters per token: 12,879,925,248" in out
    assert main(["estimate", "--preset", "mixtral-8x7b", "--method", "bp", "--experts", "eager",
                 "--routing", "worst"]) == 0
    assert "eager loop, worst-case routing" in capsys.readouterr().out


# ------------------------------------------------------------------ config keys

@pytest.mark.parametrize("model_type", ["mixtral", "qwen3_moe", "olmoe"])
@pytest.mark.parametrize("given", [{"num_experts": 4}, {"num_local_experts": 6},
                                   {"num_experts": 4, "num_local_experts": 6}])
def test_the_number_of_experts_is_read_as_transformers_reads_it(model_type, given):
    """Two keys name it (the configuration class's attribute_map); when both are given,
    transformers lets one of them win."""
    conf = transformers.AutoConfig.for_model(model_type, **given)
    shape = cap.from_hf_config({"model_type": model_type, "num_experts_per_tok": 2, **given})
    assert shape.moe.experts == conf.num_local_experts == conf.num_experts


def test_a_shared_expert_is_described_but_refused():
    shape = cap.from_hf_config(MIXTRAL)
    with pytest.raises(ValueError, match="does not price a shared expert"):
        replace(shape, moe=replace(shape.moe, shared_expert_size=64))


def test_top_k_beyond_the_experts_is_refused_by_key():
    with pytest.raises(ValueError, match="num_experts_per_tok"):
        cap.from_hf_config({**MIXTRAL, "num_experts_per_tok": 9})


# ------------------------------------------------------------------ counts

def test_active_parameters_and_flops_count_the_routed_experts_only():
    shape = cap.load_preset("mixtral-8x7b")
    total, active = cap.parameter_count(shape), active_parameter_count(shape)
    assert round(total / 1e8) == 467 and round(active / 1e8) == 129     # "46.7B, 12.9B active"
    # Every expert a token could use, less the ones it is not routed to.
    unused = shape.num_layers * experts_params(shape, shape.layers[0]) * (8 - 2) // 8
    assert active == total - unused
    # A matmul per token for every active weight but the embedding lookup and the norms.
    norms = (2 * shape.num_layers + 1) * shape.hidden_size
    assert matmul_params(shape) == active - shape.vocab_size * shape.hidden_size - norms
    # The largest tensor is the stacked gate_up_proj (E, 2I, h), not the embedding.
    assert largest_tensor_params(shape) == 8 * 2 * 14336 * 4096


def test_a_top_k_of_every_expert_is_a_dense_model_in_flops():
    shape = cap.from_hf_config({**MIXTRAL, "num_experts_per_tok": 8})
    assert active_parameter_count(shape) == cap.parameter_count(shape)


def test_pattern_counts_add_up_to_the_routed_pairs():
    for routing in ("balanced", "worst"):
        for tokens, k, e in ((512, 2, 8), (37, 3, 7), (5, 1, 16)):
            counts = moe.pattern_counts(routing, tokens, k, e)
            assert len(counts) == e and sum(counts) == k * tokens
            assert max(counts) - min(counts) <= (1 if routing == "balanced" else tokens)


QWEN3_MOE = {"model_type": "qwen3_moe", "hidden_size": 64, "head_dim": 32, "num_attention_heads": 4,
             "num_key_value_heads": 2, "moe_intermediate_size": 32, "intermediate_size": 96, "num_experts": 8,
             "num_experts_per_tok": 2, "num_hidden_layers": 5, "vocab_size": 256}


@pytest.mark.parametrize("extra", [{}, {"mlp_only_layers": [0, 3]}, {"decoder_sparse_step": 2},
                                   {"decoder_sparse_step": 3, "mlp_only_layers": [2]}, {"decoder_sparse_step": 7},
                                   {"num_experts": 0}, {"mlp_only_layers": [9]}])
def test_qwen3_moe_dense_layers_are_where_transformers_puts_them(extra):
    """Layer i is sparse unless it is in mlp_only_layers or (i + 1) is not a multiple of
    decoder_sparse_step (Qwen3MoeDecoderLayer.__init__): the kinds and the parameter count
    against the model built on the meta device."""
    cfg = {**QWEN3_MOE, **extra}
    conf = transformers.AutoConfig.for_model("qwen3_moe", **{k: v for k, v in cfg.items() if k != "model_type"})
    with torch.device("meta"):
        model = transformers.AutoModelForCausalLM.from_config(conf)
    shape = cap.from_hf_config(cfg)
    assert [shape.layer_kind(i).moe for i in range(5)] == [hasattr(layer.mlp, "experts") for layer in model.model.layers]
    assert cap.parameter_count(shape) == sum(p.numel() for p in model.parameters())
    assert cap.from_hf_config(cap.shape_to_hf_config(shape)) == shape


def test_olmoe_refuses_what_it_does_not_model_by_key():
    base = {"model_type": "olmoe", "hidden_size": 64, "num_attention_heads": 4}
    with pytest.raises(ValueError, match="clip_qkv"):
        cap.from_hf_config({**base, "clip_qkv": 8.0})
    with pytest.raises(ValueError, match="head_dim"):
        cap.from_hf_config({**base, "head_dim": 32})


# ------------------------------------------------------------------ the block alone

@pytest.mark.parametrize("family,shape,precision,experts,routing", [
    ("mixtral", (64, 32, 6, 2, 1, 37), ("bf16", False), "grouped_mm", "measured"),
    ("qwen3_moe", (64, 96, 4, 1, 3, 40), ("bf16", True), "grouped_mm", "balanced"),
    ("mixtral", (64, 32, 6, 2, 1, 37), ("bf16", False), "eager", "balanced"),
    ("olmoe", (64, 32, 16, 4, 2, 48), ("bf16", True), "eager", "worst"),
    ("qwen3_moe", (64, 32, 16, 4, 2, 48), ("fp32", False), "eager", "measured"),
])
def test_the_block_alone_matches_its_formulas_byte_for_byte(family, shape, precision, experts, routing):
    """A slice of bench/moe_block.py (216 cases there): saved set, forward and backward peaks
    and the peak without autograd of one block on real CPU tensors, against capacity/moe.py."""
    from bench.moe_block import measure as measure_block, predicted
    measured = measure_block(family, shape, *precision, experts, routing)
    assert predicted(family, shape, *precision, experts, measured["counts"]) == \
        {q: measured[q] for q in ("saved", "forward", "backward", "nograd")}
