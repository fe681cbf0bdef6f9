"""The training loop (docs/loops.md): each setting's mechanism against traces of the real
code, the new trace paths against real CPU runs, and the command line.

A representative slice; bench/accuracy.py --loops runs the whole matrix over every model
type (capacity.accuracy.loop_matrix)."""

import json
import subprocess
import sys

import pytest

from capacity import Scenario, estimate, load_preset
from capacity.hf_config import from_hf_config
from capacity.memory import optimizer_step_temp_bytes
from capacity.params import no_decay_params
from capacity.scenario import LOOPS, loop_preset

TOLERANCE_PCT = 2.0


def sc(loop="plain", method="bp", optimizer="adamw", batch=2, seq=32, dtype="bf16", keep=1.0, **settings):
    return Scenario(method=method, optimizer=optimizer, batch=batch, seq=seq, dtype=dtype, keep=keep,
                    target="cpu", loop=loop_preset(loop, **settings))


# ---------------------------------------------------------------- the model alone (no torch)

PRESETS = ["llama-2-7b", "gpt2-medium", "opt-1.3b", "qwen2-0.5b", "pythia-410m", "phi-2", "gemma-2b"]


@pytest.mark.parametrize("preset", PRESETS)
def test_each_setting_moves_the_peak_the_way_its_mechanism_says(preset):
    s = load_preset(preset)
    temps = {impl: optimizer_step_temp_bytes(s, sc(optimizer_impl=impl)) for impl in ("forloop", "foreach", "fused")}
    assert temps["foreach"] > temps["forloop"] > temps["fused"] == 0
    for opt in ("sgd", "momentum"):   # in-place updates in every implementation
        assert len({estimate(s, sc(optimizer=opt, optimizer_impl=i)).peak_bytes
                    for i in ("forloop", "foreach", "fused")}) == 1
    base = dict(optimizer="sgd", seq=256)
    held, dropped = (estimate(s, sc(hold_outputs=h, **base)) for h in (True, False))
    assert dropped.peak_bytes <= held.peak_bytes
    peaks = [estimate(s, sc(grad_accum=k, **base)).peak_bytes for k in (1, 2, 4)]
    assert peaks[0] < peaks[1] <= peaks[2]
    kept = estimate(s, sc(zero_grad_to_none=False, **base))
    assert kept.peak_bytes > held.peak_bytes and kept.breakdown["gradients"] > 0
    mezo = [estimate(s, sc(method="mezo", mezo_impl=i, mezo_n=n)).peak_bytes
            for i, n in (("chunked", 1), ("chunked", 4), ("reference", 1), ("reference", 4))]
    assert mezo[0] == mezo[1] < mezo[2] == mezo[3]


def test_resolved_optimizer_implementation():
    """Trainer asks for fused AdamW (optim="adamw_torch_fused"); otherwise torch's default
    by device: foreach on CUDA, the per-tensor loop on the CPU; the plain loop is foreach."""
    def impl(loop, opt, target):
        return Scenario(optimizer=opt, target=target, loop=loop_preset(loop)).optimizer_impl
    assert impl("trainer", "adamw", "cuda") == impl("trainer", "adamw", "cpu") == "fused"
    assert impl("trainer", "sgd", "cuda") == impl("trainer", "adam", "cuda") == "foreach"
    assert impl("trainer", "momentum", "cpu") == "forloop"
    assert impl("plain", "adamw", "cpu") == "foreach"
    assert Scenario(loop=loop_preset("trainer", optimizer_impl="forloop")).optimizer_impl == "forloop"


def test_bad_loop_settings_name_the_problem():
    with pytest.raises(ValueError, match="grad_accum"):
        loop_preset("plain", grad_accum=0)
    with pytest.raises(ValueError, match="optimizer_impl"):
        loop_preset("trainer", optimizer_impl="fast")
    with pytest.raises(ValueError, match="loop"):
        loop_preset("keras")
    with pytest.raises(ValueError, match="mezo_n"):
        loop_preset("plain", mezo_n=True)


# ---------------------------------------------------------------- against the real code

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from capacity.accuracy import accuracy_models  # noqa: E402
from capacity.validation import compare, measure  # noqa: E402

CASES = [
    ("llama", sc(optimizer_impl="forloop")),
    ("opt", sc(optimizer_impl="forloop")),
    ("gpt2", sc(optimizer_impl="fused", hold_outputs=False)),
    ("llama", sc(optimizer="momentum", grad_accum=2)),
    ("opt", sc(optimizer="sgd", zero_grad_to_none=False)),
    ("llama", sc("trainer")),
    ("gpt2", sc("trainer", optimizer="sgd", grad_accum=2)),
    ("llama", sc(method="mezo", mezo_impl="reference")),
    ("opt", sc(method="mezo", mezo_n=2)),
]


@pytest.mark.parametrize("model_type,scenario", CASES,
                         ids=[f"{m}-{s.loop.name}-{s.method}-{s.optimizer}-{s.optimizer_impl}-K{s.loop.grad_accum}"
                              f"-hold{int(s.loop.hold_outputs)}-z{int(s.loop.zero_grad_to_none)}-{s.loop.mezo_impl}{s.loop.mezo_n}"
                              for m, s in CASES])
def test_loop_predictions_match_traces(model_type, scenario):
    r = compare(dict(accuracy_models()[model_type]), scenario, steps=2, device="trace")
    assert abs(r["error_pct"]) <= TOLERANCE_PCT, (
        f"predicted {r['predicted_peak_bytes']:,} vs traced {r['measured_peak_bytes']:,} ({r['error_pct']:+.3f}%, "
        f"{r['predicted_phase']})")


