"""What is trained: predicted against measured peak memory, a representative slice of
bench/accuracy.py --peft (the whole matrix, every family: docs/peft.md).

Traced cases (fake tensors, the real transformers + peft code) within 2%; quantized bases
(bitsandbytes, real CPU runs: their parameters cannot hold fake tensors) within 3%. The
trainable parameter count is exact in every case.
"""

import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("peft")

from capacity import estimate, from_hf_config  # noqa: E402
from capacity.accuracy import accuracy_models, peft_matrix, quantized_matrix  # noqa: E402
from capacity.validation import compare  # noqa: E402

TRACE_TOLERANCE_PCT = 2.0
CPU_TOLERANCE_PCT = 3.0


def _case(matrix, model_type, **want):
    """The matrix's scenario for model_type whose settings (and Peft's) match `want`."""
    for sc in matrix(model_type):
        fields = {**sc.__dict__, **sc.peft.__dict__, "loop": sc.loop.name, "step": sc.method, "peft": sc.peft.method}
        if all(fields.get(k) == v for k, v in want.items()):
            return sc
    raise LookupError(f"no {model_type} case with {want}")


TRACED = [
    ("llama", dict(step="bp", peft="lora", keep=0.0, lora_rank=8, lora_targets=(), loop="plain")),  # peft's targets
    ("gpt2", dict(lora_dropout=0.1, keep=0.0, loop="plain")),                   # all-linear with dropout
    ("qwen2", dict(trainable_layers=2, keep=0.0)),                              # top layers, checkpointed
    ("phi", dict(attention="sdpa", peft="prefix", step="bp")),                  # prefix tuning, SDPA
    ("gemma", dict(step="mezo", lora_rank=64)),                                 # MeZO-LoRA, every linear
    ("gpt_neox", dict(loop="trainer", keep=1.0)),                               # transformers.Trainer, KV cache
    ("opt", dict(lora_dropout=0.05, loop="trainer")),                           # ReLU's output in the recompute
    ("qwen3", dict(attention="eager", peft="prefix", step="bp")),               # prefix cache dropped with the output
]
QUANTIZED = [
    ("llama", dict(keep=0.0, weights_bits=4, lora_dropout=0.1)),                 # QLoRA all-linear, checkpointed
    ("opt", dict(keep=1.0, weights_bits=8, step="bp")),                          # 8-bit base: fc2's input is ReLU's
    ("qwen2", dict(step="mezo", weights_bits=4)),                                # MeZO-LoRA on a 4-bit base
]


def _check(model_type, sc, device, tolerance):
    cfg = dict(accuracy_models()[model_type])
    r = compare(cfg, sc, steps=2, device=device)
    assert r["trainable_params"] == estimate(from_hf_config(cfg), sc).trainable_params
    assert abs(r["error_pct"]) <= tolerance, (
        f"predicted {r['predicted_peak_bytes']:,} vs measured {r['measured_peak_bytes']:,} "
        f"({r['error_pct']:+.2f}%, predicted phase {r['predicted_phase']})")


@pytest.mark.parametrize("model_type,want", TRACED, ids=[f"{m}-{i}" for i, (m, _) in enumerate(TRACED)])
def test_traced_peft_within_2_percent(model_type, want):
    _check(model_type, _case(peft_matrix, model_type, **want), "trace", TRACE_TOLERANCE_PCT)


@pytest.mark.parametrize("model_type,want", QUANTIZED, ids=[f"{m}-{i}" for i, (m, _) in enumerate(QUANTIZED)])
def test_quantized_base_within_3_percent_of_a_cpu_run(model_type, want):
    pytest.importorskip("bitsandbytes")
    _check(model_type, _case(quantized_matrix, model_type, **want), "cpu", CPU_TOLERANCE_PCT)


def test_the_held_output_keeps_the_prefix_cache_only_where_the_model_returns_it():
    """A prefix is a cache peft gives with use_cache off (the plain loop): Llama's output
    references it, Qwen3's does not (`past_key_values if use_cache else None`:
    Architecture.output_cache_needs_use_cache). Priced as if Qwen3's output held it, the
    prediction is off its trace by the cache entries (grouped-query heads: attention keeps
    repeated copies, not the cache's tensors)."""
    from dataclasses import replace
    cfg = dict(accuracy_models()["qwen3"])
    sc = _case(peft_matrix, "qwen3", attention="eager", peft="prefix", step="bp")
    shape = from_hf_config(cfg)
    assert shape.arch.output_cache_needs_use_cache and not from_hf_config(dict(accuracy_models()["llama"])).arch.output_cache_needs_use_cache
    measured = compare(cfg, sc, steps=2, device="trace")["measured_peak_bytes"]
    held = replace(shape, arch=replace(shape.arch, output_cache_needs_use_cache=False))
    as_if_held = 100 * (estimate(held, sc).peak_bytes - measured) / measured
    as_described = 100 * (estimate(shape, sc).peak_bytes - measured) / measured
    assert abs(as_described) <= TRACE_TOLERANCE_PCT < as_if_held, (as_described, as_if_held)


