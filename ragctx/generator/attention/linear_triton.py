"""ragctx's own Triton kernels for causal linear attention prefill with the ``elu`` feature map (inference).

The pure-torch chunkwise form (:func:`.linear.linear_chunkwise`) makes one pass over memory for every element-wise
step: the feature maps, the masked [C, C] score tiles, the ones column of the normalizer, the division. Here the
same algorithm runs in three launches, each reading its inputs once:

1. ``_chunk_states`` (one program per chunk, KV head and block of value columns): phi(k) on the fly, then the
   chunk's sum phi(k)^T v [F, Dv] and sum phi(k) [F] (the normalizer's state).
2. ``_exclusive_scan`` (one program per KV head and block of state entries): turns those per-chunk sums, in place,
   into the state *entering* each chunk (summed in fp32; the initial state added; the state after the last token
   written out for decode). The matmuls of step 1 run in parallel over every chunk; what stays sequential is one
   addition per chunk, spread over many programs per head and taken 8 chunks per step (fla-core's state kernel
   does each chunk's matmul inside its walk over the chunks, one program per head and block of the state).
3. ``_chunk_output`` (one program per chunk, query head and block of value columns): phi(q), phi(k), the causal
   in-chunk scores kept in registers, numerator and normalizer from the in-chunk term plus the entering state,
   divided before the one store.

Matmuls run in the input dtype (bf16 on a GPU) with fp32 accumulation; running states are summed in fp32 and
stored in the input dtype for the state term's matmul, as in the pure-torch form. Query heads of one KV group
read that head's states (GQA without copies). Under ``TRITON_INTERPRET=1`` the same kernels run on CPU tensors
(slowly): the tests check them there against the pure-torch form, and on a GPU when there is one.

Only what inference prefill needs: no backward (training keeps the pure-torch form), no padding mask (callers
fall back when ``valid`` is given), power-of-two head dims from 16 to 256.
"""

from __future__ import annotations

from functools import lru_cache

import torch
from torch import Tensor

from .common import LinearState, optional_module

__all__ = ["triton_kernels", "supports", "linear_prefill"]

CHUNK = 64  # rows per chunk: [64, 64] score tiles stay in registers with head dim 128
WARPS = 4
SCAN_UNROLL = 8  # chunks per step of the scan; with CHUNK and WARPS the fastest of the configs timed on the H200


@lru_cache(maxsize=1)
def triton_kernels():
    """(chunk_states, exclusive_scan, chunk_output), or None when Triton is missing or ``RAGCTX_TRITON=0``."""
    kernels = optional_module("._linear_triton_kernels", "RAGCTX_TRITON", __package__)
    return None if kernels is None else (kernels._chunk_states, kernels._exclusive_scan, kernels._chunk_output)


def supports(q: Tensor, k: Tensor, v: Tensor) -> bool:
    """Whether the kernels take these shapes and dtypes: head dims powers of two in 16..256, fp32 or bf16 (the
    states entering each chunk are stored in the input dtype: fp16's range would not hold long prefixes)."""
    pow2 = lambda n: 16 <= n <= 256 and n & (n - 1) == 0  # noqa: E731
    return (pow2(q.shape[-1]) and pow2(v.shape[-1]) and q.dtype in (torch.float32, torch.bfloat16)
            and q.dtype == k.dtype == v.dtype)


def _unit_last(x: Tensor) -> Tensor:
    return x if x.stride(-1) == 1 else x.contiguous()


def linear_prefill(q: Tensor, k: Tensor, v: Tensor, state: LinearState | None, chunk: int = CHUNK,
                   num_warps: int = WARPS, scan_unroll: int = SCAN_UNROLL) -> tuple[Tensor, LinearState]:
    """Causal linear attention with phi = elu + 1: q [B, Hq, T, D], k [B, Hkv, T, D], v [B, Hkv, T, Dv] (any
    strides with a unit last one) -> (output [B, Hq, T, Dv] in q's dtype, the state after the last token, fp32).
    ``state`` (or None: empty) is the state before the first token. Check :func:`supports` first. ``chunk`` (a power
    of two >= 16), ``num_warps`` and ``scan_unroll`` (chunks per step of the scan across chunks, a power of two) are
    tuning knobs that eval/bench_attention.py sweeps; the defaults are the fastest configuration it measured."""
    kernels = triton_kernels()
    if kernels is None:
        raise RuntimeError("linear_prefill needs Triton (and RAGCTX_TRITON not 0)")
    chunk_states, exclusive_scan, chunk_output = kernels
    q, k, v = (_unit_last(x) for x in (q, k, v))
    b, hq, t, d = q.shape
    hkv, dv = k.shape[1], v.shape[-1]
    g, nt, bv = hq // hkv, -(-t // chunk), min(64, dv)
    prec = "ieee" if q.dtype == torch.float32 else None  # fp32 in: exact fp32 products, not tf32
    kv = torch.empty(b * hkv, nt, d, dv, device=q.device, dtype=q.dtype)  # per-chunk sums, then entering states
    z = torch.empty(b * hkv, nt, d, device=q.device, dtype=torch.float32)
    chunk_states[(nt, b * hkv, dv // bv)](k, v, kv, z, *k.stride()[:3], *v.stride()[:3], t, nt, HKV=hkv, D=d,
                                          DV=dv, BT=chunk, BV=bv, PREC=prec, num_warps=num_warps)
    last_s = torch.empty(b * hkv, d * dv, device=q.device, dtype=torch.float32)
    last_z = torch.empty(b * hkv, d, device=q.device, dtype=torch.float32)
    for x, init, last, m in ((kv, None if state is None else state.s, last_s, d * dv),
                             (z, None if state is None else state.z, last_z, d)):
        init = x if init is None else init.reshape(b * hkv, m).float().contiguous()
        block = min(max(16, 2048 // scan_unroll), _next_pow2(m))  # [U, BLOCK] tiles of 2048 values per program
        exclusive_scan[(b * hkv, -(-m // block))](x, init, last, nt, m, HAS_INIT=state is not None, BLOCK=block,
                                                  U=scan_unroll, num_warps=4)
    out = torch.empty(b, hq, t, dv, device=q.device, dtype=q.dtype)
    chunk_output[(nt, b * hq, dv // bv)](q, k, v, kv, z, out, *q.stride()[:3], *k.stride()[:3], *v.stride()[:3],
                                         *out.stride()[:3], t, nt, HQ=hq, G=g, D=d, DV=dv, BT=chunk, BV=bv,
                                         PREC=prec, num_warps=num_warps)
    return out, LinearState(last_s.view(b, hkv, d, dv), last_z.view(b, hkv, d))


def _next_pow2(n: int) -> int:
    return 1 << (max(1, n) - 1).bit_length()
