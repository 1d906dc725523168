"""The attention registry: the one place a variant is named.

Every entry has the same signature, ``fn(q, k, v, *, positions, valid, state, cfg, maps=None) -> out`` with
q [B, Hq, T, D], k, v [B, Hkv, T, D] for the T new tokens (RoPE applied), ``positions`` [B, T], ``valid`` [B, T]
bool or None (no padding), ``state`` the variant's cache object or None (a plain full-sequence forward, as in
training), ``cfg`` the :class:`~ragctx.generator.config.ModelConfig` and ``maps`` the layer's learned feature maps
(:class:`~ragctx.generator.attention.learned.FeatureMaps`, or None; only entries with a ``features`` option use
them). It returns [B, Hq, T, D]. The model makes
exactly one such call per layer. Each entry also says how to make its state and names its reference twin, so the
tests pick up a new entry without anyone remembering to.
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

__all__ = ["ATTENTION", "AttentionBackend", "get_attention", "attention_names"]


@dataclass(frozen=True)
class AttentionBackend:
    """A registered attention implementation."""

    name: str
    fn: Callable[..., Any]  # the attention function (signature in the module docstring)
    make_state: Callable[..., Any]  # (cfg, batch, max_len, device, dtype) -> state for incremental decoding (fixed
    # buffers written in place: see attention.common)
    reference: Callable[..., Any]  # (q, k, v, valid, cfg, maps=None) -> float64 output from the definition
    exact: bool  # equals full causal softmax attention (up to rounding)
    summary: str
    features: str | None = None  # the ModelConfig field naming its kernel feature map (None: no feature map)


def _kv_cache(cfg, batch, max_len, device, dtype):
    return KVCache.empty(batch, cfg.n_kv_heads, max_len, cfg.head_dim, device, dtype)


def _ring(cfg, batch, max_len, device, dtype):
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
    return HybridState(_ring(cfg, batch, max_len, device, dtype),
                       LinearState.empty(batch, cfg.n_kv_heads, f, cfg.head_dim, device, _sum_dtype(dtype)))


ATTENTION: dict[str, AttentionBackend] = {
    b.name: b
    for b in [
        AttentionBackend("softmax", softmax_attention, _kv_cache,
                         lambda q, k, v, valid, cfg, maps=None: softmax_reference(q, k, v, valid),
                         True, "reference: N x N scores in fp32, O(N^2) memory"),
        AttentionBackend("flash", flash_attention, _kv_cache,
                         lambda q, k, v, valid, cfg, maps=None: softmax_reference(q, k, v, valid),
                         True, "scaled_dot_product_attention (cuDNN / FlashAttention kernels), O(N) memory"),
        AttentionBackend("linear", linear_attention, _linear_state,
                         lambda q, k, v, valid, cfg, maps=None: linear_quadratic(q, k, v, valid, cfg.feature_map, maps),
                         False, "causal linear attention, chunkwise prefill, O(1)-per-token decode", "feature_map"),
        AttentionBackend("sliding_window", window_attention, _ring,
                         lambda q, k, v, valid, cfg, maps=None: window_reference(q, k, v, valid, cfg.window),
                         False, "softmax over the last W tokens, ring-buffer cache"),
        AttentionBackend("hybrid", hybrid_attention, _hybrid_state,
                         lambda q, k, v, valid, cfg, maps=None: hybrid_reference(q, k, v, valid, cfg.window,
                                                                                 cfg.hybrid_feature_map, maps),
                         False, "sliding-window softmax + linear attention over older keys (Based, LoLCATs)",
                         "hybrid_feature_map"),
    ]
}


def attention_names() -> list[str]:
    return list(ATTENTION)


def get_attention(name: str) -> AttentionBackend:
    """The registered backend called ``name``; an unknown name lists the valid ones."""
    try:
        return ATTENTION[name]
    except KeyError:
        raise RagctxError(f"unknown attention '{name}'; choose one of: {', '.join(ATTENTION)}") from None
