"""Parameter counts equal the real Hugging Face models' sum(p.numel()) for every preset."""

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from capacity import load_preset, parameter_count, preset_config, preset_names  # noqa: E402
from capacity.params import parameter_tensor_count  # noqa: E402


def _meta_model(name):
    cfg = preset_config(name)
    model_type = cfg.pop("model_type")
    config = transformers.AutoConfig.for_model(model_type, **cfg)
    with torch.device("meta"):
        return transformers.AutoModelForCausalLM.from_config(config)


@pytest.mark.parametrize("name", preset_names())
def test_parameter_count_is_exact(name):
    model = _meta_model(name)
    shape = load_preset(name)
    assert parameter_count(shape) == sum(p.numel() for p in model.parameters())
    assert parameter_tensor_count(shape) == len(list(model.parameters()))


def test_published_llama2_7b_count():
    # Meta's model card: 6,738,415,616 parameters.
    assert parameter_count(load_preset("llama-2-7b")) == 6_738_415_616


# Variants of the model types of issue 9 that no preset covers: a head dim apart from h/a
# (honoured by Qwen3, OLMo 2, Granite and SmolLM3), biases on the attention, one or all
# key/value heads, tied and untied heads.
SMALL = {"hidden_size": 64, "intermediate_size": 96, "num_attention_heads": 4, "num_hidden_layers": 3,
         "vocab_size": 300, "pad_token_id": None}
VARIANTS = [{"model_type": t, **SMALL, **v} for t in ("qwen3", "olmo2", "granite", "smollm3") for v in (
    {"head_dim": 24, "num_key_value_heads": 2},
    {"num_key_value_heads": 1, "attention_bias": True, "tie_word_embeddings": False},
    {"num_key_value_heads": 4, "tie_word_embeddings": True},
)] + [{"model_type": "granite", **SMALL, "mlp_bias": True}, {"model_type": "smollm3", **SMALL, "mlp_bias": True}]


@pytest.mark.parametrize("cfg", VARIANTS, ids=lambda c: f"{c['model_type']}-{'-'.join(f'{k}={v}' for k, v in c.items() if k not in SMALL and k != 'model_type')}")
def test_parameter_count_of_variants_is_exact(cfg):
    from capacity import from_hf_config
    conf = {k: v for k, v in cfg.items() if k != "model_type"}
    config = transformers.AutoConfig.for_model(cfg["model_type"], **conf)
    with torch.device("meta"):
        model = transformers.AutoModelForCausalLM.from_config(config)
    shape = from_hf_config(cfg)
    assert parameter_count(shape) == sum(p.numel() for p in model.parameters())
    assert parameter_tensor_count(shape) == len(list(model.parameters()))
    assert shape.q_dim == model.model.layers[0].self_attn.q_proj.out_features
