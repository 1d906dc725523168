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

With a :class:`~.common.KVCache`, a decode step attends over the whole fixed-size cache under the position mask
(unwritten slots invalid), as gpt-fast does: its shapes never change, so one compiled step serves a generation.
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
    if state is None:
        return sdpa(q, k, v, allowed(positions, positions, valid), padded=padded)
    assert isinstance(state, KVCache)
    fresh = state.fresh
    k_all, v_all, pos_k, valid_k = state.add(k, v, positions, valid)
    if fresh:  # prefill into an empty cache: its own keys are all there is (no padding: fused causal kernels)
        return causal(q, k, v) if not padded else sdpa(q, k, v, allowed(positions, positions, valid))
    # a decode step (or a later prefill chunk) against the whole fixed-size cache, unwritten slots masked: the
    # shapes never change, so one captured step serves the whole generation
    return sdpa(q, k_all, v_all, allowed(positions, pos_k, valid_k), padded=padded)


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


def sdpa(q, k, v, ok=None, *, is_causal: bool = False, padded: bool = True):
    """``scaled_dot_product_attention`` under a boolean mask [B, 1, T, Tk] (None: every key visible). With
    ``padded``, a query that may see no key gets 0, as in ``softmax``; without padding every query sees itself."""
    gqa = q.shape[1] != k.shape[1]
    empty = None if ok is None or not padded else ~ok.any(-1, keepdim=True)  # queries with no visible key
    if empty is not None and bool(empty.any()):
        ok = ok | empty  # keep the kernel away from all-masked rows; those outputs are zeroed below
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=ok, is_causal=is_causal, enable_gqa=gqa)
    return out if empty is None else out.masked_fill(empty, 0.0)
