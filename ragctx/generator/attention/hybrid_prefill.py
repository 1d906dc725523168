"""A ``hybrid`` prefill's linear part and combination with a learned (Hedgehog) feature map in four Triton launches.

The torch prefill (:func:`.hybrid.hybrid_attention`) runs, per layer, after the window's FlexAttention: the two
feature maps (projection, bias, two fp32 softmaxes, a concatenation each), the masking of padding keys, the
chunkwise linear attention (:func:`.linear.linear_chunkwise`, some fifteen operations), the log of the
denominator, the learned window share, the log-space combination: about fifty small kernels per layer. On
SmolLM2 (30 layers) that made the hybrid prefill launch-bound, a near-constant 60-110 ms per prompt of 1K-8K
tokens on an H100 against 25-30 ms for transformers' SDPA (issue 17). Here the same work is four launches:

1. ``_hybrid_chunk_states`` (one program per chunk and KV head): the keys' learned features, computed in the
   kernel from the projection weights (zero for padding), and the chunk's sums phi(k)^T v and phi(k).
2. ``_exclusive_scan`` of :mod:`.linear_triton` (twice: the [2P, D] sums and the [2P] normalizer), which turns
   those sums in place into the state entering each chunk, starting from the layer's linear state (a prefill that
   continues a conversation) and writing the state after the last key for decoding.
3. ``_hybrid_chunk_output`` (one program per chunk and query head): the queries' features, the keys' again, the
   causal in-chunk scores in registers plus the entering state's term, numerator over denominator, and the
   learned-share combination with the window's output and log-sum-exp, one store of the layer's output.

The linear part's keys are the ones leaving the window during this call: query i sees keys 0..i of the ring's keys
(its slots, oldest first) followed by the new ones, i.e. a plain causal linear attention over ``k_all[:T]``; on a
fresh sequence the ring holds nothing, and the kernels read the new keys shifted by the ring's slot count
(``shift``: rows before it are none) instead of a built ``k_all``. Why kernels rather than ``torch.compile`` of the
torch code: one set of kernels serves every length with no recompile and no compile time at the first prompt, and
the kernels run on a CPU under ``TRITON_INTERPRET=1``, where tests/test_hybrid_prefill.py checks them against the
torch path (outputs, ring and linear state, fp32). The window part (FlexAttention) stays as it was; on a fresh
sequence the ring only takes the last W keys (:meth:`.common.RingBuffer.write`), so no [W + T] copy of the keys is
built. Matmuls run in the model's dtype with fp32 accumulation, the running state is summed in fp32 and stored in
the model's dtype for its matmul, as in the torch form; numerator, denominator and the combination stay in fp32 (the
torch form rounds them to bf16 on the way), so bf16 outputs agree closely, not bit for bit.

**Opt-in until measured on a GPU**: written and tested on a CPU under Triton's interpreter, the route serves only
when ``RAGCTX_HYBRID_PREFILL=triton`` is set (read at each prefill); the torch path stays the default everywhere.
eval/bench_decode.py times both in one run; once the GPU tests and that benchmark pass, the default moves here.

Only what inference prefill needs: no backward, a learned map, power-of-two head and projection dims from 16 to
128, fp32 or bf16 (:func:`fused_prefill_ready`, the one place that decides). Not a custom op: the prefill runs
eagerly (only the decode step is compiled), and under ``torch.compile`` the torch path is taken.
"""

from __future__ import annotations

import os
import warnings

import torch
from torch import Tensor

from .common import LinearState, optional_module
from .linear_triton import CHUNK, SCAN_UNROLL, _next_pow2, triton_kernels

__all__ = ["fused_prefill_ready", "hybrid_prefill", "OPT_IN"]

OPT_IN = "RAGCTX_HYBRID_PREFILL"  # =triton: take the fused prefill (module docstring: opt-in until measured on a GPU)

WARPS = 4
MAX_DIM = 64  # head and projection dims served; 128 would hold ~10 [64, 128] tiles per program: raise once measured

_MODULE: list = []  # the kernels' module once looked up (or None)
_WARNED: set[str] = set()  # unknown RAGCTX_HYBRID_PREFILL values already warned about
_READY: dict[tuple, bool] = {}  # (device type, dtype, head dim, projection dim) -> usable


def _kernels():
    """(chunk_states, exclusive_scan, chunk_output), or None when Triton is missing or ``RAGCTX_TRITON=0`` (read at
    the first use)."""
    if not _MODULE:
        _MODULE.append(optional_module("._hybrid_prefill_kernels", "RAGCTX_TRITON", __package__))
    module, linear = _MODULE[0], triton_kernels()
    if module is None or linear is None:
        return None
    return module._hybrid_chunk_states, linear[1], module._hybrid_chunk_output


