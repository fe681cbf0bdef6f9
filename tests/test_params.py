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
