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


# ------------------------------------------------------------------ types, names, sizes

@pytest.mark.parametrize("cfg,key", [
    ({"model_type": "llama", "hidden_act": ["silu"]}, "hidden_act"),
    ({"model_type": "gpt2", "activation_function": {}}, "activation_function"),
    ({"model_type": "gpt2", "n_embd": [768]}, "n_embd"),
    ({"model_type": "opt", "attention_dropout": {}}, "attention_dropout"),
    ({"model_type": "gpt2", "attn_pdrop": 1.5}, "attn_pdrop"),
    ({"model_type": "gpt2", "n_embd": 64, "n_head": 4, "n_inner": 2**25}, "n_inner"),
    ({"model_type": "llama", "num_key_value_heads": "8"}, "num_key_value_heads"),
    ({"model_type": "llama", "max_position_embeddings": 0}, "max_position_embeddings"),
    ({"model_type": "gpt_neox", "rope_parameters": [1]}, "rope_parameters"),
    ({"model_type": "gpt_neox", "rope_parameters": {"partial_rotary_factor": "x"}},
     "rope_parameters.partial_rotary_factor"),
    ({"model_type": "phi", "rope_scaling": "linear"}, "rope_scaling"),
    ({"model_type": "qwen2", "num_hidden_layers": 2, "layer_types": ["full_attention"]}, "layer_types"),
    ({"model_type": "qwen2", "num_hidden_layers": 1, "layer_types": [["full_attention"]]}, "layer_types"),
    ({"model_type": "qwen2", "num_hidden_layers": 1, "layer_types": ["chunked_attention"]}, "layer_types"),
    ({"model_type": "mistral", "sliding_window": []}, "sliding_window"),
    ({"model_type": ["llama"]}, "model_type"),
    ({"model_type": {"x": 1}}, "model_type"),
    ({"model_type": "llama", "hidden_size": 64, "num_attention_heads": 4, "head_dim": 16.5}, "head_dim"),
    ({"model_type": "gemma", "hidden_act": "gelu_fast"}, "hidden_act"),
])
def test_a_wrong_type_is_named_by_its_config_key(cfg, key):
    with pytest.raises(ValueError, match=f"config.json: {key.replace('.', '[.]')}") as err:
        from_hf_config(cfg)
    assert "\n" not in str(err.value) and len(str(err.value)) < 300


@pytest.mark.parametrize("digits", [400, 4000, 5000])
def test_a_huge_integer_is_named_and_not_printed(digits):
    text = '{"model_type": "llama", "vocab_size": 1' + "0" * digits + "}"
    with pytest.raises(ValueError, match="vocab_size") as err:
        parse_hf_config_text(text)
    assert len(str(err.value)) < 200


def test_a_huge_float_is_not_printed_in_full():
    for key in ("vocab_size", "attention_dropout"):
        with pytest.raises(ValueError, match=key) as err:
            parse_hf_config_text('{"model_type": "llama", "%s": 1e308}' % key)
        assert len(str(err.value)) < 200 and "0000000000" not in str(err.value)


def test_quantized_weights_are_refused_not_priced_as_16_bit():
    cfg = {"model_type": "llama", "quantization_config": {"load_in_4bit": True, "quant_method": "bitsandbytes"}}
    with pytest.raises(ValueError, match="quantization_config: quantized base weights are not modelled"):
        from_hf_config(cfg)
    assert from_hf_config({**cfg, "quantization_config": None}) == from_hf_config({"model_type": "llama"})


def test_an_unreadable_config_file_is_a_value_error(tmp_path):
    with pytest.raises(ValueError, match="empty path"):
        load_hf_config("")
    folder = tmp_path / "config.json"
    folder.mkdir()
    with pytest.raises(ValueError, match="no file"):
        load_hf_config(folder)


# ------------------------------------------------------------------ read as transformers reads