TINY_LLAMA = {"model_type": "llama", "hidden_size": 64, "intermediate_size": 160, "num_attention_heads": 4,
              "num_key_value_heads": 2, "num_hidden_layers": 2, "vocab_size": 512}


@pytest.mark.parametrize("scenario", [sc("trainer", grad_accum=2, seq=16, dtype="fp32"),
                                      sc(optimizer_impl="fused", seq=16, dtype="fp32"),
                                      sc(method="mezo", mezo_impl="reference", seq=96, dtype="fp32")],
                         ids=["trainer-K2", "fused-adamw", "mezo-reference"])
def test_new_trace_paths_match_real_cpu_runs(scenario):
    """The trace of each new path against real CPU tensors: MemTracker's peak and the CPU
    allocator's own count. They differ by at most a few bytes: fake runs keep 0-d loss
    tensors where real runs keep floats, and kernels allocate a few bytes of scratch. The
    reference MeZO's inference_mode forwards hide a composite op's buffers from MemTracker
    (so its CPU peak is the allocator's) and the trace, under no_grad, sees them. fp32:
    the CPU's bf16 matmuls allocate scratch inside the kernel (docs/loops.md), which the
    allocator counts and no trace can."""
    trace = measure(TINY_LLAMA, scenario, steps=2, device="trace")
    cpu = measure(TINY_LLAMA, scenario, steps=2, device="cpu")
    assert abs(cpu["allocator_peak_bytes"] - trace["measured_peak_bytes"]) <= 64
    assert abs(cpu["measured_peak_bytes"] - trace["measured_peak_bytes"]) <= 64
    if scenario.method == "mezo":
        assert cpu["tracker_peak_bytes"] < cpu["allocator_peak_bytes"]


def test_trainer_runs_its_own_default_optimizer():
    r = measure(TINY_LLAMA, sc("trainer", seq=16), steps=2, device="trace")
    assert r["trainer_optimizer"] == "AdamW" and r["trainer_optimizer_impl"] == "fused"
    r = measure(TINY_LLAMA, sc("trainer", optimizer="momentum", seq=16), steps=2, device="trace")
    assert r["trainer_optimizer"] == "SGD" and r["trainer_optimizer_impl"] == "forloop"


def test_fast_trace_follows_the_loop_settings():
    """Extrapolated from 3 and 4 layers, to the byte: the reference MeZO, and
    transformers.Trainer itself."""
    cfg = {**TINY_LLAMA, "num_hidden_layers": 6}
    for scenario in (sc(method="mezo", mezo_impl="reference", mezo_n=2, seq=16), sc("trainer", seq=16)):
        full = measure(cfg, scenario, steps=2, device="trace", trace_mode="full")
        fast = measure(cfg, scenario, steps=2, device="trace", trace_mode="extrapolated")
        assert fast["trace_mode"] == "extrapolated"
        assert fast["measured_peak_bytes"] == full["measured_peak_bytes"]


@pytest.mark.parametrize("model_type", list(accuracy_models()))
def test_no_decay_params_are_trainers(model_type):
    """Trainer.get_decay_parameter_names on the model itself (meta device) against the count."""
    from transformers import AutoModelForCausalLM, Trainer
    from capacity.validation.models import hf_config
    cfg = accuracy_models()[model_type]
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(hf_config(cfg))
    decay = set(Trainer.get_decay_parameter_names(None, model))
    exempt = sum(p.numel() for n, p in model.named_parameters() if n not in decay)
    assert exempt == no_decay_params(from_hf_config(cfg))


# ---------------------------------------------------------------- the command line

def run(*args):
    return subprocess.run([sys.executable, "-m", "capacity", *args], capture_output=True, text=True, timeout=300)


def test_estimate_json_has_every_resolved_loop_setting():
    r = run("estimate", "--preset", "llama-2-7b", "--method", "bp", "--batch", "8", "--seq", "256",
            "--loop", "trainer", "--grad-accum", "2", "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["loop"]["name"] == "trainer" and out["loop"]["optimizer_impl"] == "fused"
    assert out["loop"]["grad_accum"] == 2 and out["loop"]["hold_outputs"] is False and out["loop"]["kv_cache"] is True
    assert set(LOOPS["trainer"].__dataclass_fields__) <= set(out["loop"])
    r = run("estimate", "--preset", "llama-2-7b", "--method", "bp", "--loop", "trainer", "--optimizer-impl", "foreach",
            "--hold-outputs", "--json")
    assert json.loads(r.stdout)["loop"]["optimizer_impl"] == "foreach"
    assert json.loads(r.stdout)["loop"]["hold_outputs"] is True


def test_bad_loop_input_exits_2_with_one_line():
    for args in (["--grad-accum", "0"], ["--mezo-n", "-1"], ["--optimizer-impl", "fast"]):
        r = run("estimate", "--preset", "gpt2", "--method", "bp", *args)
        assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr


def test_validate_runs_the_trainer_and_refuses_what_it_cannot_express(tmp_path, capsys):
    from capacity.validation import cli as validate_cli
    cfg = tmp_path / "config.json"
    cfg.write_text(json.dumps(TINY_LLAMA))
    base = ["--config", str(cfg), "--method", "bp", "--batch", "1", "--seq", "16", "--steps", "2",
            "--device", "trace", "--json", "--progress", "none", "--loop", "trainer"]
    assert validate_cli.main(base) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["loop"]["name"] == "trainer" and out["trainer_optimizer_impl"] == "fused"
    assert abs(out["error_pct"]) <= TOLERANCE_PCT
    assert validate_cli.main(base + ["--hold-outputs"]) == 2
    assert "compute_loss keeps only the loss" in capsys.readouterr().err
