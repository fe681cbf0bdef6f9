"""Mixtral (transformers/models/mixtral: MixtralConfig, modeling_mixtral.py): Mistral's
decoder layer with the MLP replaced by a sparse mixture of experts (MixtralSparseMoeBlock):
a router over `num_local_experts` experts, `num_experts_per_tok` of them per token, each a
gated MLP of width `intermediate_size`. Its router always renormalises the top-k weights and
keeps them in fp32 (MixtralTopKRouter.forward returns the fp32 softmax values); in training
`router_jitter_noise` > 0 multiplies the router's input by uniform noise, in place."""

from __future__ import annotations

from dataclasses import replace

from ..architecture import LayerKind, Moe
from ..shape import ModelShape
from . import llama
from .config import ConfigReader, Family, first_given

MODEL_TYPE = "mixtral"

# MixtralConfig's defaults for the keys read here.
DEFAULTS = {"vocab_size": 32000, "hidden_size": 4096, "intermediate_size": 14336,
            "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 8,
            "head_dim": None, "hidden_act": "silu", "max_position_embeddings": 4096 * 32,
            "sliding_window": None, "attention_dropout": 0.0, "tie_word_embeddings": False,
            "num_local_experts": 8, "num_experts": 8, "num_experts_per_tok": 2,
            "output_router_logits": False, "router_jitter_noise": 0.0}

KEYS = {**llama.KEYS, "moe.experts": "num_local_experts", "moe.top_k": "num_experts_per_tok",
        "moe.expert_size": "intermediate_size"}


def read(c: ConfigReader, name: str) -> ModelShape:
    window = c.optional_integer("sliding_window") or 0
    experts = c.integer(first_given(c, "num_experts", "num_local_experts"))
    moe = Moe(experts=experts, top_k=c.integer("num_experts_per_tok", high=experts),
              expert_size=c.integer("intermediate_size"), router_aux_loss=c.boolean("output_router_logits"),
              normalize_top_k=True, weights_fp32=True,
              router_jitter=c.number("router_jitter_noise", 0.0, 1.0) > 0)
    shape = llama.read_llama_like(c, name, MODEL_TYPE, llama.architecture(c.activation("hidden_act")),
                                  windows=[window])
    return replace(shape, moe=moe, layers=tuple(LayerKind(sliding_window=k.sliding_window, moe=True)
                                                      for k in shape.layers))


def write(s: ModelShape) -> dict:
    return {**llama.write_llama_like(s), "sliding_window": s.layers[0].sliding_window or None,
            "intermediate_size": s.moe.expert_size, "num_local_experts": s.moe.experts,
            "num_experts_per_tok": s.moe.top_k, "output_router_logits": s.moe.router_aux_loss,
            "router_jitter_noise": JITTER if s.moe.router_jitter else 0.0}


# The noise written for a shape with router jitter (its size plays no part in memory).
JITTER = 0.01

# peft's default LoRA targets for the model type (peft/utils/constants.py); capacity refuses
# PEFT on a mixture of experts for now (trainable.check_peft).
LORA_TARGETS = ('q_proj', 'v_proj')

FAMILY = Family(MODEL_TYPE, DEFAULTS, KEYS, read, write, LORA_TARGETS)
