"""Model families as descriptions: the round trip of every family's reader and writer, the
closed form of the backward pass over the layers against a layer-by-layer loop, the
context limit, and deep models answered at once."""

import contextlib
import inspect
import time
from dataclasses import replace

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

import capacity as cap
from capacity import activations as act
from capacity import cuda_runtime, memory, trainable
from capacity.accuracy import accuracy_models
from capacity.architecture import LayerKind, unmodelled_features
from capacity.families import FAMILIES, MODEL_TYPES
from capacity.inverse import largest_valid_width, scaled_shape
from capacity.memory import _state_bytes_per_value, kept_layers
from capacity.params import embedding_params, head_params, layer_params
from capacity.scenario import Peft
from capacity.shape import repeating_pattern

SHAPES = [cap.load_preset(n) for n in cap.preset_names()] + \
         [cap.from_hf_config(dict(cfg), name=t) for t, cfg in accuracy_models().items()]


def test_every_model_type_has_one_family_and_the_shared_code_never_names_one():
    assert set(MODEL_TYPES) == set(FAMILIES) == {s.model_type for s in SHAPES}
    from capacity import compute, params
    for module in (act, memory, params, compute):
        assert "model_type" not in inspect.getsource(module), module.__name__


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: s.name)
def test_write_then_read_gives_the_shape_back(shape):
    assert cap.from_hf_config(cap.shape_to_hf_config(shape), name=shape.name) == shape


def test_scaled_shapes_round_trip_and_keep_their_description():
    for shape in SHAPES:
        big = scaled_shape(shape, 7)
        assert big.arch == shape.arch and big.layers == shape.layers
        assert cap.from_hf_config(cap.shape_to_hf_config(big), name=big.name) == big


# ------------------------------------------------------------------ the closed form in L

def shared_held(s, sc, ckpt, i):
    """The shared tensors live in the backward through layer i, by definition: a rotary
    table while a layer at or below i uses it, a mask while a checkpointed layer at or below
    i reads it (a loop over the layers themselves)."""
    tables, masks = act.rotary_tables(s, sc), act.attention_masks(s, sc)
    kinds = [s.layer_kind(j) for j in range(i + 1)]
    held = sum(size for name, size in tables.items() if any(k.rope == name for k in kinds))
    return held + sum(size for name, size in masks.items()
                      if any(act.mask_kind(k) == name for k in kinds[:ckpt]))


def layer_by_layer(s, sc):
    """The backward pass through the layers visited one layer at a time, top to bottom, each
    sum taken over the layers themselves: the reference for the closed form."""
    L, ckpt = s.num_layers, s.num_layers - kept_layers(s, sc)
    layers = memory._LayerSums(s, sc)
    cost = [layers.costs(i) for i in range(L)]
    gp = _state_bytes_per_value(sc)
    state = {"weights": memory.weights_bytes(s, sc) if not sc.mixed_precision else
             memory._copies_total(s, sc, layers) - sum(c.copies for c in cost[:ckpt]),
             "master_weights": memory.weights_bytes(s, sc) if sc.mixed_precision else 0,
             "trainable_weights": memory.trainable_weights_bytes(s, sc),
             "optimizer_states": memory.optimizer_state_bytes(s, sc)}
    tied = gp * s.vocab_size * s.embed_dim if s.tie_embeddings and trainable.head_trained(sc) else 0
    ckpt_input = 0 if act.norm_keeps_layer_input(s, sc) else act.checkpoint_saved_bytes(s, sc)
    flow = act.stream_bytes(sc) * sc.tokens * s.hidden_size
    embed = act.embedding_saved_bytes(s, sc, output_grad=trainable.below_layers_grad(s, sc),
                                      trained=trainable.embedding_trained(sc)) + memory.leaf_embedding_output_bytes(s, sc)
    # The loop's token tensors, and the KV cache when the held output references it.
    extra = memory.input_bytes(s, sc) + (memory.bp_kv_cache_bytes(s, sc) if memory.output_holds_cache(s, sc) else 0)
    worst = None
    for i in range(L - 1, -1, -1):
        is_ckpt, c = i < ckpt, cost[i]
        below = embed + shared_held(s, sc, ckpt, i) + sum(cost[j].checkpointed if j < ckpt else cost[j].saved for j in range(i))
        kept_input = ckpt_input if is_ckpt else 0
        points = [(c.saved - c.out_norm - c.mlp_freed + kept_input + flow + max(c.mlp_backward, c.mlp_linear_backward)
                   + c.gradients_mlp_out, c.copies_mlp_out),
                  (c.saved_attention - c.out_norm - c.attention_freed + kept_input + c.gradients_mlp + c.gradients_attn_out
                   + flow + max(c.attention_backward, c.attention_linear_backward), c.copies_mlp + c.copies_attn_out),
                  (c.saved_attention - c.out_norm + kept_input + c.escaped + flow + c.recompute if is_ckpt else 0, 0),
                  (c.saved + kept_input + c.escaped + flow + c.recompute_end if is_ckpt else 0, 0),
                  (c.recompute_mlp + kept_input + c.escaped + flow if is_ckpt and c.recompute_mlp else 0, 0),
                  (c.saved + kept_input + flow + c.out_norm_backward if c.out_norm_backward else 0, 0),
                  (c.saved_attention + kept_input + c.gradients_mlp + flow + c.out_norm_backward
                   if c.out_norm_backward else 0, 0)]
        within, freed = max(points, key=lambda point: point[0] - point[1])
        copies = state["weights"] - memory.head_copy_bytes(s, sc) \
            - sum(cost[j].copies for j in range(max(i + 1, ckpt), L)) + (cost[i].copies if is_ckpt else 0) - freed
        total = {**state, "weights": copies,
                 "gradients": gp * trainable.head_gradient_params(s, sc) + tied
                 + sum(cost[j].gradients for j in range(i + 1, L)),
                 "activations": below + within + (L - 1 - i) * memory.cache_above_bytes(s, sc) + extra,
                 "logits_and_loss": act.logits_bytes(s, sc)}
        if worst is None or sum(total.values()) > sum(worst.values()):
            worst = total
    return worst


