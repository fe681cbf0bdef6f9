"""The validation engine on the CPU: the MeZO optimizer, the step semantics, checkpointing
and the measurement (cpu and trace). Tiny configs, except one trace of Llama-2-7B."""

import math

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

import torch.nn.functional as F  # noqa: E402
from transformers import AutoModelForCausalLM  # noqa: E402

from capacity.presets import preset_names, load_preset, preset_config  # noqa: E402
from capacity.hf_config import from_hf_config  # noqa: E402
from capacity.scenario import Scenario, loop_preset  # noqa: E402
from capacity.validation import measure  # noqa: E402
from capacity.validation.data import Batches, byte_tokens, read_text  # noqa: E402
from capacity.validation.mezo import MeZO  # noqa: E402
from capacity.validation.models import (  # noqa: E402
    build_model, decoder_layers, enable_checkpointing, hf_config, num_checkpointed_layers,
    shape_to_hf_config)
from capacity.validation.steps import Stepper  # noqa: E402

# GPT-2 keeps every op in the model's dtype (Llama's RMSNorm and rotary upcast to fp32),
# which the fp64 gradient check needs. bos/eos inside the tiny vocabulary.
GPT2_TINY = {"model_type": "gpt2", "n_embd": 32, "n_layer": 2, "n_head": 4, "vocab_size": 64,
             "n_positions": 32, "bos_token_id": 0, "eos_token_id": 0}
