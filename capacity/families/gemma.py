"""Gemma (transformers/models/gemma: GemmaConfig, modeling_gemma.py): Llama-like, with its
own RMSNorm (all in fp32, scaled by 1 + w), embeddings scaled by sqrt(h), a head dim set
apart from h / a, tied embeddings."""

from __future__ import annotations

from dataclasses import replace

from ..architecture import Norm
from ..shape import ModelShape
from . import llama
from .config import ConfigReader, Family

MODEL_TYPE = "gemma"

# GemmaConfig's defaults for the keys read here.
DEFAULTS = {"vocab_size": 256000, "hidden_size": 3072, "intermediate_size": 24576,
            "num_hidden_layers": 28, "num_attention_heads": 16, "num_key_value_heads": 16,
            "head_dim": 256, "hidden_act": "gelu_pytorch_tanh", "max_position_embeddings": 8192,
            "attention_bias": False, "attention_dropout": 0.0, "tie_word_embeddings": True}

# GemmaRMSNorm: `output = self._norm(x.float()); output = output * (1.0 + self.weight.float())`.
NORM = Norm("rmsnorm", scale_in_fp32=True, weight_offset=True)


def read(c: ConfigReader, name: str) -> ModelShape:
    # GemmaConfig.__post_init__ reads the legacy hidden_act "gelu" as the tanh approximation;
    # the model uses hidden_act only (a `hidden_activation` key is not read by transformers 5).
    activation = c.activation("hidden_act", aliases={"gelu": "gelu_pytorch_tanh"})
    bias = c.boolean("attention_bias")
    arch = llama.architecture(activation, qkv_bias=bias, out_bias=bias, norm=NORM, embedding_scale=True)
    # The base model returns its cache only with use_cache on (Architecture.output_cache_needs_use_cache).
    arch = replace(arch, output_cache_needs_use_cache=True)
    return llama.read_llama_like(c, name, MODEL_TYPE, arch)


def write(s: ModelShape) -> dict:
    return {**llama.write_llama_like(s), "attention_bias": s.arch.attention.qkv_bias}


# peft's default LoRA targets for gemma (peft/utils/constants.py).
LORA_TARGETS = ('q_proj', 'v_proj')

FAMILY = Family(MODEL_TYPE, DEFAULTS, llama.KEYS, read, write, LORA_TARGETS)
