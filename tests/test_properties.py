"""Properties that hold for every valid input (hypothesis)."""

from dataclasses import replace

from hypothesis import given, settings
from hypothesis import strategies as st

from capacity import Scenario, estimate, load_preset, longest_runnable_context, preset_names
from capacity.activations import checkpoint_saved_bytes
from capacity.cuda_runtime import workspace_bytes

shapes = st.sampled_from([n for n in preset_names() if "70b" not in n and "66b" not in n])
scenarios = st.builds(
    Scenario,
    method=st.sampled_from(["bp", "mezo", "inference"]),
    optimizer=st.sampled_from(["sgd", "momentum", "adam", "adamw"]),
    batch=st.integers(1, 16), seq=st.integers(1, 4096),
    dtype=st.sampled_from(["fp32", "bf16", "fp16"]),
    keep=st.floats(0, 1), attention=st.sampled_from(["eager", "sdpa"]),
    target=st.sampled_from(["cuda", "cpu"]),
)


def runnable(shape, sc, room=0):
    """sc with its context cut to what the model can run (a learned position table's
    length), leaving `room` more tokens."""
    limit = longest_runnable_context(shape)
    return sc if limit is None else replace(sc, seq=min(sc.seq, limit - room))


@settings(max_examples=300, deadline=None)
@given(shapes, scenarios)
def test_positive_and_breakdown_sums_to_peak(name, sc):
    shape = load_preset(name)
    est = estimate(shape, runnable(shape, sc))
    assert est.peak_bytes > 0
    assert sum(est.breakdown.values()) == est.peak_bytes
    assert est.peak_bytes == max(est.phases.values())


@settings(max_examples=300, deadline=None)
@given(shapes, scenarios)
def test_grows_with_batch_and_context(name, sc):
    shape = load_preset(name)
    sc = runnable(shape, sc, room=1)
    peak = estimate(shape, sc).peak_bytes
    assert estimate(shape, replace(sc, batch=sc.batch + 1)).peak_bytes >= peak
    assert estimate(shape, replace(sc, seq=sc.seq + 1)).peak_bytes >= peak


@settings(max_examples=300, deadline=None)
@given(shapes, scenarios)
def test_grows_with_keep_up_to_one_layer_input(name, sc):
    """Keeping more layers' activations (larger L'/L) never lowers the peak by more than one
    checkpointed layer's kept input. It can lower it by less: a checkpointed top layer keeps
    its input while its gradients do not exist yet, so when a layer's input outweighs its
    gradients (small model, long context) checkpointing it costs a little more. The real
    trace shows this (test_checkpointing_can_cost_one_layer_input)."""
    shape = load_preset(name)
    sc = runnable(shape, sc)
    more = replace(sc, keep=min(1.0, sc.keep + 0.25))
    # Without recomputation autograd's thread runs no addmm: its cuBLASLt workspace goes too.
    lt = workspace_bytes(shape, sc) - workspace_bytes(shape, more)
    peak = estimate(shape, sc).peak_bytes
    more_kept = estimate(shape, more).peak_bytes
    assert more_kept >= peak - checkpoint_saved_bytes(shape, sc) - lt


@settings(max_examples=300, deadline=None)
@given(shapes, scenarios)
def test_mezo_never_needs_more_than_bp(name, sc):
    shape = load_preset(name)
    sc = runnable(shape, sc)
    mezo = estimate(shape, replace(sc, method="mezo")).peak_bytes
    for opt in ("sgd", "adamw"):
        bp = estimate(shape, replace(sc, method="bp", optimizer=opt, keep=0.0)).peak_bytes
        assert mezo <= bp
