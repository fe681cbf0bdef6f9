"""Any JSON object read as a config.json gives a ModelShape or a one-line ValueError, never
another exception (hypothesis: arbitrary objects, and mutations of the presets' configs)."""

import json
from dataclasses import replace

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import capacity as cap
from capacity.families import FAMILIES, MODEL_TYPES

# Every key some family reads, so that generated objects reach the readers.
KNOWN_KEYS = sorted({key for fam in FAMILIES.values() for key in fam.defaults}
                    | {"model_type", "rope_parameters", "rope_scaling", "rotary_pct", "partial_rotary_factor",
                       "layer_types", "quantization_config", "_name_or_path", "head_dim", "max_window_layers",
                       "no_rope_layers"})

scalars = (st.none() | st.booleans() | st.integers() | st.integers(-2**70, 2**70)
           | st.floats() | st.text(max_size=12) | st.sampled_from(["silu", "gelu", "relu", "full_attention",
                                                                     "sliding_attention", *MODEL_TYPES]))
json_values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4)
                           | st.dictionaries(st.text(max_size=8) | st.sampled_from(KNOWN_KEYS), inner, max_size=4),
                           max_leaves=12)
keys = st.sampled_from(KNOWN_KEYS) | st.text(max_size=10)


def read_cleanly(cfg) -> None:
    """from_hf_config of cfg, and of its JSON text, is a shape (which `estimate` takes or
    refuses with a ValueError) or a short one-line ValueError."""
    try:
        shape = cap.from_hf_config(cfg)
    except ValueError as err:
        message = str(err)
        assert message and "\n" not in message and len(message) < 400, message
    else:
        try:
            cap.estimate(shape, cap.Scenario(method="bp", seq=8))
            cap.estimate(shape, cap.Scenario(method="mezo", seq=8))
        except ValueError as err:
            assert "\n" not in str(err)
    try:
        text = json.dumps(cfg)
    except (ValueError, OverflowError):
        return
    try:
        cap.parse_hf_config_text(text)
    except ValueError as err:
        assert "\n" not in str(err) and len(str(err)) < 400


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(keys, json_values, max_size=10), st.sampled_from(MODEL_TYPES) | json_values)
def test_any_json_object_reads_to_a_shape_or_a_value_error(cfg, model_type):
    read_cleanly({**cfg, "model_type": model_type})


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(cap.preset_names()), st.dictionaries(keys, json_values, min_size=1, max_size=4),
       st.lists(keys, max_size=3))
def test_mutated_preset_configs_read_to_a_shape_or_a_value_error(name, changes, removed):
    cfg = {**cap.preset_config(name), **changes}
    for key in removed:
        cfg.pop(key, None)
    read_cleanly(cfg)


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(cap.preset_names()), st.sampled_from(KNOWN_KEYS),
       st.sampled_from([[1], {}, ["silu"], {"a": 1}, "7", -1, 0, 2**100, 10**400, 1e308, -1e308, 0.5, True]))
def test_a_wrong_value_is_named_by_its_key(name, key, value):
    """Setting one key the preset's family reads to a wrong value is refused naming that key
    (or read, when the value is one the key takes)."""
    fam = FAMILIES[cap.preset_config(name)["model_type"]]
    cfg = {**cap.preset_config(name), key: value}
    try:
        shape = cap.from_hf_config(cfg)
    except ValueError as err:
        if key in fam.defaults or key == "model_type":
            assert key in str(err) or "must divide" in str(err) or "does not price" in str(err), str(err)
    else:
        assert replace(shape) == shape