def fused_prefill_ready(q: Tensor, head_dim: int, proj_dim: int) -> bool:
    """Whether :func:`hybrid_prefill` serves this prefill: a CUDA tensor, fp32 or bf16 (the states entering each
    chunk are stored in the input dtype: fp16's range would not hold long prefixes), head and projection dims powers
    of two in 16..``MAX_DIM`` (64), no autograd, not under ``torch.compile``, Triton importable and
    ``RAGCTX_TRITON`` not 0 at the first use, and ``RAGCTX_HYBRID_PREFILL=triton`` (opt-in: module docstring). (On a
    CPU the kernels run only when forced under Triton's interpreter, as the tests do.)"""
    choice = os.environ.get(OPT_IN, "torch")
    if choice != "triton":
        if choice not in ("torch", "") and choice not in _WARNED:
            _WARNED.add(choice)
            warnings.warn(f"{OPT_IN}={choice!r} is not a choice: set it to 'triton' (the fused prefill) or 'torch' "
                          "(the default); the torch prefill runs", stacklevel=2)
        return False
    if torch.is_grad_enabled() or torch.compiler.is_compiling():
        return False
    key = (q.device.type, q.dtype, head_dim, proj_dim)
    if key not in _READY:
        # dims up to 64 (SmolLM2's): wider tiles were never compiled for a GPU and may not fit its registers
        pow2 = lambda n: 16 <= n <= MAX_DIM and n & (n - 1) == 0  # noqa: E731
        _READY[key] = bool(q.device.type == "cuda" and pow2(head_dim) and pow2(proj_dim)
                           and q.dtype in (torch.float32, torch.bfloat16) and _kernels() is not None)
    return _READY[key]


def _unit_last(x: Tensor) -> Tensor:
    return x if x.stride(-1) == 1 else x.contiguous()


def hybrid_prefill(q: Tensor, k_old: Tensor, v_old: Tensor, valid_old: Tensor, out_w: Tensor, lse_w: Tensor,
                   state: LinearState | None, maps, shift: int = 0, chunk: int = CHUNK) -> tuple[Tensor, LinearState]:
    """The hybrid's output for T queries, q [B, Hq, T, D], given the window's output ``out_w`` [B, Hq, T, D] and
    log-sum-exp ``lse_w`` [B, Hq, T] (-inf where a query sees no key), and the keys leaving the window in this call:
    row j of the linear part's keys is row j - ``shift`` of ``k_old``, ``v_old`` [B, Hkv, *, D] (any strides with a
    unit last one) and of their validity ``valid_old`` [B, *] (rows before ``shift`` are none: a fresh sequence
    passes its new keys and the window; a ring's keys followed by the new ones pass shift 0). Query i's linear part
    sums key rows 0..i. ``state``: the linear state before the call, updated in place when it is fp32 and
    contiguous (as ``make_state`` builds it), else copied into; None: start from zeros. Returns (output [B, Hq, T, D]
    in q's dtype, the linear state after the call, fp32 [B, Hkv, 2P, D] and [B, Hkv, 2P]). Check
    :func:`fused_prefill_ready` first."""
    kernels = _kernels()
    if kernels is None:
        raise RuntimeError("hybrid_prefill needs Triton (and RAGCTX_TRITON not 0): check fused_prefill_ready first")
    chunk_states, exclusive_scan, chunk_output = kernels
    q, k_old, v_old, out_w = (_unit_last(x) for x in (q, k_old, v_old, out_w))
    b, hq, t, d = q.shape
    hkv, p = k_old.shape[1], maps.q.weight.shape[-1]
    nt, f = -(-t // chunk), 2 * p
    prec = "ieee" if q.dtype == torch.float32 else None  # fp32 in: exact fp32 products, not tf32
    wq, bq, wk, bk, logit = (x.contiguous() for x in (maps.q.weight, maps.q.bias, maps.k.weight, maps.k.bias,
                                                      maps.window_logit))
    kv = torch.empty(b * hkv, nt, f, d, device=q.device, dtype=q.dtype)  # per-chunk sums, then entering states
    z = torch.empty(b * hkv, nt, f, device=q.device, dtype=torch.float32)
    chunk_states[(nt, b * hkv)](k_old, v_old, valid_old, wk, bk, kv, z, *k_old.stride()[:3], *v_old.stride()[:3],
                                *valid_old.stride(), t, nt, shift, HKV=hkv, D=d, P=p, BT=chunk, PREC=prec,
                                num_warps=WARPS)
    in_place = state is not None and all(x.dtype == torch.float32 and x.is_contiguous() for x in (state.s, state.z))
    new = state if in_place else LinearState.empty(b, hkv, f, d, q.device)
    for x, init, last, m in ((kv, None if state is None else state.s, new.s, f * d),
                             (z, None if state is None else state.z, new.z, f)):
        # each program reads its entries of the initial state before it writes them: in place is safe
        init = x if init is None else init.reshape(b * hkv, m).float()
        block = min(max(16, 2048 // SCAN_UNROLL), _next_pow2(m))
        exclusive_scan[(b * hkv, -(-m // block))](x, init, last, nt, m, HAS_INIT=state is not None, BLOCK=block,
                                                  U=SCAN_UNROLL, num_warps=4)
    if state is not None and not in_place:
        state.update(new)
    out = torch.empty_like(q)
    chunk_output[(nt, b * hq)](q, k_old, v_old, valid_old, wq, bq, wk, bk, kv, z, out_w, lse_w, logit, out,
                               *q.stride()[:3], *k_old.stride()[:3], *v_old.stride()[:3], *valid_old.stride(),
                               *out_w.stride()[:3], *lse_w.stride(), *out.stride()[:3], t, nt, shift, HQ=hq,
                               G=hq // hkv, D=d, P=p, BT=chunk, PREC=prec, num_warps=WARPS)
    return out, new if state is None else state
