"""One commented config for the decoder, with presets.

Tensor layout, used everywhere in ``ragctx.generator``: activations ``[B, T, C]``; attention inputs
``q [B, Hq, T, D]``, ``k, v [B, Hkv, T, D]`` (heads first, as ``scaled_dot_product_attention`` takes them).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

from ..errors import RagctxError

__all__ = ["ModelConfig", "PRESETS", "OPTIONS", "ACTIVATIONS", "expand_layers"]

ACTIVATIONS = ("silu", "gelu_tanh")  # the gated FFN's gate function, by name


@dataclass
class ModelConfig:
    """A Llama-style decoder. Derived fields are filled in ``__post_init__``."""

    vocab_size: int = 256 + 3  # byte-level: 256 bytes + <bos>, <eos>, <pad>
    dim: int = 256  # model width C
    n_layers: int = 4  # decoder blocks
    n_heads: int = 8  # query heads Hq
    n_kv_heads: int | None = None  # key/value heads Hkv (grouped-query attention); None = n_heads
    head_dim: int | None = None  # D; None = dim // n_heads
    hidden_dim: int | None = None  # SwiGLU width; None = about 8/3 * dim, rounded up to multiple_of
    multiple_of: int = 64  # rounding of hidden_dim (as in Llama)
    norm_eps: float = 1e-5  # RMSNorm epsilon
    rope_base: float | None = 10000.0  # RoPE base (theta); None = no positional encoding
    # RoPE scaling as Hugging Face's config writes it ({"rope_type": "linear" | "llama3" | "yarn", "factor", ...}) or
    # llama.cpp's per-frequency divisors ({"rope_type": "factors", "factors": [...]}); None = plain RoPE (see rope.py)
    rope_scaling: dict[str, Any] | None = None
    max_seq_len: int = 4096  # longest sequence a cache is allocated for by default
    tie_embeddings: bool = True  # output projection shares the token embedding matrix
    attention_bias: bool = False  # biases on q/k/v projections (Qwen2 has them)
    # -- Gemma 3's differences from Llama (the defaults are Llama's) --
    activation: str = "silu"  # the gated FFN's gate: "silu" (SwiGLU, Llama) or "gelu_tanh" (GeGLU, Gemma)
    qk_norm: bool = False  # RMSNorm over each head's q and k before RoPE (Gemma 3)
    norm_layout: str = "pre"  # "pre": a norm before attention and FFN (Llama); "sandwich": also after each (Gemma)
    embed_scale: float | None = None  # token embeddings multiplied by this (Gemma: sqrt(dim)); None = 1
    # local/global layers: of every `global_every` layers the last is global (runs `attention`, RoPE base
    # rope_base) and the others local (sliding_window of `window` keys, RoPE base rope_local_base): Gemma 3's 5:1
    # pattern is 6. None: every layer is global. layer_attention, when set, overrides the attention (not the RoPE)
    global_every: int | None = None
    rope_local_base: float | None = None  # RoPE base of local layers; None = rope_base
    attention: str = "softmax"  # registry name of the attention implementation (ragctx.generator.attention; an
    # alias such as "sdpa" is stored as its entry's name)
    window: int = 512  # sliding_window and hybrid: keys each query sees with softmax (itself included)
    feature_map: str = "elu"  # linear: kernel feature map ("elu" = elu+1, "taylor" = Based's 2nd-order Taylor)
    hybrid_feature_map: str = "taylor"  # hybrid: feature map for keys beyond the window (approximates exp)
    chunk_size: int = 64  # linear / hybrid: chunk length of the chunkwise-parallel prefill
    hedgehog_dim: int = 64  # learned ("hedgehog") feature maps: projections per head (2x as many features)
    # per-layer attention: one registry name per layer (None: every layer runs `attention`); set_options takes a
    # comma-separated pattern that repeats over the layers, e.g. "softmax,linear,linear,linear"
    layer_attention: list[str] | None = None

    def __post_init__(self) -> None:
        self.n_kv_heads = self.n_kv_heads or self.n_heads
        self.head_dim = self.head_dim or self.dim // self.n_heads
        if self.hidden_dim is None:
            hidden = int(2 * (4 * self.dim) / 3)
            self.hidden_dim = self.multiple_of * ((hidden + self.multiple_of - 1) // self.multiple_of)
        if self.n_heads % self.n_kv_heads:
            raise RagctxError(f"n_heads={self.n_heads} must be a multiple of n_kv_heads={self.n_kv_heads}")
        if self.window < 1 or self.chunk_size < 1:
            raise RagctxError("window and chunk_size must be positive")
        if self.rope_scaling is not None:
            from .rope import check_scaling

            self.rope_scaling = check_scaling(self.rope_scaling, self.head_dim)
        if self.layer_attention is not None:
            self.layer_attention = expand_layers(self.layer_attention, self.n_layers)
        from .attention import canonical_name

        self.attention = canonical_name(self.attention)  # an alias (eager, sdpa) is stored as the entry's name
        for key, allowed in (("activation", ACTIVATIONS), ("norm_layout", ("pre", "sandwich"))):
            if getattr(self, key) not in allowed:
                raise RagctxError(f"{key}={getattr(self, key)!r} is unknown; choose one of {', '.join(allowed)}")
        if self.global_every is not None and self.global_every < 1:
            raise RagctxError(f"global_every={self.global_every}: pass a positive layer count or None")

    def is_local(self, layer: int) -> bool:
        """Whether layer ``layer`` is a local (sliding-window) layer of a local/global model (``global_every``)."""
        return bool(self.global_every) and (layer + 1) % self.global_every != 0

    def attention_of(self, layer: int) -> str:
        """The registry name layer ``layer`` runs: ``layer_attention``'s entry when set, else sliding_window in a
        local layer, else ``attention``."""
        if self.layer_attention:
            return self.layer_attention[layer]
        return "sliding_window" if self.is_local(layer) else self.attention

    @property
    def attentions(self) -> list[str]:
        """Each layer's attention, in order."""
        return [self.attention_of(i) for i in range(self.n_layers)]

    def set_options(self, **options: Any) -> ModelConfig:
        """Changes attention options in place (``window``, ``feature_map``, ``hybrid_feature_map``, ``chunk_size``,
        ``max_seq_len``; None leaves one as it is) and returns self: every layer holds this config object, so a
        change reaches all of them. Any other key is an error naming the ones allowed."""
        bad = sorted(set(options) - set(OPTIONS))
        if bad:
            raise RagctxError(f"unknown generator option(s) {bad}; settable: {', '.join(OPTIONS)}")
        for key, value in options.items():
            if value is None:
                continue
            if key in ("window", "chunk_size", "max_seq_len") and (not isinstance(value, int) or value < 1):
                raise RagctxError(f"{key}={value!r}: pass a positive number of tokens")
            if key == "layer_attention":
                value = expand_layers(value, self.n_layers) or None
            setattr(self, key, value)
        return self

    @classmethod
    def from_name(cls, name: str, **overrides: Any) -> ModelConfig:
        if name not in PRESETS:
            raise RagctxError(f"unknown model preset '{name}'; choose one of {', '.join(sorted(PRESETS))}")
        return cls(**{**PRESETS[name], **overrides})

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise RagctxError(f"unknown model config keys {sorted(unknown)}; this ragctx knows {sorted(known)}")
        return cls(**data)

    @property
    def n_params(self) -> int:
        """Parameter count (embeddings counted once when tied)."""
        c = self
        attn = c.dim * c.head_dim * (c.n_heads * 2 + c.n_kv_heads * 2) + (2 * c.head_dim if c.qk_norm else 0)
        mlp = 3 * c.dim * c.hidden_dim
        emb = c.vocab_size * c.dim * (1 if c.tie_embeddings else 2)
        norms = (4 if c.norm_layout == "sandwich" else 2) * c.dim
        return c.n_layers * (attn + mlp + norms) + c.dim + emb


