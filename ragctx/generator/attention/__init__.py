"""The attention registry: the one place a variant is named.

Every entry has the same signature, ``fn(q, k, v, *, positions, valid, state, cfg, maps=None) -> out`` with
q [B, Hq, T, D], k, v [B, Hkv, T, D] for the T new tokens (RoPE applied), ``positions`` [B, T], ``valid`` [B, T]
bool or None (no padding), ``state`` the variant's cache object or None (a plain full-sequence forward, as in
training), ``cfg`` the :class:`~ragctx.generator.config.ModelConfig` and ``maps`` the layer's learned feature maps
(:class:`~ragctx.generator.attention.learned.FeatureMaps`, or None; only entries with a ``features`` option use
them). It returns [B, Hq, T, D]. The model makes
exactly one such call per layer. Each entry also says how to make its state and names its reference twin, so the
tests pick up a new entry without anyone remembering to.

An entry owns everything that is true of its variant: its other names (``aliases``: transformers'
``attn_implementation`` names ``eager`` for ``softmax`` and ``sdpa`` for ``flash``), the config field naming its
feature map (``features``), and whether it runs another entry's weights unchanged (``shares_weights_with``:
``flash`` computes ``softmax``'s function, so a softmax-trained model runs under it as it is; see
:func:`weights_of` and :func:`same_weights`). A user's own backend joins with :func:`register`, e.g. ``examples/my_attention.py``::

    register(AttentionBackend("my_softmax", my_softmax, kv_cache_state, reference))
    Generator.open("smollm2", attention="my_softmax")

The entry must match its ``reference``: tests/test_attention.py runs that example through the same equivalence
tests as the built-in entries, and through a model.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from ...errors import RagctxError
from .common import HybridState, KVCache, LinearState, RingBuffer
from .flash import flash_attention
from .hybrid import hybrid_attention
from .linear import linear_attention, n_features
from .reference import hybrid_reference, linear_quadratic, softmax_reference, window_reference
from .softmax import softmax_attention
from .window import window_attention

__all__ = ["ATTENTION", "AttentionBackend", "get_attention", "register", "unregister", "canonical_name", "weights_of",
           "same_weights", "kv_cache_state", "ring_state"]


@dataclass(frozen=True)
class AttentionBackend:
    """A registered attention implementation and what is true of it."""

    name: str
    fn: Callable[..., Any]  # the attention function (signature in the module docstring)
    make_state: Callable[..., Any]  # (cfg, batch, max_len, device, dtype) -> state for incremental decoding (fixed
    # buffers written in place: see attention.common)
    reference: Callable[..., Any]  # (q, k, v, valid, cfg, maps=None) -> float64 output from the definition
    features: str | None = None  # the ModelConfig field naming its kernel feature map (None: no feature map)
    aliases: tuple[str, ...] = ()  # other names that select it (transformers' names; a config keeps ``name``)
    shares_weights_with: str | None = None  # the entry whose function it computes, so whose weights it runs as they are
    # the ModelConfig fields it reads (``window``, ``feature_map``, ... : Generator.open(..., window=...), the CLI and
    # eval configs set them; ``hedgehog_dim`` comes with trained maps). They stay flat on ModelConfig, which every
    # checkpoint's config.json serializes whole and whose layers may run different entries (layer_attention); the
    # entry says which of them are its own.
    options: tuple[str, ...] = ()


def kv_cache_state(cfg, batch, max_len, device, dtype) -> KVCache:
    """``make_state`` of an entry that attends over every earlier key: a static KV cache of ``max_len`` slots."""
    return KVCache.empty(batch, cfg.n_kv_heads, max_len, cfg.head_dim, device, dtype)


def ring_state(cfg, batch, max_len, device, dtype) -> RingBuffer:
    """``make_state`` of a sliding window of ``cfg.window`` keys: a ring buffer."""
    # a sequence shorter than the window never evicts: max_len slots hold all of it (SmolLM2's window is its 8K
    # context, so a 512-token generation would otherwise attend over 8192 slots every step)
    return RingBuffer.empty(batch, cfg.n_kv_heads, min(cfg.window, max_len), cfg.head_dim, device, dtype)


def _sum_dtype(dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32  # running sums: fp32 (fp64 for fp64 models)


def _linear_state(cfg, batch, max_len, device, dtype):
    f = n_features(cfg.feature_map, cfg.head_dim, cfg.hedgehog_dim)
    return LinearState.empty(batch, cfg.n_kv_heads, f, cfg.head_dim, device, _sum_dtype(dtype))


def _hybrid_state(cfg, batch, max_len, device, dtype):
    f = n_features(cfg.hybrid_feature_map, cfg.head_dim, cfg.hedgehog_dim)
    return HybridState(ring_state(cfg, batch, max_len, device, dtype),
                       LinearState.empty(batch, cfg.n_kv_heads, f, cfg.head_dim, device, _sum_dtype(dtype)))


ATTENTION: dict[str, AttentionBackend] = {}  # name -> entry; aliases resolve through get_attention
_ALIASES: dict[str, str] = {}  # alias -> name
_BUILT_IN: set[str] = set()


def register(backend: AttentionBackend, *, replace: bool = False) -> AttentionBackend:
    """Adds ``backend`` to the registry under its name and aliases (a config, ``Generator.open(attention=...)``, an
    eval grid and ``ragctx ask --attention`` can then name it). A name or alias already taken is an error unless
    ``replace`` (a built-in entry is never replaced). Returns the backend."""
    if not isinstance(backend, AttentionBackend) or not callable(backend.fn) or not callable(backend.make_state) \
            or not callable(backend.reference):
        raise RagctxError("register() takes an AttentionBackend(name, fn, make_state, reference, ...) of callables")
    names = (backend.name, *backend.aliases)
    if not all(isinstance(n, str) and n and "," not in n for n in names):
        raise RagctxError(f"attention names must be non-empty strings without commas: {names!r}")
    for n in names:
        owner = _ALIASES.get(n, n if n in ATTENTION else None)
        if owner is not None and (owner in _BUILT_IN or not replace or owner != backend.name):
            raise RagctxError(f"attention '{n}' is taken by '{owner}'; choose another name"
                              + (" or pass replace=True" if owner == backend.name and owner not in _BUILT_IN else ""))
    shared = backend.shares_weights_with
    if shared is not None and (shared == backend.name or shared not in ATTENTION):
        raise RagctxError(f"attention '{backend.name}': shares_weights_with={shared!r} must name another registered "
                          f"entry ({', '.join(ATTENTION)})")
    if backend.name in ATTENTION:
        unregister(backend.name)
    ATTENTION[backend.name] = backend
    _ALIASES.update({a: backend.name for a in backend.aliases})
    return backend


def unregister(name: str) -> None:
    """Removes an entry added by :func:`register` (with its aliases); the built-in entries stay."""
    if name in _BUILT_IN:
        raise RagctxError(f"attention '{name}' is built in and cannot be removed")
    if name not in ATTENTION:
        raise RagctxError(f"attention '{name}' is not registered")
    for alias in ATTENTION.pop(name).aliases:
        _ALIASES.pop(alias, None)


def canonical_name(name: str) -> str:
    """The registry name ``name`` selects (an alias resolved; any other string as it is)."""
    return _ALIASES.get(name, name)


def get_attention(name: str) -> AttentionBackend:
    """The registered backend called ``name`` (or aliased so); an unknown name lists the valid ones."""
    try:
        return ATTENTION[canonical_name(name)]
    except (KeyError, TypeError):
        aliases = f" (aliases: {', '.join(f'{a} = {n}' for a, n in _ALIASES.items())})" if _ALIASES else ""
        raise RagctxError(f"unknown attention '{name}'; choose one of: {', '.join(ATTENTION)}{aliases}") from None


def weights_of(name: str) -> str:
    """The entry whose trained weights ``name`` runs: its ``shares_weights_with``, else itself (``flash`` ->
    ``softmax``): one trained model serves both."""
    backend = get_attention(name)
    return backend.shares_weights_with or backend.name


def same_weights(name: str) -> list[str]:
    """The entries that compute ``name``'s function over its weights (``softmax`` -> ``["flash"]``): where a model
    trained under ``name`` may run, or be trained, through a faster kernel."""
    return [b.name for b in ATTENTION.values() if b.shares_weights_with == canonical_name(name)]


def _softmax_twin(q, k, v, valid, cfg, maps=None):
    return softmax_reference(q, k, v, valid)


for _backend in [
    AttentionBackend("softmax", softmax_attention, kv_cache_state, _softmax_twin, aliases=("eager",)),
    AttentionBackend("flash", flash_attention, kv_cache_state, _softmax_twin, aliases=("sdpa",),
                     shares_weights_with="softmax"),
    AttentionBackend("linear", linear_attention, _linear_state,
                     lambda q, k, v, valid, cfg, maps=None: linear_quadratic(q, k, v, valid, cfg.feature_map, maps),
                     features="feature_map", options=("feature_map", "chunk_size", "hedgehog_dim")),
    AttentionBackend("sliding_window", window_attention, ring_state,
                     lambda q, k, v, valid, cfg, maps=None: window_reference(q, k, v, valid, cfg.window),
                     options=("window",)),
    AttentionBackend("hybrid", hybrid_attention, _hybrid_state,
                     lambda q, k, v, valid, cfg, maps=None: hybrid_reference(q, k, v, valid, cfg.window,
                                                                             cfg.hybrid_feature_map, maps),
                     features="hybrid_feature_map",
                     options=("window", "hybrid_feature_map", "chunk_size", "hedgehog_dim")),
]:
    register(_backend)
    _BUILT_IN.add(_backend.name)
del _backend
