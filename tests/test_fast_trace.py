"""The fast trace (capacity/validation/fast_trace.py): a step's peak extrapolated from
traces of 3-4 layer models equals the whole model's trace (the target: within 0.1%; in
practice to the byte), over model types, methods, optimizers and checkpoint ratios; and
`--device trace` uses it by default, `--full-trace` not."""

import json

import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

from capacity import Scenario, loop_preset  # noqa: E402
from capacity.validation import cli, measure  # noqa: E402
from capacity.validation.fast_trace import plan, worthwhile  # noqa: E402

TOLERANCE = 0.001   # 0.1% of the whole trace's peak
PLAIN = loop_preset("plain")   # the fast trace extrapolates the plain loop

SMALL = {
    "llama": {"model_type": "llama", "hidden_size": 64, "intermediate_size": 160, "num_attention_heads": 4,
              "num_key_value_heads": 2, "vocab_size": 512},
    "gpt2": {"model_type": "gpt2", "n_embd": 64, "n_head": 4, "vocab_size": 512, "n_positions": 64},
    "opt": {"model_type": "opt", "hidden_size": 64, "ffn_dim": 256, "num_attention_heads": 4, "vocab_size": 512,
            "word_embed_proj_dim": 64, "max_position_embeddings": 64},
    "gpt_neox": {"model_type": "gpt_neox", "hidden_size": 64, "intermediate_size": 256, "num_attention_heads": 4,
                 "vocab_size": 512, "rotary_pct": 0.25},
}

# (scenario, layers, steps): 6 layers extrapolate the kept region from 3 and 4; L'/L 0.5 of
# 8 layers extrapolates both regions (4 checkpointed, 4 kept) from (3,3), (4,3), (3,4).
# MeZO runs 3 steps on Llama: step 3 holds step 2's projected gradient (step 2 holds step 1's,
# untracked), so the fast trace must trace step 3 too.
CASES = [
    (Scenario(method="bp", optimizer="adamw", keep=1.0, batch=2, seq=16, dtype="fp32", target="cpu", attention="eager", loop=PLAIN), 6, 2),
    (Scenario(method="bp", optimizer="sgd", keep=0.5, batch=2, seq=16, dtype="bf16", attention="sdpa",
              target="cpu", loop=PLAIN), 8, 2),
    (Scenario(method="mezo", batch=2, seq=16, dtype="bf16", target="cpu", attention="eager", loop=PLAIN), 6, 3),
]


def with_layers(cfg: dict, n: int) -> dict:
    return {**cfg, ("n_layer" if cfg["model_type"] == "gpt2" else "num_hidden_layers"): n}


def assert_same_peak(fast: dict, full: dict) -> None:
    assert fast["trace_mode"] == "extrapolated", fast.get("trace_fallback")
    assert full["trace_mode"] == "full"
    f, e = full["measured_peak_bytes"], fast["measured_peak_bytes"]
    assert abs(e - f) <= TOLERANCE * f, f"extrapolated {e:,} vs full trace {f:,} ({100 * (e - f) / f:+.4f}%)"
    for term, value in full["measured_breakdown"].items():
        assert abs(fast["measured_breakdown"][term] - value) <= TOLERANCE * f, term
    assert fast["params"] == full["params"]
    assert fast["checkpointed_layers"] == full["checkpointed_layers"]


@pytest.mark.parametrize("model_type", list(SMALL))
@pytest.mark.parametrize("sc,layers,steps", CASES,
                         ids=[f"{sc.method}-{sc.optimizer}-k{sc.keep}" for sc, _, _ in CASES])
def test_extrapolated_equals_full_trace(model_type, sc, layers, steps):
    cfg = with_layers(SMALL[model_type], layers)
    if sc.method == "mezo" and model_type != "llama":
        steps = 2
    full = measure(cfg, sc, steps=steps, device="trace", trace_mode="full")
    fast = measure(cfg, sc, steps=steps, device="trace", trace_mode="extrapolated")
    assert_same_peak(fast, full)
    assert len(fast["trace_samples"]) == len(plan(layers, len(full["checkpointed_layers"])))


def test_llama_2_7b_mezo_extrapolated_equals_full_trace():
    """A real 7B preset, whole (32 layers, ~12 s) against 3 + 4 layers."""
    sc = Scenario(method="mezo", batch=1, seq=64, dtype="bf16", target="cpu", attention="eager", loop=PLAIN)
    full = measure("llama-2-7b", sc, steps=2, device="trace", trace_mode="full")
    fast = measure("llama-2-7b", sc, steps=2, device="trace")   # the default: auto
    assert_same_peak(fast, full)
    assert fast["params"] == 6_738_415_616
    assert [s["layers"] for s in fast["trace_samples"]] == [3, 4]


def test_plan_and_when_auto_extrapolates():
    assert plan(32, 0) == [(0, 3), (0, 4)]
    assert plan(32, 16) == [(3, 3), (4, 3), (3, 4)]
    assert plan(80, 79) == [(3, 1), (4, 1)]
    assert plan(5, 2) == [(2, 3)]            # nothing to extrapolate: traced whole
    assert worthwhile(32, 0) and worthwhile(32, 16)
    assert not worthwhile(6, 0) and not worthwhile(4, 0) and not worthwhile(16, 8)


def test_auto_traces_a_small_model_whole():
    sc = Scenario(method="bp", optimizer="sgd", batch=1, seq=8, dtype="fp32", target="cpu", attention="eager", loop=PLAIN)
    r = measure(with_layers(SMALL["llama"], 4), sc, steps=2, device="trace")
    assert r["trace_mode"] == "full" and len(r["step_seconds"]) == 2


def test_cli_fast_by_default_and_full_trace_flag(tmp_path, capsys):
    path = tmp_path / "config.json"
    path.write_text(json.dumps(with_layers(SMALL["llama"], 8)))
    argv = ["--config", str(path), "--method", "bp", "--optimizer", "adamw", "--loop", "plain", "--batch", "1", "--seq", "16",
            "--steps", "2", "--device", "trace", "--json", "--progress", "none"]
    results = {}
    for flag in ([], ["--full-trace"]):
        assert cli.main(argv + flag) == 0
        results[bool(flag)] = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    fast, full = results[False], results[True]
    assert fast["trace_mode"] == "extrapolated" and [s["layers"] for s in fast["trace_samples"]] == [3, 4]
    assert full["trace_mode"] == "full"
    assert fast["measured_peak_bytes"] == full["measured_peak_bytes"]
    assert fast["predicted_peak_bytes"] == full["predicted_peak_bytes"]
    assert fast["losses"] == [None, None] and full["losses"] == [None, None]
