"""The jitted kernels of :mod:`.linear_triton` (imported on first use, so that Triton stays optional and
``TRITON_INTERPRET`` set before that use is honoured). Read that module's docstring for what each one does."""

import triton
import triton.language as tl


@triton.jit
def _phi(x):  # elu(x) + 1 in fp32
    return tl.where(x > 0, x + 1.0, tl.exp(x))


@triton.jit
def _chunk_states(K, V, KV, Z, s_kb, s_kh, s_kt, s_vb, s_vh, s_vt, T, NT, HKV: tl.constexpr,
                  D: tl.constexpr, DV: tl.constexpr, BT: tl.constexpr, BV: tl.constexpr, PREC: tl.constexpr):
    c, bh, jv = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    b, h = (bh // HKV).to(tl.int64), (bh % HKV).to(tl.int64)
    rows = c * BT + tl.arange(0, BT)
    live = rows < T
    dk = tl.arange(0, D)
    dv = jv * BV + tl.arange(0, BV)
    k = tl.load(K + b * s_kb + h * s_kh + rows[:, None].to(tl.int64) * s_kt + dk[None, :],
                mask=live[:, None], other=0.0)
    v = tl.load(V + b * s_vb + h * s_vh + rows[:, None].to(tl.int64) * s_vt + dv[None, :],
                mask=live[:, None], other=0.0)
    fk = tl.where(live[:, None], _phi(k.to(tl.float32)), 0.0).to(v.dtype)  # rows past T add nothing
    kv = tl.dot(tl.trans(fk), v, input_precision=PREC)  # [D, BV]
    at = bh.to(tl.int64) * NT + c
    tl.store(KV + at * (D * DV) + dk[:, None] * DV + dv[None, :], kv.to(KV.dtype.element_ty))
    if jv == 0:
        tl.store(Z + at * D + dk, tl.sum(fk.to(tl.float32), 0))


@triton.jit
def _exclusive_scan(X, INIT, LAST, NT, M, HAS_INIT: tl.constexpr, BLOCK: tl.constexpr, U: tl.constexpr):
    """Turns the per-chunk sums X [R, NT, M], in place, into the state entering each chunk (fp32 sums, INIT
    added when HAS_INIT) and writes the state after the last chunk to LAST [R, M]. One program per row r and BLOCK
    state entries, taking U chunks per step: one [U, BLOCK] load, a cumulative sum along the chunks, one store, so
    that the chain of dependent steps is NT / U long (U = 8 measured 1.3-1.4x faster than one chunk per step from
    32K tokens on the H200: eval/reports/attention/op-triton-2026-12-01.json)."""
    r, j = tl.program_id(0), tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    live = j < M
    acc = tl.zeros([BLOCK], dtype=tl.float32)
    if HAS_INIT:
        acc += tl.load(INIT + r.to(tl.int64) * M + j, mask=live, other=0.0).to(tl.float32)
    p = X + r.to(tl.int64) * NT * M + j[None, :]
    u = tl.arange(0, U)
    for c0 in range(0, NT, U):
        rows = c0 + u
        ok = (rows < NT)[:, None] & live[None, :]
        ptr = p + rows[:, None].to(tl.int64) * M
        x = tl.load(ptr, mask=ok, other=0.0).to(tl.float32)
        tl.store(ptr, (acc[None, :] + tl.cumsum(x, axis=0) - x).to(X.dtype.element_ty), mask=ok)
        acc += tl.sum(x, axis=0)
    tl.store(LAST + r.to(tl.int64) * M + j, acc, mask=live)


@triton.jit
def _chunk_output(Q, K, V, S, Z, O, s_qb, s_qh, s_qt, s_kb, s_kh, s_kt, s_vb, s_vh, s_vt, s_ob, s_oh, s_ot,
                  T, NT, HQ: tl.constexpr, G: tl.constexpr, D: tl.constexpr, DV: tl.constexpr,
                  BT: tl.constexpr, BV: tl.constexpr, PREC: tl.constexpr):
    c, bq, jv = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    b, hq = (bq // HQ).to(tl.int64), (bq % HQ).to(tl.int64)
    h = hq // G
    i = tl.arange(0, BT)
    rows = c * BT + i
    live = rows < T
    dk = tl.arange(0, D)
    dv = jv * BV + tl.arange(0, BV)
    t64 = rows[:, None].to(tl.int64)
    q = tl.load(Q + b * s_qb + hq * s_qh + t64 * s_qt + dk[None, :], mask=live[:, None], other=0.0)
    k = tl.load(K + b * s_kb + h * s_kh + t64 * s_kt + dk[None, :], mask=live[:, None], other=0.0)
    v = tl.load(V + b * s_vb + h * s_vh + t64 * s_vt + dv[None, :], mask=live[:, None], other=0.0)
    fq = _phi(q.to(tl.float32))
    fk = tl.where(live[:, None], _phi(k.to(tl.float32)), 0.0).to(v.dtype)
    a = tl.dot(fq.to(v.dtype), tl.trans(fk), input_precision=PREC)  # [BT, BT] scores inside the chunk
    a = tl.where(i[:, None] >= i[None, :], a, 0.0)
    at = (b * (HQ // G) + h) * NT + c
    s = tl.load(S + at * (D * DV) + dk[:, None] * DV + dv[None, :])  # state entering the chunk [D, BV]
    z = tl.load(Z + at * D + dk)  # its normalizer part [D], fp32
    num = tl.dot(a.to(v.dtype), v, input_precision=PREC)
    num += tl.dot(fq.to(s.dtype), s, input_precision=PREC)
    den = tl.sum(a, 1) + tl.sum(fq * z[None, :], 1)
    out = num / tl.where(den > 0, den, 1.0)[:, None]  # no key seen: num is 0 too
    tl.store(O + b * s_ob + hq * s_oh + t64 * s_ot + dv[None, :], out.to(O.dtype.element_ty),
             mask=live[:, None])
