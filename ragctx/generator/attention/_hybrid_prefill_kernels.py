"""The jitted kernels of :mod:`.hybrid_prefill` (imported on first use, so that Triton stays optional and
``TRITON_INTERPRET`` set before that use is honoured). Read that module's docstring for what they do. The scan
between them is :mod:`._linear_triton_kernels`' ``_exclusive_scan``."""

import triton
import triton.language as tl

from ._hybrid_triton_kernels import _shares


@triton.jit
def _hedgehog_rows(x, W, B, P: tl.constexpr, D: tl.constexpr, PREC: tl.constexpr):
    """(softmax(x W + b), softmax(-(x W + b))) for a block of rows x [BT, D] (in the input dtype), each [BT, P] in
    x's dtype. Rounded where :class:`.learned.HedgehogMap` rounds: the projection and the bias add in the weights'
    dtype, the softmaxes in fp32, the features in the input's dtype."""
    d, p = tl.arange(0, D), tl.arange(0, P)
    wty = W.dtype.element_ty
    w = tl.load(W + d[:, None] * P + p[None, :])  # [D, P]
    z = tl.dot(x.to(wty), w, input_precision=PREC).to(wty)
    z = (z + tl.load(B + p)[None, :]).to(tl.float32)  # [BT, P]
    e = tl.exp(z - tl.max(z, 1)[:, None])
    pos = e / tl.sum(e, 1)[:, None]
    e = tl.exp(tl.min(z, 1)[:, None] - z)
    neg = e / tl.sum(e, 1)[:, None]
    return pos.to(x.dtype), neg.to(x.dtype)


@triton.jit
def _old_keys(K, V, VALID, b, h, rows, s_kb, s_kh, s_kt, s_vb, s_vh, s_vt, s_mb, s_mt, T, SHIFT, D: tl.constexpr):
    """(keys, values [BT, D], validity [BT]) of the linear part's key rows ``rows``: row j is row j - SHIFT of K, V
    and VALID (SHIFT = W on a fresh sequence, whose first W rows, the empty ring's, are invalid; 0 when K holds the
    ring's keys followed by the new ones). Rows past T or before SHIFT load zeros and are invalid."""
    src = rows - SHIFT
    inside = (rows < T) & (src >= 0)
    t64 = src[:, None].to(tl.int64)
    d = tl.arange(0, D)
    k = tl.load(K + b * s_kb + h * s_kh + t64 * s_kt + d[None, :], mask=inside[:, None], other=0.0)
    v = tl.load(V + b * s_vb + h * s_vh + t64 * s_vt + d[None, :], mask=inside[:, None], other=0.0)
    ok = inside & (tl.load(VALID + b * s_mb + src.to(tl.int64) * s_mt, mask=inside, other=0) != 0)
    return k, v, ok


