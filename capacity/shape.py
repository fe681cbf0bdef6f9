"""The shape of a decoder-only Transformer, as a frozen dataclass.

One `ModelShape` holds everything the parameter count and the memory model need: the
sizes (below), the family's mechanism (`arch`, an `Architecture`: architecture.py) and the
kinds of its layers. It is built from a Hugging Face `config.json` by the model's family
(capacity/families/, through hf_config.py), from a preset (presets.py), or by hand.
Size names follow the usual symbols: L layers, h hidden size, a attention heads, a_kv
key/value heads, d head dim, I MLP width, V vocabulary.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from functools import cached_property

from .architecture import (Architecture, LayerKind, Moe, unmodelled_features, validate_architecture,
                           validate_layer_kinds, validate_moe)

# Upper bound for any one size field: far above any real model, and low enough that
# products of a few such sizes stay exact in float64 and in Python ints.
MAX_DIM = 2**24

# Longest repeating pattern of layer kinds. Real models repeat a few kinds (Gemma 2: 2,
# Gemma 3: 6) or list one per layer (at most a few hundred). The backward's closed form
# costs up to 4 layer evaluations per position in the pattern when kinds cost differently
# (some 30 ms at this length), and nothing more when they cost the same; never more with L.
MAX_LAYER_PATTERN = 2**10


class ShapeError(ValueError):
    """A shape field out of range; `field` names it, and `problem` may name other fields
    as {field} placeholders, so that a config reader can name its keys instead (`named`)."""

    def __init__(self, field: str, problem: str):
        self.field = field
        self.problem = problem
        super().__init__(self.named({}))

    def named(self, keys) -> str:
        """The message, each field named as `keys` maps it (a field not in keys by itself)."""
        names = _Names(keys)
        return f"{names[self.field]}: {self.problem.format_map(names)}"


def _literal(text: str) -> str:
    """Text to put in a ShapeError's problem as it is (braces are placeholders there)."""
    return text.replace("{", "{{").replace("}", "}}")


class _Names(dict):
    def __init__(self, keys):
        super().__init__()
        self.keys_ = keys

    def __missing__(self, field: str) -> str:
        return self.keys_.get(field, field)


def _nearest_divisor(n: int, target: float) -> int:
    """The divisor of n nearest to target (the smaller on a tie), at least 1."""
    best = max(1, min(n, round(target)))
    for delta in range(n):
        for k in (best - delta, best + delta):
            if 1 <= k <= n and n % k == 0:
                return k
    return 1