@pytest.mark.parametrize("cfg", [
    {"model_type": "gpt_neox", "rotary_pct": 0.5},
    {"model_type": "gpt_neox", "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0,
                                                   "partial_rotary_factor": 0.125}},
    {"model_type": "gpt_neox", "rotary_pct": 0.5, "rope_parameters": {"rope_theta": 10000.0,
                                                                      "partial_rotary_factor": 1.0}},
    {"model_type": "gpt_neox", "rotary_pct": 0.5, "rope_scaling": {"rope_type": "linear", "factor": 2.0,
                                                                   "partial_rotary_factor": 0.75}},
    {"model_type": "phi", "partial_rotary_factor": 0.4},
    {"model_type": "phi", "rope_parameters": {"rope_theta": 10000.0, "partial_rotary_factor": 0.25}},
    {"model_type": "phi"},
])
def test_the_rotated_share_is_read_as_transformers_reads_it(cfg):
    ours = from_hf_config(cfg).arch.rotary_fraction
    conf = {k: v for k, v in cfg.items() if k != "model_type"}
    theirs = transformers.AutoConfig.for_model(cfg["model_type"], **conf).rope_parameters["partial_rotary_factor"]
    assert ours == theirs


@pytest.mark.parametrize("cfg", [
    {"model_type": "gemma", "hidden_act": "gelu"},
    {"model_type": "gemma", "hidden_act": "gelu_pytorch_tanh", "hidden_activation": "relu"},
    {"model_type": "gemma", "hidden_activation": "gelu_pytorch_tanh"},
])
def test_gemma_activation_is_the_one_transformers_runs(cfg):
    conf = {k: v for k, v in cfg.items() if k != "model_type"}
    theirs = transformers.AutoConfig.for_model("gemma", **conf).hidden_act
    assert from_hf_config(cfg).arch.mlp.activation == {"gelu_pytorch_tanh": "gelu_tanh"}[theirs]


@pytest.mark.parametrize("cfg", [
    {"model_type": "mistral", "num_hidden_layers": 3},
    {"model_type": "mistral", "num_hidden_layers": 3, "sliding_window": None},
    {"model_type": "mistral", "num_hidden_layers": 3, "sliding_window": 128},
    {"model_type": "qwen2", "num_hidden_layers": 5},
    {"model_type": "qwen2", "num_hidden_layers": 5, "use_sliding_window": True, "max_window_layers": 2},
    {"model_type": "qwen2", "num_hidden_layers": 5, "use_sliding_window": True, "max_window_layers": 0,
     "sliding_window": 64},
    {"model_type": "qwen2", "num_hidden_layers": 3, "use_sliding_window": True,
     "layer_types": ["sliding_attention", "full_attention", "sliding_attention"]},
    {"model_type": "qwen3", "num_hidden_layers": 5},
    {"model_type": "qwen3", "num_hidden_layers": 5, "use_sliding_window": True, "max_window_layers": 2},
    {"model_type": "qwen3", "num_hidden_layers": 3, "use_sliding_window": False, "sliding_window": 64,
     "layer_types": ["sliding_attention", "full_attention", "sliding_attention"]},
    {"model_type": "smollm3", "num_hidden_layers": 6, "use_sliding_window": True, "sliding_window": 64},
    {"model_type": "smollm3", "num_hidden_layers": 6, "sliding_window": 64},
    {"model_type": "gemma2", "num_hidden_layers": 5},
    {"model_type": "gemma2", "num_hidden_layers": 1, "sliding_window": 64},
    {"model_type": "gemma2", "num_hidden_layers": 3,
     "layer_types": ["full_attention", "full_attention", "sliding_attention"]},
    {"model_type": "gemma3_text", "num_hidden_layers": 26, "sliding_window": 512},
    {"model_type": "gemma3_text", "num_hidden_layers": 9, "sliding_window_pattern": 4},
    {"model_type": "gemma3_text", "num_hidden_layers": 4, "sliding_window_pattern": 1},
    {"model_type": "phi3", "num_hidden_layers": 3},
    {"model_type": "phi3", "num_hidden_layers": 3, "sliding_window": 2047},
])
def test_sliding_windows_are_read_layer_by_layer_as_transformers_reads_them(cfg):
    shape = from_hf_config(cfg)
    conf = transformers.AutoConfig.for_model(cfg["model_type"], **{k: v for k, v in cfg.items() if k != "model_type"})
    types = getattr(conf, "layer_types", None) or ["sliding_attention" if conf.sliding_window else "full_attention"] \
        * conf.num_hidden_layers
    for i, t in enumerate(types):
        window = shape.layer_kind(i).sliding_window
        assert (window > 0) == (t == "sliding_attention" and conf.sliding_window is not None)
        assert window in (0, conf.sliding_window)