@triton.jit
def _hybrid_chunk_states(K, V, VALID, WK, BK, KV, Z, s_kb, s_kh, s_kt, s_vb, s_vh, s_vt, s_mb, s_mt, T, NT, SHIFT,
                         HKV: tl.constexpr, D: tl.constexpr, P: tl.constexpr, BT: tl.constexpr,
                         PREC: tl.constexpr):
    """Program (chunk, batch row x KV head): the learned features of the chunk's keys (zero for invalid rows and rows
    past T), then the chunk's sums phi(k)^T v [2P, D] (in the input dtype) and phi(k) [2P] (fp32), one half of the
    features at a time."""
    c, bh = tl.program_id(0), tl.program_id(1)
    b, h = (bh // HKV).to(tl.int64), (bh % HKV).to(tl.int64)
    rows = c * BT + tl.arange(0, BT)
    d, p = tl.arange(0, D), tl.arange(0, P)
    k, v, ok = _old_keys(K, V, VALID, b, h, rows, s_kb, s_kh, s_kt, s_vb, s_vh, s_vt, s_mb, s_mt, T, SHIFT, D)
    f_pos, f_neg = _hedgehog_rows(k, WK + h * D * P, BK + h * P, P, D, PREC)
    f_pos = tl.where(ok[:, None], f_pos, 0.0).to(v.dtype)
    f_neg = tl.where(ok[:, None], f_neg, 0.0).to(v.dtype)
    at = bh.to(tl.int64) * NT + c
    base = KV + at * (2 * P * D) + p[:, None] * D + d[None, :]
    tl.store(base, tl.dot(tl.trans(f_pos), v, input_precision=PREC).to(KV.dtype.element_ty))
    tl.store(base + P * D, tl.dot(tl.trans(f_neg), v, input_precision=PREC).to(KV.dtype.element_ty))
    tl.store(Z + at * (2 * P) + p, tl.sum(f_pos.to(tl.float32), 0))
    tl.store(Z + at * (2 * P) + P + p, tl.sum(f_neg.to(tl.float32), 0))


@triton.jit
def _hybrid_chunk_output(Q, K, V, VALID, WQ, BQ, WK, BK, S, Z, OW, LSE, LOGIT, O,
                         s_qb, s_qh, s_qt, s_kb, s_kh, s_kt, s_vb, s_vh, s_vt, s_mb, s_mt,
                         s_wb, s_wh, s_wt, s_lb, s_lh, s_lt, s_ob, s_oh, s_ot, T, NT, SHIFT,
                         HQ: tl.constexpr, G: tl.constexpr, D: tl.constexpr, P: tl.constexpr, BT: tl.constexpr,
                         PREC: tl.constexpr):
    """Program (chunk, batch row x query head): the linear part (phi(q), the keys' phi again, the causal in-chunk
    scores in registers plus the state entering the chunk), then the learned-share combination with the window's
    output and log-sum-exp, one store."""
    c, bq = tl.program_id(0), tl.program_id(1)
    b, hq = (bq // HQ).to(tl.int64), (bq % HQ).to(tl.int64)
    h = hq // G
    i = tl.arange(0, BT)
    rows = c * BT + i
    t64 = rows[:, None].to(tl.int64)
    live = rows < T
    d, p = tl.arange(0, D), tl.arange(0, P)
    q = tl.load(Q + b * s_qb + hq * s_qh + t64 * s_qt + d[None, :], mask=live[:, None], other=0.0)
    k, v, ok = _old_keys(K, V, VALID, b, h, rows, s_kb, s_kh, s_kt, s_vb, s_vh, s_vt, s_mb, s_mt, T, SHIFT, D)
    q_pos, q_neg = _hedgehog_rows(q, WQ + hq * D * P, BQ + hq * P, P, D, PREC)
    k_pos, k_neg = _hedgehog_rows(k, WK + h * D * P, BK + h * P, P, D, PREC)
    k_pos = tl.where(ok[:, None], k_pos, 0.0).to(v.dtype)
    k_neg = tl.where(ok[:, None], k_neg, 0.0).to(v.dtype)
    q_pos, q_neg = q_pos.to(v.dtype), q_neg.to(v.dtype)
    scores = tl.dot(q_pos, tl.trans(k_pos), input_precision=PREC)
    scores = tl.dot(q_neg, tl.trans(k_neg), scores, input_precision=PREC)  # [BT, BT]
    scores = tl.where(i[:, None] >= i[None, :], scores, 0.0)
    at = (b * (HQ // G) + h) * NT + c
    s_at = S + at * (2 * P * D) + p[:, None] * D + d[None, :]  # the state entering the chunk, by halves [P, D]
    num = tl.dot(scores.to(v.dtype), v, input_precision=PREC)
    num = tl.dot(q_pos, tl.load(s_at), num, input_precision=PREC)
    num = tl.dot(q_neg, tl.load(s_at + P * D), num, input_precision=PREC)
    den = (tl.sum(scores, 1) + tl.sum(q_pos.to(tl.float32) * tl.load(Z + at * (2 * P) + p)[None, :], 1)
           + tl.sum(q_neg.to(tl.float32) * tl.load(Z + at * (2 * P) + P + p)[None, :], 1))  # [BT]
    has_old = den > 0  # no key has left the window yet: num is 0 too
    out_l = num / tl.where(has_old, den, 1.0)[:, None]

    # one normalization: the window gets the learned share s, the older keys (1 - s) phi(q).phi(k) each
    out_w = tl.load(OW + b * s_wb + hq * s_wh + t64 * s_wt + d[None, :], mask=live[:, None], other=0.0)
    lse_w = tl.load(LSE + b * s_lb + hq * s_lh + rows.to(tl.int64) * s_lt, mask=live, other=float("-inf"))
    wa, wr = _shares(lse_w > float("-inf"), has_old, den, tl.load(LOGIT + hq).to(tl.float32))
    out = wa[:, None] * out_w.to(tl.float32) + wr[:, None] * out_l
    tl.store(O + b * s_ob + hq * s_oh + t64 * s_ot + d[None, :], out.to(O.dtype.element_ty), mask=live[:, None])
