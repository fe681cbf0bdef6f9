"""The shape of a dense decoder-only Transformer, as a frozen dataclass.

One `ModelShape` holds everything the parameter count and the memory model need.
It is built from a Hugging Face `config.json` (see `hf_config.py`), from a preset
(`presets.py`), or by hand. Field names follow the usual symbols:
L layers, h hidden size, a attention heads, a_kv key/value heads, d head dim,
I MLP width, V vocabulary.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace

# The model families whose Hugging Face implementation the memory model describes.
MODEL_TYPES = ("gpt2", "opt", "llama", "mistral", "qwen2", "gemma", "gpt_neox", "phi")

ACTIVATIONS = ("silu", "gelu", "gelu_new", "gelu_tanh", "relu")

# Upper bound for any one size field: far above any real model, and low enough that
# products of a few such sizes stay exact in float64 and in Python ints.
MAX_DIM = 2**24


@dataclass(frozen=True)
class ModelShape:
    """A dense decoder-only Transformer (one of MODEL_TYPES)."""

    model_type: str
    num_layers: int                 # L
    hidden_size: int                # h
    num_heads: int                  # a
    num_kv_heads: int               # a_kv (grouped-query attention when < a)
    head_dim: int                   # d (usually h / a; Gemma sets it apart)
    intermediate_size: int          # I, the MLP width
    vocab_size: int                 # V
    gated_mlp: bool = True          # down(act(gate(x)) * up(x)) instead of down(act(up(x)))
    activation: str = "silu"
    norm: str = "rmsnorm"           # "rmsnorm" or "layernorm"
    norm_bias: bool = False         # LayerNorm with a bias
    qkv_bias: bool = False
    attn_out_bias: bool = False
    mlp_bias: bool = False
    lm_head_bias: bool = False
    tie_embeddings: bool = False
    learned_positions: int = 0      # rows of a learned position table (0: rotary)
    word_embed_dim: int = 0         # OPT's word_embed_proj_dim when it differs from h (0: same as h)
    parallel_residual: bool = False # attention and MLP both read the layer input (NeoX, Phi)
    norms_per_layer: int = 2        # Phi shares one LayerNorm between attention and MLP
    final_norm: bool = True
    pre_norm: bool = True           # OPT-350m normalises after each block
    rotary_fraction: float = 1.0    # share of the head dim that is rotated (NeoX, Phi)
    attn_dropout: float = 0.0
    resid_dropout: float = 0.0
    embd_dropout: float = 0.0
    name: str = ""

    def __post_init__(self) -> None:
        validate_shape(self)

    @property
    def q_dim(self) -> int:
        """a·d: width of the query (and attention output) projection."""
        return self.num_heads * self.head_dim

    @property
    def kv_dim(self) -> int:
        """a_kv·d: width of each of the key and value projections."""
        return self.num_kv_heads * self.head_dim

    @property
    def embed_dim(self) -> int:
        """Width of the token embedding (OPT-350m: 512 against h = 1024)."""
        return self.word_embed_dim or self.hidden_size

    def scaled(self, num_layers: int, hidden_size: int, name: str = "") -> "ModelShape":
        """The same family at another depth and width: heads keep their head dim, the MLP
        keeps its ratio I/h, the key/value heads keep their ratio a/a_kv."""
        heads = max(1, hidden_size // self.head_dim)
        group = max(1, self.num_heads // self.num_kv_heads)
        kv = max(1, heads // group)
        while heads % kv:
            kv -= 1
        inter = round(self.intermediate_size * hidden_size / self.hidden_size)
        return replace(
            self, num_layers=num_layers, hidden_size=heads * self.head_dim, num_heads=heads,
            num_kv_heads=kv, intermediate_size=max(1, inter), word_embed_dim=0,
            name=name or f"{self.model_type} L={num_layers} h={heads * self.head_dim}",
        )


def _check_int(name: str, value, low: int = 1, high: int = MAX_DIM) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name}: expected a whole number in [{low}, {high}], got {value!r}")
    if not low <= value <= high:
        raise ValueError(f"{name}: must be in [{low}, {high}], got {value}")


def _check_prob(name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value < 1.0:
        raise ValueError(f"{name}: must be a probability in [0, 1), got {value!r}")


def validate_shape(s: ModelShape) -> None:
    """Raise ValueError naming the first field that is out of range."""
    if s.model_type not in MODEL_TYPES:
        raise ValueError(f"model_type: {s.model_type!r} is not supported; supported: {', '.join(MODEL_TYPES)}")
    for name in ("num_layers", "hidden_size", "num_heads", "num_kv_heads", "head_dim",
                 "intermediate_size", "vocab_size"):
        _check_int(name, getattr(s, name))
    _check_int("learned_positions", s.learned_positions, 0)
    _check_int("word_embed_dim", s.word_embed_dim, 0)
    _check_int("norms_per_layer", s.norms_per_layer, 1, 2)
    if s.num_heads % s.num_kv_heads:
        raise ValueError(f"num_kv_heads: must divide num_heads ({s.num_heads}), got {s.num_kv_heads}")
    if s.activation not in ACTIVATIONS:
        raise ValueError(f"activation: {s.activation!r} is not supported; supported: {', '.join(ACTIVATIONS)}")
    if s.norm not in ("rmsnorm", "layernorm"):
        raise ValueError(f"norm: must be 'rmsnorm' or 'layernorm', got {s.norm!r}")
    if not isinstance(s.rotary_fraction, (int, float)) or not 0.0 <= s.rotary_fraction <= 1.0:
        raise ValueError(f"rotary_fraction: must be in [0, 1], got {s.rotary_fraction!r}")
    for name in ("attn_dropout", "resid_dropout", "embd_dropout"):
        _check_prob(name, getattr(s, name))


def shape_fields() -> list[str]:
    return [f.name for f in fields(ModelShape)]