# what a user may set on a loaded checkpoint (from_pretrained, the CLI's --window, eval configs' "options")
OPTIONS = ("window", "feature_map", "hybrid_feature_map", "chunk_size", "max_seq_len", "layer_attention")


def expand_layers(pattern: str | list[str], n_layers: int) -> list[str]:
    """One attention name per layer from a list or a comma-separated ``pattern`` that repeats to fill the
    ``n_layers`` layers ("softmax,linear,linear,linear": softmax in layers 0, 4, 8, ...). Names are checked against
    the registry; a list longer than the model, or empty, is an error."""
    from .attention import get_attention

    names = [p.strip() for p in pattern.split(",")] if isinstance(pattern, str) else list(pattern)
    if not names or len(names) > n_layers or not all(isinstance(n, str) and n for n in names):
        raise RagctxError(f"layer_attention={pattern!r}: give 1 to {n_layers} comma-separated attention names "
                          "(the pattern repeats over the layers)")
    names = [get_attention(name).name for name in names]  # checked; aliases stored as the entry's name
    return [names[i % len(names)] for i in range(n_layers)]

PRESETS: dict[str, dict[str, Any]] = {
    "tiny": dict(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, max_seq_len=1024, window=64, chunk_size=16),
    "small": dict(dim=384, n_layers=6, n_heads=6, n_kv_heads=2, head_dim=64, max_seq_len=20480, window=256),
    # the built-in trained models: ~3.6M parameters, 7.2 MB in bf16 (the package ships each under 8 MB); the
    # window covers RAG-sized inputs (<= 1K bytes) whole, so every variant can answer those
    "builtin": dict(dim=256, n_layers=5, n_heads=8, n_kv_heads=2, head_dim=32, max_seq_len=20480, window=1024,
                    chunk_size=64),
    # ~100M parameters: the scaling benchmark's model (byte vocabulary, so nearly all weights are in blocks)
    "base100m": dict(dim=768, n_layers=14, n_heads=12, n_kv_heads=4, head_dim=64, max_seq_len=131072,
                     window=1024, chunk_size=64, tie_embeddings=True),
}