scenarios = st.builds(
    cap.Scenario, method=st.just("bp"), optimizer=st.sampled_from(["sgd", "momentum", "adamw"]),
    batch=st.integers(1, 8), seq=st.integers(1, 1024), dtype=st.sampled_from(["fp32", "bf16", "fp16"]),
    keep=st.floats(0, 1), attention=st.sampled_from(["eager", "sdpa"]), target=st.sampled_from(["cuda", "cpu"]),
    loop=st.just(cap.loop_preset("plain")))   # the reference below holds the logits, as the plain loop does

# What is trained (capacity/trainable.py): the runs of layers that need different gradients
# (layer 0's input, the frozen and the trained layers) are summed apart.
pefts = st.sampled_from([
    Peft(), Peft(method="lora"), Peft(method="lora", lora_targets=("all-linear",), lora_rank=64, lora_dropout=0.1),
    Peft(method="lora", weights_bits=4, double_quant=True), Peft(method="lora", weights_bits=8),
    Peft(method="freeze", trainable_layers=1), Peft(method="freeze", trainable_layers=3), Peft(method="prefix")])


def _runnable(s, sc):
    """A PEFT scenario the model can run (estimate refuses the others)."""
    try:
        trainable.check_peft(s, sc)
    except ValueError:
        return False
    return True


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(SHAPES), scenarios, st.integers(1, 40), st.booleans(), pefts)
def test_closed_form_equals_the_layer_by_layer_backward(shape, sc, layers, mixed, peft):
    s = replace(shape, num_layers=layers)
    if mixed and sc.dtype != "fp32":
        sc = replace(sc, mixed_precision=True)
    sc = replace(sc, peft=peft)
    assume(_runnable(s, sc))
    est = cap.estimate(s, sc)
    # The reference prices the attention the model runs (SDPA falls back to eager for Gemma 2).
    sc = replace(sc, attention=memory.runnable_attention(s, sc))
    # Every phase also holds cuBLAS's workspaces on CUDA (in the temporaries), which no
    # layer-by-layer sum of tensors has.
    workspaces = cuda_runtime.workspace_bytes(s, sc)
    reference = layer_by_layer(s, sc)
    reference["temporaries"] = reference.get("temporaries", 0) + workspaces
    assert est.phases["backward (layers)"] == sum(reference.values())
    if est.phase == "backward (layers)":
        assert {k: v for k, v in est.breakdown.items() if v} == {k: v for k, v in reference.items() if v}


