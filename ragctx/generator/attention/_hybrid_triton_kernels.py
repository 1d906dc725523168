"""The jitted kernel of :mod:`.hybrid_triton` (imported on first use, so that Triton stays optional and
``TRITON_INTERPRET`` set before that use is honoured). Read that module's docstring for what it does."""

import triton
import triton.language as tl


@triton.jit
def _hedgehog(x, W, B, P: tl.constexpr, D: tl.constexpr, XTY: tl.constexpr):
    """softmax(x W + b) and softmax(-(x W + b)) for one head: x [D] (fp32 holding XTY values), W at ``W`` [D, P],
    b at ``B`` [P]. Rounded where the torch form rounds (the projection and the bias add in the weights' dtype, the
    features in the input's), so both forms give the same numbers."""
    d, p = tl.arange(0, D), tl.arange(0, P)
    w = tl.load(W + d[:, None] * P + p[None, :]).to(tl.float32)  # [D, P]
    wty = W.dtype.element_ty
    z = tl.sum(x.to(wty).to(tl.float32)[:, None] * w, 0).to(wty)
    z = (z + tl.load(B + p)).to(tl.float32)  # [P]
    e_pos = tl.exp(z - tl.max(z, 0))
    e_neg = tl.exp(-z - tl.max(-z, 0))
    return (e_pos / tl.sum(e_pos, 0)).to(XTY).to(tl.float32), (e_neg / tl.sum(e_neg, 0)).to(XTY).to(tl.float32)


@triton.jit
def _hybrid_decode(Q, POS, RK, RV, RPOS, RVALID, OK, OV, OVALID, S, Z, WQ, BQ, WK, BK, LOGIT, OUT,
                   s_qb, s_qh, s_rkb, s_rkh, s_rkw, s_rvb, s_rvh, s_rvw, s_okb, s_okh, s_ovb, s_ovh,
                   s_ob, s_oh, n_slots, window, scale,
                   HKV: tl.constexpr, G: tl.constexpr, D: tl.constexpr, P: tl.constexpr, BW: tl.constexpr):
    bh = tl.program_id(0)
    b, h = (bh // HKV).to(tl.int64), (bh % HKV).to(tl.int64)
    d, p, w = tl.arange(0, D), tl.arange(0, P), tl.arange(0, BW)
    xty = Q.dtype.element_ty

    # the evicted key joins the linear state (in place): s += phi(k) v^T, z += phi(k); an invalid slot adds nothing
    ok = tl.load(OK + b * s_okb + h * s_okh + d).to(tl.float32)
    ov = tl.load(OV + b * s_ovb + h * s_ovh + d).to(tl.float32)
    live = tl.load(OVALID + b).to(tl.float32)
    fk_pos, fk_neg = _hedgehog(ok, WK + h * D * P, BK + h * P, P, D, xty)
    fk_pos, fk_neg = fk_pos * live, fk_neg * live
    base_s = S + bh.to(tl.int64) * (2 * P * D)
    base_z = Z + bh.to(tl.int64) * (2 * P)
    s_pos = tl.load(base_s + p[:, None] * D + d[None, :]) + fk_pos[:, None] * ov[None, :]  # [P, D] fp32
    s_neg = tl.load(base_s + (P + p[:, None]) * D + d[None, :]) + fk_neg[:, None] * ov[None, :]
    z_pos = tl.load(base_z + p) + fk_pos
    z_neg = tl.load(base_z + P + p) + fk_neg
    tl.store(base_s + p[:, None] * D + d[None, :], s_pos)
    tl.store(base_s + (P + p[:, None]) * D + d[None, :], s_neg)
    tl.store(base_z + p, z_pos)
    tl.store(base_z + P + p, z_neg)

    # the window: the ring's keys this query may see (valid, not after it, fewer than `window` positions back)
    in_ring = w < n_slots
    rk = tl.load(RK + b * s_rkb + h * s_rkh + w[:, None].to(tl.int64) * s_rkw + d[None, :],
                 mask=in_ring[:, None], other=0.0).to(tl.float32)  # [BW, D]
    rv = tl.load(RV + b * s_rvb + h * s_rvh + w[:, None].to(tl.int64) * s_rvw + d[None, :],
                 mask=in_ring[:, None], other=0.0).to(tl.float32)
    pos_k = tl.load(RPOS + b * n_slots + w, mask=in_ring, other=-1)
    valid_k = tl.load(RVALID + b * n_slots + w, mask=in_ring, other=0) != 0
    pos_q = tl.load(POS + b)
    seen = valid_k & (pos_k <= pos_q) & (pos_q - pos_k < window)
    any_key = tl.sum(seen.to(tl.int32), 0) > 0

    for g in tl.static_range(G):
        hq = h * G + g
        q = tl.load(Q + b * s_qb + hq * s_qh + d).to(tl.float32)
        # softmax over the window, in fp32 (with a learned map only whether it saw a key matters, not its
        # log-sum-exp: the window's mass is the learned share)
        scores = tl.where(seen, tl.sum(rk * q[None, :], 1) * scale, float("-inf"))
        m = tl.where(any_key, tl.max(scores, 0), 0.0)
        e = tl.where(seen, tl.exp(scores - m), 0.0)
        total = tl.sum(e, 0)
        out_w = tl.sum(e[:, None] * rv, 0) / tl.where(any_key, total, 1.0)
        # the linear part over the keys that left the window: phi(q).s / phi(q).z
        fq_pos, fq_neg = _hedgehog(q, WQ + hq * D * P, BQ + hq * P, P, D, xty)
        num = tl.sum(fq_pos[:, None] * s_pos, 0) + tl.sum(fq_neg[:, None] * s_neg, 0)  # [D]
        den = tl.sum(fq_pos * z_pos, 0) + tl.sum(fq_neg * z_neg, 0)
        has_old = den > 0
        out_l = num / tl.where(has_old, den, 1.0)
        # one normalization: the window gets the learned share s, the older keys (1 - s) phi(q).phi(k) each
        logit = tl.load(LOGIT + hq).to(tl.float32)
        log_share = tl.minimum(logit, 0.0) - tl.log(1.0 + tl.exp(-tl.abs(logit)))  # logsigmoid(logit)
        log_rest = log_share - logit  # logsigmoid(-logit)
        lw = tl.where(any_key, log_share, float("-inf"))
        ll = tl.where(has_old, tl.log(tl.where(has_old, den, 1.0)) + log_rest, float("-inf"))
        top = tl.maximum(lw, ll)
        nothing = top == float("-inf")
        top = tl.where(nothing, 0.0, top)
        a, c = tl.exp(lw - top), tl.exp(ll - top)
        norm = tl.where(nothing, 1.0, a + c)
        out = (a / norm) * out_w + (c / norm) * out_l
        tl.store(OUT + b * s_ob + hq * s_oh + d, out.to(OUT.dtype.element_ty))
