"""``sliding_window``: softmax over the last ``window`` tokens (the query's own included).

Prefill of a fresh sequence on a GPU with no padding runs FlexAttention (compiled, block-sparse sliding-window
mask); elsewhere ``scaled_dot_product_attention`` with a boolean band mask computes the same function, in blocks
of W queries once the sequence is 2W long (O(T W) work and memory instead of a T x T mask). Decoding keeps a ring
buffer of the last ``window`` keys and values, written one slot per step in place, so its memory stays O(W) however
long the sequence grows and every step has the same shapes.
"""

from __future__ import annotations

from functools import lru_cache

import torch
from torch import Tensor

from .common import RingBuffer, all_valid, allowed, visible_keys, window_blocks
from .flash import sdpa

__all__ = ["window_attention", "flex_window", "use_flex"]


@lru_cache(maxsize=1)
def _compiled_flex():
    from torch.nn.attention.flex_attention import flex_attention

    return torch.compile(flex_attention)  # static first, then one dynamic-shape recompile serves every length


@lru_cache(maxsize=32)
def _window_block_mask(t: int, window: int, device: str):
    from torch.nn.attention.flex_attention import create_block_mask

    def sliding(b, h, q_idx, kv_idx):
        return (q_idx >= kv_idx) & (q_idx - kv_idx < window)

    # _compile: evaluate the mask block by block; otherwise a dense [T, T] mask is built (OOM at 128K on an H200)
    return create_block_mask(sliding, B=None, H=None, Q_LEN=t, KV_LEN=t, device=device, _compile=True)


def flex_window(q: Tensor, k: Tensor, v: Tensor, window: int, scale: float) -> tuple[Tensor, Tensor]:
    """FlexAttention with a causal sliding-window mask on a fresh sequence: (out, log-sum-exp [B, Hq, T])."""
    mask = _window_block_mask(q.shape[2], window, str(q.device))
    out, lse = _compiled_flex()(q, k, v, block_mask=mask, scale=scale, enable_gqa=q.shape[1] != k.shape[1],
                                return_lse=True)
    return out, lse.float()


def use_flex(q: Tensor, valid, ring: RingBuffer | None) -> bool:
    """FlexAttention serves a fresh sequence (no ring, or one nothing was appended to) without padding."""
    return q.is_cuda and valid is None and q.shape[2] > 1 and (ring is None or ring.fresh)


def window_attention(q, k, v, *, positions, valid, state, cfg, maps=None) -> Tensor:
    scale = cfg.head_dim**-0.5
    if use_flex(q, valid, state):
        out, _ = flex_window(q, k, v, cfg.window, scale)
        if state is not None:
            state.write(k, v, positions, all_valid(None, positions))
        return out
    padded = valid is not None  # without padding every query sees at least itself
    k, v, pos_k, valid_k = visible_keys(state, k, v, positions, all_valid(valid, positions))
    t, w = q.shape[2], cfg.window
    if t < 2 * w:
        return sdpa(q, k, v, allowed(positions, pos_k, valid_k, w), padded=padded)
    out = torch.empty_like(q)  # a long prefill: blocks of W queries against the keys their windows reach
    for qs, ks in window_blocks(t, k.shape[2], w):
        ok = allowed(positions[:, qs], pos_k[:, ks], valid_k[:, ks], w)
        out[:, :, qs] = sdpa(q[:, :, qs], k[:, :, ks], v[:, :, ks], ok, padded=padded)
    return out