@contextlib.contextmanager
def kinds_priced_apart():
    """Within it, a layer's costs depend on its kind (its sliding window w), as they will
    for sliding-window or mixture-of-experts layers."""
    original = memory._layer_costs

    def costs(s, sc, kind, g=trainable.FULL):
        c = original(s, sc, kind, g)
        w = kind.sliding_window
        return replace(c, saved=c.saved + 977 * w * w, saved_attention=c.saved_attention + 977 * w * w,
                       gradients=c.gradients + 4099 * (3 - w), mlp_backward=c.mlp_backward + 131 * w,
                       copies=c.copies + (61 * w if sc.mixed_precision else 0))
    memory._layer_costs = costs
    try:
        yield
    finally:
        memory._layer_costs = original


@settings(max_examples=150, deadline=None)
@given(st.lists(st.integers(0, 3), min_size=1, max_size=7), scenarios, st.integers(1, 50), st.booleans(), pefts)
def test_closed_form_over_a_pattern_of_kinds_that_cost_differently(windows, sc, layers, mixed, peft):
    """Each position in the repeating pattern of kinds is its own affine run: the closed
    form must find the layer-by-layer peak whatever the kinds cost."""
    s = replace(cap.load_preset("tiny-llama"), num_layers=layers,
                layers=tuple(LayerKind(sliding_window=w) for w in windows))
    if mixed and sc.dtype != "fp32":
        sc = replace(sc, mixed_precision=True)
    sc = replace(sc, peft=peft)
    assume(_runnable(s, sc))
    with kinds_priced_apart():
        est = cap.estimate(s, sc)
        reference = layer_by_layer(s, sc)
    reference["temporaries"] = reference.get("temporaries", 0) + cuda_runtime.workspace_bytes(s, sc)
    assert est.phases["backward (layers)"] == sum(reference.values())
    if est.phase == "backward (layers)":
        assert {k: v for k, v in est.breakdown.items() if v} == {k: v for k, v in reference.items() if v}


def test_repeating_pattern_is_the_shortest_period():
    for kinds in (["a"], ["a", "a"], ["a", "b"] * 5 + ["a"], list("sssssf" * 4 + "ss"), list("ffffsss"),
                  list("abcabcab"), list("abab" + "c")):
        p = repeating_pattern(kinds)
        assert [p[i % len(p)] for i in range(len(kinds))] == kinds
        assert not any(all(kinds[i] == kinds[i % q] for i in range(len(kinds))) for q in range(1, len(p)))


# ------------------------------------------------------------------ deep models

DEEP = {"model_type": "llama", "hidden_size": 64, "num_attention_heads": 4, "intermediate_size": 172,
        "num_hidden_layers": 2**24, "vocab_size": 512}


def test_a_deep_model_is_answered_at_once():
    s = cap.from_hf_config(DEEP)
    budget = cap.parse_bytes("80GB")
    start = time.perf_counter()
    for method in ("bp", "mezo", "inference"):
        for keep in (0.0, 0.5, 1.0):
            cap.estimate(s, cap.Scenario(method=method, keep=keep, mixed_precision=method == "bp"))
        sc = cap.Scenario(method=method)
        cap.largest_scaled_model(s, budget, sc)
        cap.longest_context(s, sc, budget)
        cap.largest_batch(s, sc, budget)
    assert time.perf_counter() - start < 1.0


@pytest.mark.parametrize("layers", [1, 2**20, 2**24])
def test_largest_scaled_model_builds_only_valid_shapes(layers):
    base = cap.from_hf_config({**DEEP, "num_hidden_layers": layers})
    top = largest_valid_width(base)
    assert top >= 1
    scaled_shape(base, top)                      # valid
    if top < cap.shape.MAX_DIM // base.head_dim and top < 4096:
        with pytest.raises(ValueError):
            scaled_shape(base, top + 1)
    for method in ("bp", "mezo"):
        big, params = cap.largest_scaled_model(base, 10**15, cap.Scenario(method=method))
        assert big is None or params == cap.parameter_count(big)


# ------------------------------------------------------------------ the context limit