@pytest.mark.parametrize("cfg", [
    {"model_type": "smollm3", "num_hidden_layers": 9},
    {"model_type": "smollm3", "num_hidden_layers": 3},
    {"model_type": "smollm3", "num_hidden_layers": 6, "no_rope_layer_interval": 2},
    {"model_type": "smollm3", "num_hidden_layers": 4, "no_rope_layers": [0, 1, 1, 0]},
    {"model_type": "smollm3", "num_hidden_layers": 36, "no_rope_layers": [1, 1, 1, 0] * 9},
])
def test_layers_without_rope_are_read_as_transformers_reads_them(cfg):
    """SmolLM3Config.__post_init__ derives no_rope_layers from no_rope_layer_interval; a
    layer with 0 applies no rotary embedding (SmolLM3Attention.use_rope)."""
    shape = from_hf_config(cfg)
    conf = transformers.AutoConfig.for_model("smollm3", **{k: v for k, v in cfg.items() if k != "model_type"})
    assert [bool(shape.layer_kind(i).rope) for i in range(shape.num_layers)] == [bool(x) for x in conf.no_rope_layers]


def test_granite_multipliers_are_read_as_transformers_reads_them():
    cfg = {"model_type": "granite", "embedding_multiplier": 12.0, "residual_multiplier": 0.22,
           "attention_multiplier": 0.015625, "logits_scaling": 8.0}
    conf = transformers.AutoConfig.for_model("granite", **{k: v for k, v in cfg.items() if k != "model_type"})
    m = from_hf_config(cfg).arch.multipliers
    assert (m.embedding, m.residual, m.attention, m.logits) == (
        conf.embedding_multiplier, conf.residual_multiplier, conf.attention_multiplier, conf.logits_scaling)
    defaults = transformers.AutoConfig.for_model("granite")
    m = from_hf_config({"model_type": "granite"}).arch.multipliers
    assert (m.embedding, m.residual, m.attention, m.logits) == (
        defaults.embedding_multiplier, defaults.residual_multiplier, defaults.attention_multiplier,
        defaults.logits_scaling)


@pytest.mark.parametrize("cfg,key", [
    ({"model_type": "granite", "logits_scaling": 0}, "logits_scaling"),
    ({"model_type": "granite", "residual_multiplier": "x"}, "residual_multiplier"),
    ({"model_type": "smollm3", "num_hidden_layers": 2, "no_rope_layers": [1]}, "no_rope_layers"),
    ({"model_type": "smollm3", "num_hidden_layers": 2, "no_rope_layers": [1, 2]}, "no_rope_layers"),
    ({"model_type": "smollm3", "no_rope_layer_interval": 0}, "no_rope_layer_interval"),
    ({"model_type": "qwen3", "head_dim": 0}, "head_dim"),
])
def test_new_family_keys_are_named_when_wrong(cfg, key):
    with pytest.raises(ValueError, match=f"config.json: {key}"):
        from_hf_config(cfg)


@pytest.mark.parametrize("cfg", [
    {"model_type": "gemma3_text", "num_hidden_layers": 13},
    {"model_type": "gemma3_text", "num_hidden_layers": 7, "sliding_window_pattern": 3},
    {"model_type": "gemma3_text", "num_hidden_layers": 4,
     "layer_types": ["full_attention", "sliding_attention", "sliding_attention", "full_attention"]},
])
def test_gemma3_layers_use_the_rotary_table_of_their_type(cfg):
    """Gemma3RotaryEmbedding keeps one table per layer type: sliding layers the local one."""
    conf = transformers.AutoConfig.for_model("gemma3_text", **{k: v for k, v in cfg.items() if k != "model_type"})
    shape = from_hf_config(cfg)
    for i, t in enumerate(conf.layer_types):
        kind = shape.layer_kind(i)
        assert (kind.rope, kind.sliding_window) == (("local", conf.sliding_window) if t == "sliding_attention"
                                                    else ("global", 0))


