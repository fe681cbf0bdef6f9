"""The validation engine's PEFT path on a tiny model: LoRA, prefix tuning and top layers
by BP and MeZO, measured on the CPU and traced under fake tensors; a quantized base on the
CPU. The memory model's trainable set and quantized storage against the real ones (its
peaks: tests/test_peft_accuracy.py)."""

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("peft")

from capacity.scenario import Peft, Scenario  # noqa: E402
from capacity.validation import compare  # noqa: E402
from capacity.validation.models import build_model, decoder_layers  # noqa: E402
from capacity.validation.peft_models import prepare, trainable_parameters  # noqa: E402

LLAMA_TINY = {"model_type": "llama", "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
              "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 128}
H, I, L, KV = 64, 128, 2, 2 * 16   # hidden, MLP width, layers, key/value width (2 heads of 16)


def scenario(step, **peft):
    return Scenario(method=step, batch=2, seq=16, dtype="bf16", target="cpu", peft=Peft(**peft))


@pytest.mark.parametrize("method,peft", [
    ("bp", dict(method="lora")),
    ("bp", dict(method="lora", lora_targets=("all-linear",), lora_dropout=0.1, lora_rank=4)),
    ("mezo", dict(method="lora")),
    ("bp", dict(method="prefix", prefix_tokens=5)),
    ("bp", dict(method="freeze", trainable_layers=1)),
])
def test_cpu_run_and_trace_agree_byte_for_byte(method, peft):
    """The fake-tensor trace of a PEFT model is checked against a real CPU run (MeZO's trace
    holds its projected gradient as a 0-d fp32 tensor, which a real run reads as a float: 8
    bytes, as for full-parameter MeZO)."""
    sc = scenario(method, **peft)
    cpu = compare(LLAMA_TINY, sc, steps=2, device="cpu")
    trace = compare(LLAMA_TINY, sc, steps=2, device="trace")
    allowed = 8 if method == "mezo" else 0
    assert 0 <= trace["measured_peak_bytes"] - cpu["measured_peak_bytes"] <= allowed
    assert cpu["trainable_params"] == trace["trainable_params"] < cpu["params"]
    # The memory model's trainable set is peft's, parameter for parameter.
    from capacity import estimate, from_hf_config
    assert estimate(from_hf_config(LLAMA_TINY), sc).trainable_params == cpu["trainable_params"]
    assert cpu["predicted_peak_bytes"] is not None
    if method == "bp":
        # Optimizer states exist for the trainable parameters only: AdamW's two states in the
        # parameter's dtype (fp32 adapters, bf16 layers; a 4-byte step per tensor; at the peak
        # perhaps foreach's temporary), below the 4 bytes per parameter that AdamW's bf16
        # states of every parameter would take.
        states = cpu["measured_breakdown"]["optimizer_states"]
        assert 4 * cpu["trainable_params"] <= states < 4 * cpu["params"]


def test_trainable_sets_follow_their_definitions():
    """LoRA: r·(in + out) per adapted linear (peft's llama default targets q_proj, v_proj);
    prefix: a key and a value vector per layer per virtual token (2·L·KV·P, peft's GQA
    prefix has the key/value width); freeze: exactly the top layer's parameters."""
    def built(peft):
        torch.manual_seed(0)
        return prepare(build_model(LLAMA_TINY, "bf16"), peft, "cpu", torch.bfloat16)

    lora = built(Peft(method="lora", lora_rank=4))
    assert sum(p.numel() for p in trainable_parameters(lora)) == L * 4 * ((H + H) + (H + KV))
    assert {p.dtype for p in trainable_parameters(lora)} == {torch.float32}   # autocast_adapter_dtype
    prefix = built(Peft(method="prefix", prefix_tokens=5))
    assert sum(p.numel() for p in trainable_parameters(prefix)) == 2 * L * KV * 5
    top = built(Peft(method="freeze", trainable_layers=1))
    assert {id(p) for p in trainable_parameters(top)} == {id(p) for p in decoder_layers(top)[-1].parameters()}


def test_8bit_base_weights_are_int8_with_row_statistics():
    """LLM.int8: one int8 per weight and one fp32 statistic per output row (SCB, held by the
    layer's MatmulLtState after the first forward); the rest as in the 4-bit test."""
    pytest.importorskip("bitsandbytes")
    result = compare(LLAMA_TINY, scenario("mezo", method="lora", weights_bits=8), steps=2, device="cpu")
    linears = [(H, H), (H, KV), (H, KV), (H, H), (H, I), (H, I), (I, H)] * L
    quantized = sum(i * o + 4 * o for i, o in linears)
    bf16 = 2 * (2 * 128 * H + (2 * L + 1) * H)
    assert result["measured_breakdown"]["weights"] == quantized + bf16 + 4 * result["trainable_params"]
    # capacity.quantization stores them the same way.
    assert result["breakdown"]["comparable"]["predicted"]["weights"] == result["measured_breakdown"]["weights"]


def test_quantized_base_weights_are_stored_as_bitsandbytes_stores_them():
    """4-bit NF4 with double quantization: per linear of n weights, n/2 packed bytes, one
    uint8 statistic per block of 64, an fp32 statistic per 256 blocks, the 256-entry fp32
    code of the statistics, the 16-entry fp32 NF4 code and an fp32 offset; the embedding, the
    norms and the head stay bf16; LoRA adapters fp32. The measured weights are exactly that."""
    pytest.importorskip("bitsandbytes")
    sc = scenario("mezo", method="lora", weights_bits=4, double_quant=True)
    result = compare(LLAMA_TINY, sc, steps=2, device="cpu")
    linears = [(H, H), (H, KV), (H, KV), (H, H), (H, I), (H, I), (I, H)] * L    # q k v o gate up down
    quantized = 0
    for fan_in, fan_out in linears:
        n = fan_in * fan_out
        blocks = -(-n // 64)
        quantized += n // 2 + blocks + 4 * -(-blocks // 256) + 4 * 256 + 4 * 16 + 4
    norms = (2 * L + 1) * H
    bf16 = 2 * (2 * 128 * H + norms)                # embedding, head, norms
    adapters = 4 * result["trainable_params"]
    assert result["measured_breakdown"]["weights"] == quantized + bf16 + adapters
    # capacity.quantization stores them the same way.
    assert result["breakdown"]["comparable"]["predicted"]["weights"] == result["measured_breakdown"]["weights"]
    # The parameter count is the model's, not the packed storage's (two 4-bit values a byte).
    assert result["params"] == sum(i * o for i, o in linears) + (2 * 128 + 2 * L + 1) * H + result["trainable_params"]


def test_tracked_peak_does_not_grow_with_the_steps_under_checkpointing():
    """With a frozen embedding and checkpointing, transformers makes the embedding's output
    a leaf that requires grad; torch's MemTracker hooks would keep each step's leaf and its
    gradient alive (tracker.py). The peak of steps 2..N must then be the same for any N,
    up to the token ids of the later steps, which are live in a run (8 bytes per token)."""
    sc = Scenario(method="bp", batch=2, seq=16, dtype="bf16", keep=0.0, target="cpu", peft=Peft(method="lora"))
    two = compare(LLAMA_TINY, sc, steps=2, device="cpu")["measured_peak_bytes"]
    four = compare(LLAMA_TINY, sc, steps=4, device="cpu")["measured_peak_bytes"]
    assert four - two == 2 * 8 * 2 * 16