@dataclass(frozen=True)
class ModelShape:
    """A decoder-only Transformer of one family (`model_type`, see capacity.families)."""

    model_type: str
    num_layers: int                 # L
    hidden_size: int                # h
    num_heads: int                  # a
    num_kv_heads: int               # a_kv (grouped-query attention when < a)
    head_dim: int                   # d (usually h / a; Gemma sets it apart)
    intermediate_size: int          # I, the MLP width
    vocab_size: int                 # V
    arch: Architecture              # how the family computes (architecture.py)
    max_positions: int              # the config's context limit (max_position_embeddings, n_positions)
    layers: tuple = (LayerKind(),)  # kinds of the layers, repeating: layer i is layers[i % len(layers)]
    moe: Moe | None = None          # the experts' sizes, for layers of a kind with moe=True
    word_embed_dim: int = 0         # OPT's word_embed_proj_dim when it differs from h (0: same as h)
    tie_embeddings: bool = False
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

    @property
    def position_table_rows(self) -> int:
        """Rows of a learned position table (OPT adds 2 offset rows); 0 with rotary positions."""
        if self.arch.positions != "learned":
            return 0
        return self.max_positions + self.arch.position_offset

    def layer_kind(self, i: int) -> LayerKind:
        """The kind of layer i (0 is the first, next to the embedding)."""
        return self.layers[i % len(self.layers)]

    def layers_of_kind(self, kind: LayerKind, first: int = 0, last: int | None = None) -> int:
        """How many of layers first..last-1 (default: all) are of `kind`; closed form in L."""
        last = self.num_layers if last is None else last
        return _count_in_pattern(self.layers, kind, last) - _count_in_pattern(self.layers, kind, first)

    def layer_counts(self) -> dict[LayerKind, int]:
        """Each kind that occurs, with its number of layers."""
        return dict(self._layer_counts)

    @cached_property
    def _layer_counts(self) -> tuple:
        counts = ((k, self.layers_of_kind(k)) for k in dict.fromkeys(self.layers))
        return tuple((k, n) for k, n in counts if n)

    def scaled(self, num_layers: int, hidden_size: int, name: str = "") -> "ModelShape":
        """The same family at another depth and width: heads keep their head dim, the MLP
        (and the experts) keep their ratio I/h, the key/value heads keep their ratio a/a_kv, the query width
        keeps its ratio a·d/h (Qwen3-0.6B: 2) as nearly as a head count that divides h allows
        (transformers' configs refuse another: LlamaConfig, Gemma2Config.validate_architecture),
        the layers keep their pattern of kinds (the first num_layers of it, when fewer)."""
        heads = _nearest_divisor(hidden_size, self.num_heads * hidden_size / self.hidden_size)
        group = max(1, self.num_heads // self.num_kv_heads)
        kv = max(1, heads // group)
        while heads % kv:
            kv -= 1
        inter = round(self.intermediate_size * hidden_size / self.hidden_size)
        moe = self.moe if self.moe is None else replace(
            self.moe, expert_size=max(1, round(self.moe.expert_size * hidden_size / self.hidden_size)))
        layers = self.layers if num_layers >= len(self.layers) else repeating_pattern(list(self.layers[:num_layers]))
        return replace(
            self, num_layers=num_layers, hidden_size=hidden_size, num_heads=heads,
            num_kv_heads=kv, intermediate_size=max(1, inter), moe=moe, word_embed_dim=0, layers=layers,
            name=name or f"{self.model_type} L={num_layers} h={hidden_size}",
        )


def _count_in_pattern(pattern: tuple, kind: LayerKind, n: int) -> int:
    """Occurrences of `kind` among the first n layers of a repeating pattern."""
    period = len(pattern)
    whole, rest = divmod(n, period)
    return whole * pattern.count(kind) + pattern[:rest].count(kind)


def repeating_pattern(kinds: list) -> tuple:
    """The shortest pattern whose repetition gives `kinds` (a config's per-layer list).
    A period p means kinds[i] == kinds[i - p] for every i >= p, so the shortest one is n
    less the longest proper prefix that is also a suffix (Knuth-Morris-Pratt's prefix
    function): linear in n."""
    n = len(kinds)
    border = [0] * n
    for i in range(1, n):
        k = border[i - 1]
        while k and kinds[i] != kinds[k]:
            k = border[k - 1]
        border[i] = k + 1 if kinds[i] == kinds[k] else 0
    return tuple(kinds[:n - border[-1]]) if n else ()


def _check_int(name: str, value, low: int = 1, high: int = MAX_DIM) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ShapeError(name, f"expected a whole number in [{low}, {high}], got {type(value).__name__}")
    if not low <= value <= high:
        shown = value if abs(value) < 10**15 else f"a number of about {int(value.bit_length() * 0.30103) + 1} digits"
        raise ShapeError(name, f"must be in [{low}, {high}], got {shown}")


def _check_prob(name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value < 1.0:
        raise ShapeError(name, f"must be a probability in [0, 1), got {_literal(repr(value))}")


def validate_shape(s: ModelShape) -> None:
    """Raise ShapeError (a ValueError) naming the first field that is out of range, or
    ValueError for a description that uses a mechanism the memory model does not price."""
    from .families import MODEL_TYPES   # the registry imports this module
    if not isinstance(s.model_type, str) or s.model_type not in MODEL_TYPES:
        raise ShapeError("model_type", f"{_literal(repr(str(s.model_type)[:40]))} is not supported; "
                                       f"supported: {', '.join(MODEL_TYPES)}")
    for name in ("num_layers", "hidden_size", "num_heads", "num_kv_heads", "head_dim",
                 "intermediate_size", "vocab_size", "max_positions"):
        _check_int(name, getattr(s, name))
    _check_int("word_embed_dim", s.word_embed_dim, 0)
    if s.num_heads % s.num_kv_heads:
        raise ShapeError("num_kv_heads", f"must divide {{num_heads}} ({s.num_heads}), got {s.num_kv_heads}")
    if not isinstance(s.arch, Architecture):
        raise ShapeError("arch", f"expected an Architecture, got {type(s.arch).__name__}")
    try:
        validate_architecture(s.arch)
        validate_layer_kinds(s.layers)
    except ValueError as err:
        field, _, problem = str(err).partition(": ")
        raise ShapeError(field, _literal(problem)) from None
    if len(s.layers) > MAX_LAYER_PATTERN:
        raise ShapeError("layers", f"a pattern of at most {MAX_LAYER_PATTERN} layer kinds, got {len(s.layers)}")
    if s.moe is not None and not isinstance(s.moe, Moe):
        raise ShapeError("moe", f"expected a Moe or None, got {type(s.moe).__name__}")
    if s.moe is None and any(k.moe for k in s.layers):
        raise ShapeError("moe", "layers of a mixture-of-experts kind need the experts' sizes (moe)")
    if s.moe is not None:
        try:
            validate_moe(s.moe, MAX_DIM)
        except ValueError as err:
            field, _, problem = str(err).partition(": ")
            raise ShapeError(field, _literal(problem)) from None
    if not isinstance(s.tie_embeddings, bool):
        raise ShapeError("tie_embeddings", f"expected true or false, got {type(s.tie_embeddings).__name__}")
    for name in ("attn_dropout", "resid_dropout", "embd_dropout"):
        _check_prob(name, getattr(s, name))
    missing = unmodelled_features(s.arch, s.layers, s.moe)
    if missing:
        raise ValueError(f"{s.model_type}: the memory model does not price {', '.join(missing)} yet")


def __getattr__(name: str):
    """MODEL_TYPES lived here before the families (capacity.families.MODEL_TYPES); kept for
    callers of the old location (pages/_ui.py)."""
    if name == "MODEL_TYPES":
        from .families import MODEL_TYPES
        return MODEL_TYPES
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def shape_fields() -> list[str]:
    return [f.name for f in fields(ModelShape)]
