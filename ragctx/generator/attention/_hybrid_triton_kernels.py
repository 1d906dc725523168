"""The jitted kernels of :mod:`.hybrid_triton` (imported on first use, so that Triton stays optional and
``TRITON_INTERPRET`` set before that use is honoured). Read that module's docstring for what they do."""

import triton
import triton.language as tl


@triton.jit
def _shares(window_seen, has_old, den, logit):
    """The hybrid's one normalization with a learned share (hybrid.py's docstring): the weights of the window's
    output and of the linear part's (num / den), elementwise, given whether the window saw a key, whether a key has
    left it (den > 0) and the head's window logit (fp32). The decode step's and the prefill's kernels share it."""
    log_share = tl.minimum(logit, 0.0) - tl.log(1.0 + tl.exp(-tl.abs(logit)))  # logsigmoid(logit)
    lw = tl.where(window_seen, log_share, float("-inf"))
    ll = tl.where(has_old, tl.log(tl.where(has_old, den, 1.0)) + log_share - logit, float("-inf"))
    top = tl.maximum(lw, ll)
    nothing = top == float("-inf")
    top = tl.where(nothing, 0.0, top)
    a, c = tl.exp(lw - top), tl.exp(ll - top)
    norm = tl.where(nothing, 1.0, a + c)
    return a / norm, c / norm


@triton.jit
def _hedgehog_half(x, W, B, NEG: tl.constexpr, P: tl.constexpr, D: tl.constexpr, XTY: tl.constexpr):
    """softmax(x W + b) (NEG False) or softmax(-(x W + b)) (NEG True) for one head: x [D] (fp32 holding XTY values),
    W at ``W`` [D, P], b at ``B`` [P]. Rounded where the torch form rounds (the projection and the bias add in the
    weights' dtype, the features in the input's), so both forms give the same numbers."""
    d, p = tl.arange(0, D), tl.arange(0, P)
    w = tl.load(W + d[:, None] * P + p[None, :]).to(tl.float32)  # [D, P]
    wty = W.dtype.element_ty
    z = tl.sum(x.to(wty).to(tl.float32)[:, None] * w, 0).to(wty)
    z = (z + tl.load(B + p)).to(tl.float32)  # [P]
    if NEG:
        z = -z
    e = tl.exp(z - tl.max(z, 0))
    return (e / tl.sum(e, 0)).to(XTY).to(tl.float32)