LLAMA_TINY = {"model_type": "llama", "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 4,
              "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 64}


def tiny_model(cfg, dtype=torch.float32, seed=0):
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(hf_config(cfg), dtype=dtype, attn_implementation="eager")


def test_shape_to_hf_config_round_trips_every_preset():
    for name in preset_names():
        shape = load_preset(name)
        assert from_hf_config(shape_to_hf_config(shape), name=name) == shape, name


# ---- MeZO ---------------------------------------------------------------------------------

def test_perturb_and_restore_gives_the_weights_back():
    """θ + εz − 2εz + εz in fp32 with z regenerated from the seed. Float addition is not
    associative, so 'exactly' means to rounding: every element within 4 units of roundoff of
    |θ| + 2ε|z| (three rounded additions). A different seed for the restore breaks the bound
    by orders of magnitude, so the check is not vacuous."""
    model = tiny_model(LLAMA_TINY).eval()
    opt = MeZO(model.parameters(), eps=1e-3, chunk_elements=300)   # several chunks per weight
    before = [p.detach().clone() for p in opt.params]
    z = opt.direction(seed=7)
    unit = torch.finfo(torch.float32).eps

    opt.perturb(7, opt.eps)
    assert max((p - b).abs().max().item() for p, b in zip(opt.params, before)) > 1e-4   # it moved
    opt.perturb(7, -2 * opt.eps)
    opt.perturb(7, opt.eps)
    for p, b, zi in zip(opt.params, before, z):
        bound = 4 * unit * (b.abs() + 2 * opt.eps * zi.abs())
        assert bool(((p - b).abs() <= bound).all())

    opt.perturb(7, opt.eps)
    opt.perturb(8, -opt.eps)   # restore with the wrong seed
    worst = max(((p - b).abs() / (4 * unit * (b.abs() + 2 * opt.eps * zi.abs()))).max().item()
                for p, b, zi in zip(opt.params, before, z))
    assert worst > 100


def test_direction_is_regenerated_bit_for_bit_and_depends_on_the_seed():
    model = tiny_model(LLAMA_TINY)
    opt = MeZO(model.parameters(), chunk_elements=300)
    a, b, c = opt.direction(3), opt.direction(3), opt.direction(4)
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert not any(torch.equal(x, y) for x, y in zip(a, c))
    total = sum(x.numel() for x in a)   # z ~ N(0, I): mean ~ 0, variance ~ 1
    mean = sum(x.sum().item() for x in a) / total
    var = sum((x * x).sum().item() for x in a) / total
    assert abs(mean) < 5 / math.sqrt(total) and abs(var - 1) < 0.05


def test_projected_gradient_matches_autograd_directional_derivative():
    """(L(θ+εz) − L(θ−εz))/(2ε) against ∇L·z from autograd, fp64, ε = 1e-6: the central
    difference is off by O(ε²) and rounding by ~1e-16/ε; we allow 1e-6 relative."""
    model = tiny_model(GPT2_TINY, dtype=torch.float64).eval()
    ids = torch.randint(0, 64, (2, 16), generator=torch.Generator().manual_seed(1))

    def loss():   # the loss in fp64 (HF's loss function upcasts logits to fp32 only)
        logits = model(input_ids=ids, use_cache=False).logits
        return F.cross_entropy(logits[:, :-1].reshape(-1, 64), ids[:, 1:].reshape(-1))

    loss().backward()
    opt = MeZO(model.parameters(), eps=1e-6, chunk_elements=500)
    for seed in (1, 2, 3):
        z = opt.direction(seed)
        directional = sum((p.grad * zi).sum() for p, zi in zip(opt.params, z)).item()
        with torch.no_grad():
            g, _, _ = opt.projected_grad(lambda: loss().item(), seed)
        assert abs(g - directional) <= 1e-6 * abs(directional), (seed, g, directional)


def test_mezo_loss_falls_on_a_learnable_task():
    """A repeating 8-token pattern: 40 MeZO steps must lower the loss clearly."""
    model = tiny_model(LLAMA_TINY).eval()
    ids = torch.arange(1, 9).repeat(4).view(2, 16)
    opt = MeZO(model.parameters(), lr=3e-3, eps=1e-3, seed=0)

    def loss():
        return float(model(input_ids=ids, labels=ids, use_cache=False).loss)

    with torch.no_grad():
        start = loss()
        for _ in range(40):
            opt.step(loss)
        end = loss()
    assert end < start - 0.15, (start, end)


# ---- steps and checkpointing ----------------------------------------------------------------

@pytest.mark.parametrize("keep, expected", [(1.0, []), (0.75, [0]), (0.5, [0, 1]), (0.0, [0, 1, 2, 3])])
def test_checkpointing_recomputes_exactly_the_first_layers(keep, expected):
    """Count the MLP calls of each decoder layer in one BP step: a checkpointed layer runs its
    forward twice (once more in the backward pass), the others once. A pre-hook, since the
    non-reentrant recompute stops early, inside the MLP, once the saved tensors are back."""
    model = tiny_model(LLAMA_TINY)
    assert enable_checkpointing(model, keep) == expected
    calls = [0] * len(decoder_layers(model))
    for i, layer in enumerate(decoder_layers(model)):
        layer.mlp.register_forward_pre_hook(lambda *_, i=i: calls.__setitem__(i, calls[i] + 1))
    stepper = Stepper(model, "bp", "sgd")
    stepper.step(torch.randint(0, 64, (2, 16)))
    assert calls == [2 if i in expected else 1 for i in range(4)]


def test_checkpointing_saves_fewer_tensors():
    """Saved-tensor hooks: the bytes saved for backward fall as more layers are checkpointed."""
    saved = {}
    for keep in (1.0, 0.5, 0.0):
        model = tiny_model(LLAMA_TINY)
        enable_checkpointing(model, keep)
        model.train()
        total = [0]

        def pack(t):
            total[0] += t.numel() * t.element_size()
            return t
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            model(input_ids=torch.randint(0, 64, (2, 16)), labels=None, use_cache=False).logits.sum()
        saved[keep] = total[0]
    assert saved[1.0] > saved[0.5] > saved[0.0]


def test_number_of_checkpointed_layers():
    assert [num_checkpointed_layers(32, k) for k in (0, 0.25, 0.5, 1)] == [32, 24, 16, 0]
    assert num_checkpointed_layers(3, 0.5) == 1   # round(1.5) = 2 layers keep


# ---- data ---------------------------------------------------------------------------------

def test_data_sources(tmp_path):
    assert "MeZO" in read_text("sample")
    assert byte_tokens("A", 50).tolist() == [65 % 50]
    jsonl = tmp_path / "d.jsonl"
    jsonl.write_text('{"text": "hello"}\n{"question": "why"}\n')
    assert read_text(jsonl) == "hello\nwhy"
    b = Batches(vocab_size=64, batch=2, seq=8, data=jsonl)
    assert b.batch(0).shape == (2, 8) and int(b.batch(3).max()) < 64
    r = Batches(vocab_size=64, batch=2, seq=8)
    assert torch.equal(r.batch(1), r.batch(1)) and not torch.equal(r.batch(1), r.batch(2))
    with pytest.raises(ValueError):
        read_text(tmp_path / "missing.txt")


# ---- measurement --------------------------------------------------------------------------

# A GPT-2 shape with the real vocabulary, two narrow layers, 8 tokens: the embedding
# dominates and the activations are small, so any z temporary of a few MiB would show
# (a fixed 2**20-value chunk gives a ratio of 1.17 here; a whole-embedding z far more).
GPT2_WIDE_VOCAB = {"model_type": "gpt2", "n_embd": 128, "n_layer": 2, "n_head": 4, "vocab_size": 50257,
                   "n_positions": 128}


def test_mezo_peak_is_within_one_percent_of_inference_on_cpu():
    sc = dict(batch=1, seq=8, dtype="fp32", attention="eager", target="cpu")
    inference = measure(GPT2_WIDE_VOCAB, Scenario(method="inference", **sc), steps=2, device="cpu")
    mezo = measure(GPT2_WIDE_VOCAB, Scenario(method="mezo", **sc), steps=2, device="cpu")
    ratio = mezo["measured_peak_bytes"] / inference["measured_peak_bytes"]
    assert ratio <= 1.01, ratio
    assert all(isinstance(x, float) and math.isfinite(x) for x in mezo["losses"])


def test_cpu_and_trace_agree_and_bp_terms_are_counted():
    sc = Scenario(method="bp", optimizer="adamw", batch=2, seq=16, dtype="fp32", target="cpu", attention="eager", loop=loop_preset("plain"))
    cpu = measure(LLAMA_TINY, sc, steps=2, device="cpu")
    trace = measure(LLAMA_TINY, sc, steps=2, device="trace")
    assert cpu["measured_peak_bytes"] == trace["measured_peak_bytes"]
    params = sum(p.numel() for p in tiny_model(LLAMA_TINY).parameters())
    b = cpu["measured_breakdown"]
    assert b["weights"] == 4 * params
    assert b["optimizer_states"] >= 2 * 4 * params   # exp_avg and exp_avg_sq at least
    assert trace["losses"] == [None, None] and len(cpu["losses"]) == 2


def test_trace_of_llama_2_7b_mezo():
    """The trace path on a model far larger than this machine's memory (fake tensors)."""
    sc = dict(batch=1, seq=128, dtype="bf16", attention="eager", target="cpu")
    mezo = measure("llama-2-7b", Scenario(method="mezo", **sc), steps=2, device="trace")
    weights = 2 * mezo["params"]
    assert mezo["params"] == 6_738_415_616
    assert mezo["measured_breakdown"]["weights"] == weights
    assert weights < mezo["measured_peak_bytes"] < 1.02 * weights


@pytest.mark.skipif(not torch.cuda.is_available(),
                    reason="no CUDA GPU on this machine: GPU validation table still to be measured")
def test_cuda_measurement_reports_all_three_numbers_and_meets_the_target():
    from capacity.validation import compare
    r = compare("gpt2", Scenario(method="bp", optimizer="adamw", batch=2, seq=256, dtype="bf16",
                                 target="cuda"), steps=3, device="cuda")
    c = r["cuda"]
    assert c["max_memory_allocated_bytes"] <= c["max_memory_reserved_bytes"] <= c["device_used_bytes"]
    assert r["error_pct"] is not None and abs(r["error_pct"]) <= 3, r["error_pct"]


@pytest.mark.parametrize("peft", ["none", "lora"])
def test_trainer_extra_tracked_step_measures_what_tracking_every_step_does(peft):
    """On cuda the Trainer's timed steps run untracked and one more step runs under MemTracker
    for the breakdown (so step times carry no tracking); on the CPU both ways must see the
    same peak and breakdown, since every step after the first is the same."""
    from capacity.scenario import Peft
    from capacity.validation import peft_models, trainer_loop
    from capacity.validation.measurement import _Phase, _tracker_snapshot
    from capacity.validation.tracker import Tracker
    sc = Scenario(method="bp", optimizer="adamw", batch=2, seq=16, dtype="fp32", attention="eager", target="cpu",
                  peft=Peft(method=peft))
    out = {}
    for extra in (False, True):
        model = peft_models.prepare(tiny_model(LLAMA_TINY), sc.peft, "cpu", torch.float32)
        torch.manual_seed(1)
        rows = [torch.randint(0, 64, (16,)) for _ in range(2 * 4)]
        seen = []
        tracker = Tracker()
        trainer_loop.run(model, sc, rows, 3, "cpu", None, None, 0, tracker, None, {"step": 0, "stepper": _Phase()},
                         on_step=lambda i, loss, s: seen.append(i), track_extra_step=extra)
        out[extra] = _tracker_snapshot(tracker)
        assert seen == [1, 2, 3]          # the extra step is not reported as a timed step
    # The same but for a few scalars the Trainer keeps across steps (its running loss, the
    # gradient norm), made before the extra step's tracker starts: under 1 KiB, any model size.
    (peak_extra, terms_extra), (peak_all, terms_all) = out[True], out[False]
    assert 0 <= peak_all - peak_extra < 1024
    assert {k: v for k, v in terms_extra.items() if k != "activations"} == \
           {k: v for k, v in terms_all.items() if k != "activations"}
    assert 0 <= terms_all["activations"] - terms_extra["activations"] < 1024