# Adapters in the model's dtype (get_peft_model(..., autocast_adapter_dtype=False), Peft.
# adapter_dtype "model": what FSDP's mixed precision computes them in), and an fp32 base:
# a LoRA adapter on OPT's fc2 reads ReLU's kept output itself, adding nothing.
OPT_TINY = {"model_type": "opt", "hidden_size": 64, "ffn_dim": 256, "num_hidden_layers": 3, "num_attention_heads": 4,
            "vocab_size": 257, "max_position_embeddings": 256, "word_embed_proj_dim": 64}
LLAMA_TINY = {"model_type": "llama", "hidden_size": 64, "intermediate_size": 172, "num_hidden_layers": 3,
              "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 257, "max_position_embeddings": 256,
              "tie_word_embeddings": False}
SAME_DTYPE = [
    ("llama bf16 adapters", LLAMA_TINY, "bf16", "model", ("all-linear",), 0.0, "plain"),
    ("llama bf16 adapters, dropout", LLAMA_TINY, "bf16", "model", ("all-linear",), 0.1, "trainer"),
    ("opt bf16 adapters", OPT_TINY, "bf16", "model", ("all-linear",), 0.0, "trainer"),
    ("opt fp32 base, fc2", OPT_TINY, "fp32", "fp32", ("fc2",), 0.0, "plain"),
]


@pytest.mark.parametrize("name,cfg,dtype,adapter_dtype,targets,dropout,loop", SAME_DTYPE, ids=[c[0] for c in SAME_DTYPE])
def test_adapters_in_the_models_dtype_within_2_percent(name, cfg, dtype, adapter_dtype, targets, dropout, loop):
    from capacity.scenario import Peft, Scenario, loop_preset
    sc = Scenario(method="bp", optimizer="adamw", batch=2, seq=32, dtype=dtype, attention="eager", target="cpu",
                  peft=Peft(method="lora", adapter_dtype=adapter_dtype, lora_targets=targets, lora_dropout=dropout),
                  loop=loop_preset(loop))
    r = compare(cfg, sc, steps=2, device="trace")
    assert abs(r["error_pct"]) <= TRACE_TOLERANCE_PCT, (name, r["error_pct"])
    if adapter_dtype == "model":
        fp32 = compare(cfg, sc.__class__(**{**sc.__dict__, "peft": Peft(method="lora", lora_targets=targets,
                                                                         lora_dropout=dropout)}), steps=2, device="trace")
        assert r["measured_peak_bytes"] < fp32["measured_peak_bytes"]      # the setting reaches the real code


# PEFT under autocast over an fp32 model (capacity.accuracy.autocast_peft_matrix; the whole
# matrix: bench/accuracy.py --autocast-peft, docs/peft.md).
AUTOCAST = [
    ("llama", dict(peft="lora", loop="plain", attention="eager", dtype="bf16")),   # frozen casts, LoRA chain
    ("opt", dict(peft="prefix", loop="trainer", attention="sdpa")),               # fp32 cache, forward's end
    ("gemma", dict(peft="prefix", loop="trainer", attention="sdpa")),             # one kv head: the cast expands
    ("qwen2", dict(peft="freeze", loop="trainer")),                               # a trained top layer's casts
    ("gpt2", dict(peft="lora", dtype="fp16")),                                    # fp16 autocast, Conv1D
]


@pytest.mark.parametrize("model_type,want", AUTOCAST, ids=[f"{m}-{w['peft']}" for m, w in AUTOCAST])
def test_peft_under_autocast_within_2_percent(model_type, want):
    from capacity.accuracy import autocast_peft_matrix
    sc = _case(autocast_peft_matrix, model_type, **want)
    assert sc.mixed_precision
    _check(model_type, sc, "trace", TRACE_TOLERANCE_PCT)


@pytest.mark.parametrize("change,why", [
    (dict(keep=0.0), "checkpointing"), (dict(lora_dropout=0.1), "dropout"),
    (dict(model="gpt2", method="prefix"), "probabilities"), (dict(weights_bits=4), "quantized")])
def test_what_autocast_peft_refuses_is_named(change, why):
    from dataclasses import replace
    from capacity.scenario import Peft, Scenario
    model = change.pop("model", "llama")
    keep = change.pop("keep", 1.0)
    pf = Peft(**{"method": "lora", **change})
    sc = Scenario(method="bp", dtype="bf16", mixed_precision=True, keep=keep, target="cpu", peft=pf)
    with pytest.raises(ValueError, match=why):
        estimate(from_hf_config(dict(accuracy_models()[model])), sc)
    # the same without autocast is modelled (a quantized base aside: it needs a 16-bit dtype)
    if "weights_bits" not in change:
        estimate(from_hf_config(dict(accuracy_models()[model])), replace(sc, mixed_precision=False))