@triton.jit
def _hybrid_fold(RK, RV, RVALID, CURSOR, S, Z, WK, BK, SLOT, s_rkb, s_rkh, s_rkw, s_rvb, s_rvh, s_rvw, n_slots,
                 HKV: tl.constexpr, D: tl.constexpr, P: tl.constexpr):
    """Program (batch row x KV head, half): the key the ring is about to evict (slot cursor % W) joins half of the
    linear state, in place: s[half] += phi_half(k) v^T, z[half] += phi_half(k) (nothing for an invalid slot). Writes
    nothing that another program reads: the ring itself is written by :func:`_hybrid_attend`."""
    bh, half = tl.program_id(0), tl.program_id(1)
    b, h = (bh // HKV).to(tl.int64), (bh % HKV).to(tl.int64)
    d, p = tl.arange(0, D), tl.arange(0, P)
    slot = tl.load(CURSOR) % n_slots
    if (bh == 0) & (half == 0):
        tl.store(SLOT, slot)
    ok = tl.load(RK + b * s_rkb + h * s_rkh + slot * s_rkw + d).to(tl.float32)
    ov = tl.load(RV + b * s_rvb + h * s_rvh + slot * s_rvw + d).to(tl.float32)
    live = (tl.load(RVALID + b * n_slots + slot) != 0).to(tl.float32)
    fk = _hedgehog_half(ok, WK + h * D * P, BK + h * P, half == 1, P, D, RK.dtype.element_ty) * live
    base_s = S + bh.to(tl.int64) * (2 * P * D) + half * (P * D)
    base_z = Z + bh.to(tl.int64) * (2 * P) + half * P
    at = base_s + p[:, None] * D + d[None, :]  # [P, D]
    tl.store(at, tl.load(at) + fk[:, None] * ov[None, :])
    tl.store(base_z + p, tl.load(base_z + p) + fk)


@triton.jit
def _hybrid_attend(Q, KN, VN, POS, VALID, RK, RV, RPOS, RVALID, CURSOR, S, Z, WQ, BQ, LOGIT, SLOT, OUT,
                   s_qb, s_qh, s_knb, s_knh, s_vnb, s_vnh, s_rkb, s_rkh, s_rkw, s_rvb, s_rvh, s_rvw, s_ob, s_oh,
                   n_slots, window, scale,
                   HQ: tl.constexpr, G: tl.constexpr, D: tl.constexpr, P: tl.constexpr, BW: tl.constexpr):
    """Program (batch row x query head): softmax over the ring's visible keys with the new key in its slot, phi(q)
    against the state :func:`_hybrid_fold` updated, the learned-share combination, one store. Then the ring takes
    the new key: k, v by the group's first query head, position and validity by the row's first, the cursor by
    program 0. Those writes touch only the new slot, whose old contents every program replaces by the new key as
    it reads (a program that loads it after the write discards it all the same), and the cursor, which only program
    0 reads (to move it on)."""
    bq = tl.program_id(0)
    b, hq = (bq // HQ).to(tl.int64), (bq % HQ).to(tl.int64)
    h = hq // G
    d, p, w = tl.arange(0, D), tl.arange(0, P), tl.arange(0, BW)
    xty = Q.dtype.element_ty
    slot = tl.load(SLOT)
    kn = tl.load(KN + b * s_knb + h * s_knh + d)
    vn = tl.load(VN + b * s_vnb + h * s_vnh + d)
    pos_q = tl.load(POS + b)
    valid_q = tl.load(VALID + b) != 0

    # the window: the ring's keys this query may see (valid, not after it, fewer than `window` positions back)
    in_ring = w < n_slots
    new = (w == slot)[:, None]
    rk = tl.load(RK + b * s_rkb + h * s_rkh + w[:, None].to(tl.int64) * s_rkw + d[None, :],
                 mask=in_ring[:, None], other=0.0)
    rv = tl.load(RV + b * s_rvb + h * s_rvh + w[:, None].to(tl.int64) * s_rvw + d[None, :],
                 mask=in_ring[:, None], other=0.0)
    rk = tl.where(new, kn[None, :], rk).to(tl.float32)  # [BW, D]
    rv = tl.where(new, vn[None, :], rv).to(tl.float32)
    pos_k = tl.where(w == slot, pos_q, tl.load(RPOS + b * n_slots + w, mask=in_ring, other=-1))
    valid_k = tl.where(w == slot, valid_q, tl.load(RVALID + b * n_slots + w, mask=in_ring, other=0) != 0)
    seen = in_ring & valid_k & (pos_k <= pos_q) & (pos_q - pos_k < window)
    any_key = tl.sum(seen.to(tl.int32), 0) > 0

    q = tl.load(Q + b * s_qb + hq * s_qh + d).to(tl.float32)
    # softmax over the window, in fp32 (with a learned map only whether it saw a key matters, not its log-sum-exp:
    # the window's mass is the learned share)
    scores = tl.where(seen, tl.sum(rk * q[None, :], 1) * scale, float("-inf"))
    m = tl.where(any_key, tl.max(scores, 0), 0.0)
    e = tl.where(seen, tl.exp(scores - m), 0.0)
    out_w = tl.sum(e[:, None] * rv, 0) / tl.where(any_key, tl.sum(e, 0), 1.0)
    # the linear part over the keys that left the window: phi(q).s / phi(q).z
    base_s = S + (b * (HQ // G) + h) * (2 * P * D)
    base_z = Z + (b * (HQ // G) + h) * (2 * P)
    f_pos = _hedgehog_half(q, WQ + hq * D * P, BQ + hq * P, False, P, D, xty)
    f_neg = _hedgehog_half(q, WQ + hq * D * P, BQ + hq * P, True, P, D, xty)
    num = (tl.sum(f_pos[:, None] * tl.load(base_s + p[:, None] * D + d[None, :]), 0)
           + tl.sum(f_neg[:, None] * tl.load(base_s + (P + p[:, None]) * D + d[None, :]), 0))  # [D]
    den = tl.sum(f_pos * tl.load(base_z + p), 0) + tl.sum(f_neg * tl.load(base_z + P + p), 0)
    has_old = den > 0
    out_l = num / tl.where(has_old, den, 1.0)
    # one normalization: the window gets the learned share s, the older keys (1 - s) phi(q).phi(k) each
    wa, wc = _shares(any_key, has_old, den, tl.load(LOGIT + hq).to(tl.float32))
    out = wa * out_w + wc * out_l
    tl.store(OUT + b * s_ob + hq * s_oh + d, out.to(OUT.dtype.element_ty))

    # the ring takes the new key (see the docstring for why these writes are safe)
    if hq % G == 0:
        tl.store(RK + b * s_rkb + h * s_rkh + slot * s_rkw + d, kn)
        tl.store(RV + b * s_rvb + h * s_rvh + slot * s_rvw + d, vn)
    if hq == 0:
        tl.store(RPOS + b * n_slots + slot, pos_q)
        tl.store(RVALID + b * n_slots + slot, valid_q)
    if bq == 0:
        tl.store(CURSOR, tl.load(CURSOR) + 1)
