"""``hybrid``: Based-style sliding-window softmax plus linear attention over the rest of the prefix.

How the two combine, per head and query: keys within the last ``window`` positions are weighed exactly,
exp(q.k / sqrt(D)); older keys are weighed by the feature-map kernel phi(q).phi(k), which for the default
``taylor`` map is the second-order Taylor expansion of that same exp. One softmax-like normalization runs over
both sets:

    out = (sum_window e^{q.k/sqrt(D)} v + sum_older phi(q).phi(k) v) / (sum_window e^{...} + sum_older phi.phi)

computed stably in log space: with Z_w, Z_l the two denominators, out = a out_w + (1 - a) out_l and
a = sigmoid(log Z_w - log Z_l). So recent tokens get full softmax precision and the far past a bounded-size
summary. Decoding keeps a ring buffer of the window and, for keys that leave it, the recurrent linear state:
O(W) memory in all; a decode step writes one ring slot in place and folds the key it evicts into the state.

With a learned map (``hedgehog``, trained by ``ragctx linearize``) phi(q).phi(k) does not live on exp's scale, so
the window's softmax is weighed as a whole: it gets the mass s_h (a learned share per query head) and the older
keys (1 - s_h) phi(q).phi(k) each, one normalization over both, i.e. log Z_w is replaced by log s_h and log Z_l
by log(1 - s_h) + log Z_l. This is LoLCATs' sliding window + linear attention with the window's log-sum-exp in
place of its running maximum (every route, FlexAttention included, returns the log-sum-exp).

On CUDA, inference with a learned map runs its decode step as two Triton kernels (:mod:`.hybrid_triton`) and, with
``RAGCTX_HYBRID_PREFILL=triton`` (opt-in until measured on a GPU), its prefill's linear part and combination as
four (:mod:`.hybrid_prefill`, after the window part); each module's ``*_ready`` function decides, and the torch
code below stays the reference twin and the CPU path.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .common import LinearState, RingBuffer, all_valid, allowed, group_q, ungroup, window_blocks
from .hybrid_prefill import fused_prefill_ready, hybrid_prefill
from .hybrid_triton import fused_decode_ready, hybrid_decode
from .learned import LEARNED
from .linear import phi, linear_chunkwise, linear_step, normalize, sum_dtype
from .softmax import masked_softmax, softmax_lse
from .window import flex_window, use_flex

__all__ = ["hybrid_attention"]


def hybrid_attention(q, k, v, *, positions, valid, state, cfg, maps=None) -> Tensor:
    b, hkv, t, d = k.shape
    w, kind, scale = cfg.window, cfg.hybrid_feature_map, d**-0.5
    fast = use_flex(q, valid, state.ring if state is not None else None)
    valid = all_valid(valid, positions)
    # two Triton kernels per layer for a learned map's decode step (hybrid_triton); asked on every call, so that the
    # eager prefill fills the answer's cache before a compiled decode step is traced
    fused = (kind in LEARNED and maps is not None and state is not None and not torch.is_grad_enabled()
             and fused_decode_ready(q, d, maps.q.weight.shape[-1], state.ring.k.shape[2]))
    if state is not None and t == 1 and fused:  # two kernels do all of the step below (hybrid_triton)
        return hybrid_decode(q, k, v, positions, valid, state, maps, w)
    if state is not None and t == 1:  # decode: one ring slot written in place, the key it evicts joins the state
        old_k, old_v, old_valid = state.ring.push(k, v, positions, valid)
        ring = state.ring
        out_w, lse_w = masked_softmax(q, ring.k, ring.v, allowed(positions, ring.pos, ring.valid, w), scale)
        fq, fk = phi(q, old_k, kind, maps)
        fq, fk = group_q(fq, hkv), fk * old_valid[:, None, :, None]  # [B, Hkv, G, 1, F], [B, Hkv, 1, F]
        num, den, evicted = linear_step(fq, fk, old_v, state.linear)
    else:
        if (t > 1 and kind in LEARNED and maps is not None
                and fused_prefill_ready(q, d, maps.q.weight.shape[-1])):  # four kernels do the rest (hybrid_prefill)
            return _fused_prefill(q, k, v, positions, valid, state, cfg, maps, fast)
        out_w, lse_w, k_old, v_old, valid_old = _prefill_window(q, k, v, positions, valid, state, cfg, fast)
        prev = state.linear if state is not None else None
        num, den, evicted = _prefill_linear(q, k_old, v_old, valid_old, prev, cfg, maps)
    seen = den > 0  # no key has left the window yet for early queries: log 0 = -inf, with a finite gradient
    log_den = torch.where(seen, torch.log(torch.where(seen, den, 1.0)), float("-inf"))
    out_l, lse_l = ungroup(normalize(num, den)), ungroup(log_den[..., None])[..., 0]

    if kind in LEARNED:  # the window weighed as a whole against the learned kernel (module docstring)
        share, rest = maps.window_share(lse_l)
        lse_w = torch.where(torch.isfinite(lse_w), share, float("-inf"))
        lse_l = torch.where(torch.isfinite(lse_l), lse_l + rest, float("-inf"))  # no gradient through -inf rows
    lse = torch.logaddexp(lse_w, lse_l)
    a = torch.exp(lse_w - lse).nan_to_num(0.0)[..., None]  # weight of the window; 0 where nothing is visible
    c = torch.exp(lse_l - lse).nan_to_num(0.0)[..., None]
    out = a * out_w.float() + c * out_l

    if state is not None:  # the keys that left the window for good are folded into the linear state (in place)
        state.linear.update(evicted)
    return out.to(q.dtype)


def _prefill_window(q, k, v, positions, valid, state, cfg, fast: bool):
    """Several tokens (or one without a state): the window part (its output and log-sum-exp) and the keys, values
    and validity [B, Hkv, T, D], [B, T] that leave the window in this call (the ring takes the new keys in place).
    ``fast``: FlexAttention."""
    b, hkv, t, d = k.shape
    w, scale = cfg.window, d**-0.5
    ring = state.ring if state is not None else RingBuffer.empty(b, hkv, w, d, k.device, k.dtype)
    fresh = ring.fresh  # nothing in the ring yet: its W slots hold no key, the window part reads the new keys only
    k_all, v_all, pos_all, valid_all = ring.add(k, v, positions, valid)  # [W + T], oldest first
    seen = slice(ring.k.shape[2], None) if fresh else slice(None)  # the keys it reads: [T], or the ring's then [T]
    ks_, vs_, ps_, ok_ = k_all[:, :, seen], v_all[:, :, seen], pos_all[:, seen], valid_all[:, seen]
    if fast:
        out_w, lse_w = flex_window(q, k, v, w, scale)
    elif t < 2 * w:
        out_w, lse_w = softmax_lse(q, ks_, vs_, allowed(positions, ps_, ok_, w), scale)
    else:  # a long prefill off the GPU: the window part in blocks of W queries (O(T W), not a T x T band)
        parts = [softmax_lse(q[:, :, qs], ks_[:, :, ks], vs_[:, :, ks],
                             allowed(positions[:, qs], ps_[:, ks], ok_[:, ks], w), scale)
                 for qs, ks in window_blocks(t, ks_.shape[2], w)]
        out_w, lse_w = torch.cat([o for o, _ in parts], 2), torch.cat([lse for _, lse in parts], 2)
    # linear part: query i sees k_all[0..i], the keys at least `w` positions older (their index in k_all is R + i
    # for the query's own key, R the ring's slots: W, or max_len for a state shorter than the window). Only the
    # first T rows of k_all are ever seen, and they are exactly the keys that leave the window in this call.
    return out_w, lse_w, k_all[:, :, :t], v_all[:, :, :t], valid_all[:, :t]


def _fused_prefill(q, k, v, positions, valid, state, cfg, maps, fast: bool) -> Tensor:
    """A learned map's prefill through :func:`.hybrid_prefill.hybrid_prefill`, the linear state updated in place.
    On a fresh sequence (FlexAttention) the kernels read the new keys shifted by the ring's slot count (its slots
    are all empty) and the ring only takes the last W keys; otherwise the ring's keys come first, as in the torch
    form."""
    if fast:
        out_w, lse_w = flex_window(q, k, v, cfg.window, q.shape[-1] ** -0.5)
        if state is not None:
            state.ring.write(k, v, positions, valid)
        k_old, v_old, valid_old = k, v, valid
        shift = state.ring.k.shape[2] if state is not None else cfg.window  # the ring's slots, as k_all's rows
    else:
        out_w, lse_w, k_old, v_old, valid_old = _prefill_window(q, k, v, positions, valid, state, cfg, fast)
        shift = 0
    out, _ = hybrid_prefill(q, k_old, v_old, valid_old, out_w, lse_w, state.linear if state is not None else None,
                            maps, shift)
    return out


def _prefill_linear(q, k_old, v_old, valid_old, prev, cfg, maps):
    """The linear part of a prefill in torch: (numerator, denominator, the linear state after the call) from the
    keys leaving the window (:func:`_prefill_window`) and the state before the call (None: empty)."""
    b, hkv, t, d = k_old.shape
    fq, fk = phi(q, k_old, cfg.hybrid_feature_map, maps)
    fq = group_q(fq, hkv)  # [B, Hkv, G, T, F]
    fk = fk * valid_old[:, None, :, None]  # [B, Hkv, T, F]; padding rows of phi(k) are zero
    if t == 1:  # one token without a state: the key leaving the (empty) window joins a zero state
        wide = sum_dtype(fk)
        start = LinearState(fk.new_zeros(b, hkv, fk.shape[-1], d, dtype=wide),
                            fk.new_zeros(b, hkv, fk.shape[-1], dtype=wide))
        return linear_step(fq, fk, v_old, start)
    return linear_chunkwise(fq, fk, v_old, prev, cfg.chunk_size)
