"""``flash``: fused attention through ``torch.nn.functional.scaled_dot_product_attention``.

PyTorch picks the kernel: on an H100/H200 its default is cuDNN's fused attention, about 2x FlashAttention-2 there
(``../shared/design/ANCHORS.md``; re-measured in eval/reports). No [T, Tk] matrix is stored: O(N) memory. It runs
on CPU too. The plain causal case (no cache, no padding) passes ``is_causal`` so the fastest kernels apply; other
cases pass a boolean mask built from positions, which keeps it exactly equal to ``softmax``.

cuDNN builds an execution plan per sequence length, ~80 ms the first time it meets one (``eval/probe_gpu.py
flash-shapes`` on an H200: 85-95 ms for the first prefill of each length, 5 ms for the second). Question answering
sees a new length with nearly every prompt, so causal prefill on a GPU rounds the length up to one of 8 buckets
per octave (at most 12.5% padding, none at powers of two): right padding changes no causal output, and the plans
of a few dozen lengths serve every prompt.
"""

from __future__ import annotations

import torch.nn.functional as F

from .common import KVCache, all_valid, allowed

__all__ = ["flash_attention", "sdpa", "causal", "bucket"]


def flash_attention(q, k, v, *, positions, valid, state, cfg, maps=None):
    if state is None and valid is None:
        return causal(q, k, v)
    padded = valid is not None  # known without looking at the tensor: no GPU sync on the decode path
    valid = all_valid(valid, positions)
    if state is not None:
        assert isinstance(state, KVCache)
        fresh, k_new, v_new = state.length == 0, k, v
        state.padded |= padded
        padded = state.padded
        k, v, pos_k, valid_k = state.add(k, v, positions, valid)
        if not padded and fresh:
            return causal(q, k_new, v_new)  # prefill into an empty cache: no mask, fused kernels
        if not padded and q.shape[2] == 1:
            return _decode(q, k, v)  # one new token, no padding anywhere: every cached key is visible
    else:
        pos_k, valid_k = positions, valid
    return sdpa(q, k, v, allowed(positions, pos_k, valid_k), padded=padded)


def bucket(t: int) -> int:
    """``t`` rounded up to a multiple of max(64, 2^(floor(log2 t) - 3)): 8 lengths per octave from 512 up."""
    step = max(64, 1 << max(0, t.bit_length() - 4))
    return -(-t // step) * step


def causal(q, k, v, *, bucketed: bool | None = None):
    """Causal attention of a fresh sequence (queries and keys alike, no padding). ``bucketed`` (default: on a GPU)
    pads the length to its :func:`bucket` (see the module docstring) and cuts the padded rows off again."""
    t = q.shape[2]
    n = bucket(t) if (q.is_cuda if bucketed is None else bucketed) else t
    if n == t:
        return sdpa(q, k, v, is_causal=True)
    pad = (0, 0, 0, n - t)
    return sdpa(F.pad(q, pad), F.pad(k, pad), F.pad(v, pad), is_causal=True)[:, :, :t]


def _decode(q, k, v):
    """One query against the cache. cuDNN plans per shape, and the cache grows every step, so on a GPU the
    decode step asks for FlashAttention / memory-efficient kernels instead (measured: eval/reports/attention)."""
    if not q.is_cuda:
        return sdpa(q, k, v)
    from torch.nn.attention import SDPBackend, sdpa_kernel

    with sdpa_kernel([SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]):
        return sdpa(q, k, v)


def sdpa(q, k, v, ok=None, *, is_causal: bool = False, padded: bool = True):
    """``scaled_dot_product_attention`` under a boolean mask [B, 1, T, Tk] (None: every key visible). With
    ``padded``, a query that may see no key gets 0, as in ``softmax``; without padding every query sees itself."""
    gqa = q.shape[1] != k.shape[1]
    empty = None if ok is None or not padded else ~ok.any(-1, keepdim=True)  # queries with no visible key
    if empty is not None and bool(empty.any()):
        ok = ok | empty  # keep the kernel away from all-masked rows; those outputs are zeroed below
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=ok, is_causal=is_causal, enable_gqa=gqa)
    return out if empty is None else out.masked_fill(empty, 0.0)