@pytest.mark.parametrize("name,limit", [("gpt2", 1024), ("opt-1.3b", 2048)])
def test_a_context_beyond_a_learned_table_is_refused_by_name(name, limit):
    shape = cap.load_preset(name)
    cap.estimate(shape, cap.Scenario(seq=limit))
    with pytest.raises(ValueError, match=f"learned position table of {limit:,} positions"):
        cap.estimate(shape, cap.Scenario(seq=limit + 1))
    assert cap.longest_context(shape, cap.Scenario(method="mezo"), cap.parse_bytes("80GB")) == limit
    assert cap.context_note(shape, limit) is None


def test_a_rope_answer_beyond_max_position_embeddings_carries_a_note():
    shape = cap.load_preset("llama-2-7b")
    seq = cap.longest_context(shape, cap.Scenario(method="mezo"), cap.parse_bytes("80GB"))
    assert seq > shape.max_positions == 4096
    assert "max_position_embeddings" in cap.context_note(shape, seq)
    assert cap.context_note(shape, 4096) is None


# ------------------------------------------------------------------ descriptions of what is coming

def test_a_described_but_unpriced_mechanism_is_refused():
    """A shared expert (Qwen2-MoE's) is described but not priced: a shape using it is refused
    by name rather than priced without it."""
    base = cap.load_preset("mixtral-8x7b")
    moe = replace(base.moe, shared_expert_size=1024)
    assert unmodelled_features(base.arch, base.layers, moe)
    with pytest.raises(ValueError, match="does not price"):
        replace(base, moe=moe)


def test_layers_of_kinds_are_counted_in_closed_form():
    kinds = (LayerKind(sliding_window=512),) * 5 + (LayerKind(),)
    s = replace(cap.load_preset("tiny-llama"), num_layers=26, layers=kinds)
    assert s.layer_counts() == {LayerKind(sliding_window=512): 22, LayerKind(): 4}
    deep = replace(s, num_layers=2**24)
    assert sum(deep.layer_counts().values()) == 2**24
    # Below the window, SDPA runs a sliding layer as a full one (no mask: LayerKind's
    # docstring); from the window on, each sliding layer keeps a float mask of its own.
    full = replace(s, layers=(LayerKind(),))
    below, at = (cap.Scenario(seq=q, attention="sdpa") for q in (256, 512))
    assert cap.estimate(s, below).peak_bytes == cap.estimate(full, below).peak_bytes
    assert cap.estimate(s, at).peak_bytes > cap.estimate(full, at).peak_bytes
    assert cap.parameter_count(s) == embedding_params(s) + 26 * layer_params(s) + head_params(s)


# ------------------------------------------------------------------ inverse questions, new families

@pytest.mark.parametrize("family,budget", [(f, "24GB") for f in ("Qwen3", "Qwen2.5", "Llama-3", "SmolLM", "OLMo-2",
                                                                    "Granite-3", "Gemma-2")]
                         + [("Gemma-3", "80GB"), ("Phi-3/4", "80GB")])   # their smallest BP needs more than 24 GB
def test_inverse_questions_for_the_new_families(family, budget):
    """The largest preset and the largest scaled member of each family that fits, answered
    at once; the family's continuous scaling passes through its largest preset's sizes
    (heads keep a·d/h, Qwen3-0.6B's 2; kinds of layers keep their pattern)."""
    names = cap.families()[family]
    budget = cap.parse_bytes(budget)
    start = time.perf_counter()
    for method in ("bp", "mezo"):
        sc = cap.Scenario(method=method)
        name, est = cap.largest_preset(family, budget, sc)
        assert name in names and est.peak_bytes <= budget
        bigger = names[names.index(name) + 1:]
        assert all(cap.estimate(cap.load_preset(n), sc).peak_bytes > budget for n in bigger)
        big, params = cap.largest_scaled_model(cap.load_preset(names[-1]), budget, sc)
        assert big is not None and cap.estimate(big, sc).peak_bytes <= budget and params == cap.parameter_count(big)
        cap.longest_context(cap.load_preset(name), sc, budget)
    assert time.perf_counter() - start < 1.0
    for n in names:
        s = cap.load_preset(n)
        if s.hidden_size % s.head_dim:
            continue    # off the grid of widths (units of d): Gemma-3-1B's 1152 = 4.5 · 256
        same = scaled_shape(s, s.hidden_size // s.head_dim)
        assert (same.num_layers, same.hidden_size, same.num_heads, same.num_kv_heads, same.intermediate_size,
                same.layers) == (s.num_layers, s.hidden_size, s.num_heads, s.num_kv_heads, s.intermediate_size, s.layers)