@pytest.mark.parametrize("text", [
    {},
    {"hidden_size": 2560, "intermediate_size": 10240, "num_hidden_layers": 34, "num_attention_heads": 8,
     "num_key_value_heads": 4, "sliding_window": 1024, "rope_scaling": {"factor": 8.0, "rope_type": "linear"}},
])
def test_a_multimodal_gemma3_config_is_read_as_its_text_model(text):
    """Published Gemma-3 4B/12B/27B configs are `gemma3` with a `text_config` holding only the
    keys that differ from Gemma3TextConfig's defaults: capacity prices that text model."""
    wrapped = {"model_type": "gemma3", "text_config": text, "vision_config": {"hidden_size": 1152}}
    conf = transformers.AutoConfig.for_model("gemma3", **{k: v for k, v in wrapped.items() if k != "model_type"})
    theirs = {k: v for k, v in conf.text_config.to_dict().items() if v is not None or k == "head_dim"}
    shape = from_hf_config(wrapped)
    assert shape == from_hf_config({**theirs, "model_type": "gemma3_text"}, name=shape.name)
    assert shape.model_type == "gemma3_text" and "text model" in shape.name
    with pytest.raises(ValueError, match="config.json: text_config.hidden_size"):
        from_hf_config({**wrapped, "text_config": {**text, "hidden_size": "big"}})


@pytest.mark.parametrize("cfg", [
    {"model_type": "gemma2"},
    {"model_type": "gemma2", "attn_logit_softcapping": None, "final_logit_softcapping": None},
    {"model_type": "gemma2", "attn_logit_softcapping": 20.0},
    {"model_type": "gemma3_text"},
    {"model_type": "gemma3_text", "final_logit_softcapping": 30.0, "attn_logit_softcapping": 50.0},
])
def test_soft_capping_is_read_as_the_model_applies_it(cfg):
    """An explicit null switches soft-capping off (the class default applies only to an
    absent key); Gemma 3 reads attn_logit_softcapping but never passes it to attention."""
    conf = transformers.AutoConfig.for_model(cfg["model_type"], **{k: v for k, v in cfg.items() if k != "model_type"})
    arch = from_hf_config(cfg).arch
    applied = conf.attn_logit_softcapping if cfg["model_type"] == "gemma2" else None
    assert arch.attention.logit_softcap == (applied or 0.0)
    assert arch.final_logit_softcap == (conf.final_logit_softcapping or 0.0)


@pytest.mark.parametrize("cfg", [
    {"model_type": "gemma2", "hidden_act": "relu"},
    {"model_type": "gemma2", "hidden_activation": "gelu"},
    {"model_type": "gemma3_text", "hidden_act": "silu", "hidden_activation": "gelu_pytorch_tanh"},
])
def test_gemma2_and_3_activation_is_hidden_activation(cfg):
    conf = transformers.AutoConfig.for_model(cfg["model_type"], **{k: v for k, v in cfg.items() if k != "model_type"})
    assert from_hf_config(cfg).arch.mlp.activation == {"gelu_pytorch_tanh": "gelu_tanh", "gelu": "gelu"}[
        conf.hidden_activation]


def test_phi3_head_dim_and_pad_token_are_read_as_transformers_builds_them():
    with torch_meta():
        model = transformers.AutoModelForCausalLM.from_config(transformers.AutoConfig.for_model(
            "phi3", hidden_size=256, num_attention_heads=8, head_dim=64, num_key_value_heads=2,
            num_hidden_layers=1, intermediate_size=128, vocab_size=500, pad_token_id=None))
    shape = from_hf_config({"model_type": "phi3", "hidden_size": 256, "num_attention_heads": 8, "head_dim": 64,
                            "num_key_value_heads": 2, "num_hidden_layers": 1, "intermediate_size": 128,
                            "vocab_size": 500, "pad_token_id": None})
    assert model.model.layers[0].self_attn.qkv_proj.out_features == shape.q_dim + 2 * shape.kv_dim == 768
    with pytest.raises(ValueError, match="config.json: pad_token_id: 32000 must be below vocab_size"):
        from_hf_config({"model_type": "phi3", "vocab_size": 500})


def torch_meta():
    import torch
    return torch.device("meta")
