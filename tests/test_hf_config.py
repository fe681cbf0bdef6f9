"""Reading config.json: supported types, defaults, and bad or hostile input."""

import json
from dataclasses import replace

import pytest

from capacity import MODEL_TYPES, ModelShape, Scenario, from_hf_config, load_preset, parse_hf_config_text
from capacity.families import llama
from capacity.hf_config import MAX_CONFIG_BYTES, load_hf_config


def test_unknown_type_lists_supported():
    with pytest.raises(ValueError) as err:
        from_hf_config({"model_type": "bert"})
    for t in MODEL_TYPES:
        assert t in str(err.value)


@pytest.mark.parametrize("text,field", [
    ("{not json", "not valid JSON"),
    ("[1, 2]", "JSON object"),
    ('{"model_type": "llama", "hidden_size": -4}', "hidden_size"),
    ('{"model_type": "llama", "hidden_size": "big"}', "hidden_size"),
    ('{"model_type": "llama", "hidden_size": 1e300}', "hidden_size"),
    ('{"model_type": "llama", "num_hidden_layers": NaN}', "NaN"),
    ('{"model_type": "llama", "hidden_size": 4096, "num_attention_heads": 30}', "num_attention_heads"),
    ('{"model_type": "llama", "num_key_value_heads": 5}', "num_key_value_heads: must divide num_attention_heads"),
    ('{"model_type": "gpt2", "n_head": 0}', "n_head"),
    ('{"model_type": "llama", "hidden_act": "swiglu_custom"}', "hidden_act"),
    ('{"model_type": "llama", "vocab_size": 99999999999}', "vocab_size"),
    ('{"model_type": "llama", "tie_word_embeddings": "yes"}', "tie_word_embeddings"),
])
def test_bad_config_names_the_problem(text, field):
    with pytest.raises(ValueError, match=field):
        parse_hf_config_text(text)


def test_remote_code_is_never_followed():
    cfg = {"model_type": "llama", "auto_map": {"AutoModelForCausalLM": "evil.Model"},
           "hidden_size": 64, "num_attention_heads": 4, "intermediate_size": 128,
           "num_hidden_layers": 2, "vocab_size": 100}
    shape = from_hf_config(cfg)
    assert shape.model_type == "llama"


def test_oversized_and_deeply_nested_configs_are_rejected():
    with pytest.raises(ValueError, match="larger than"):
        parse_hf_config_text(b" " * (MAX_CONFIG_BYTES + 1))
    with pytest.raises(ValueError):
        parse_hf_config_text("[" * 100_000 + "]" * 100_000)


def test_load_from_folder(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "gpt2", "n_layer": 2}))
    assert load_hf_config(tmp_path).num_layers == 2
    with pytest.raises(ValueError, match="no file"):
        load_hf_config(tmp_path / "missing")


@pytest.mark.parametrize("field,value", [("num_layers", 0), ("hidden_size", -1), ("attn_dropout", 1.5),
                                         ("max_positions", 0), ("model_type", "t5")])
def test_shape_validation(field, value):
    kwargs = dict(model_type="llama", num_layers=2, hidden_size=64, num_heads=4, num_kv_heads=4,
                  head_dim=16, intermediate_size=128, vocab_size=100, arch=llama.architecture("silu"),
                  max_positions=2048)
    kwargs[field] = value
    with pytest.raises(ValueError, match=field):
        ModelShape(**kwargs)


@pytest.mark.parametrize("field,value", [("rotary_fraction", 2.0), ("positions", "alibi"),
                                         ("norm_placement", "middle")])
def test_architecture_validation(field, value):
    arch = replace(llama.architecture("silu"), **{field: value})
    with pytest.raises(ValueError, match=field):
        replace(load_preset("tiny-llama"), arch=arch)


@pytest.mark.parametrize("field,value", [("batch", 0), ("seq", -5), ("keep", 1.5), ("keep", -0.1),
                                         ("method", "lora"), ("dtype", "int3"), ("batch", 2.5)])
def test_scenario_validation(field, value):
    with pytest.raises(ValueError, match=field):
        Scenario(**{field: value})


transformers = pytest.importorskip("transformers")


@pytest.mark.parametrize("model_type", MODEL_TYPES)
def test_defaults_match_transformers(model_type):
    """A config with only model_type reads like transformers' own defaults for that type."""
    ours = from_hf_config({"model_type": model_type})
    full = transformers.AutoConfig.for_model(model_type).to_dict()
    full = {k: v for k, v in full.items() if v is not None or k in ("num_key_value_heads", "head_dim")}
    assert from_hf_config(full) == ours
