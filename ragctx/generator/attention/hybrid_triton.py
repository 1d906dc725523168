"""One fused Triton kernel for a ``hybrid`` decode step with a learned (Hedgehog) feature map.

The pure-torch step (:func:`.hybrid.hybrid_attention` with T = 1) runs the window's softmax, two feature maps, the
state update and the log-space combination as some twenty small operations per layer; even compiled into CUDA
graphs they are a dozen launches, and on SmolLM2 (30 layers) the step cost 2.9 ms against 1.2 ms for ``flash``
(eval/reports/decode/). Here, after the ring buffer has taken the new key (``RingBuffer.push``, in torch), one
program per (batch row, KV head):

1. folds the key the ring evicted into the linear state, in place: s += phi_k(k) v^T, z += phi_k(k);
2. for each query head of the group: softmax over the ring's visible keys (fp32, with its log-sum-exp), phi_q(q)
   against the updated state, and the learned-share combination of the two, written once.

Same numbers as the torch step (the features rounded to the model's dtype where it rounds them); checked against
it by tests/test_hybrid_triton.py, under ``TRITON_INTERPRET=1`` on a CPU and natively on a GPU. Only what decoding
needs: inference, a learned map, power-of-two head and projection dims from 16 to 128. Registered as the custom op
``ragctx::hybrid_decode`` so that ``torch.compile`` (fullgraph, CUDA graphs) sees one opaque call that mutates the
state. ``RAGCTX_TRITON=0`` turns it off (the torch step runs).
"""

from __future__ import annotations

import torch
from torch import Tensor

from .common import HybridState, optional_module

__all__ = ["fused_decode_ready", "hybrid_decode"]

WARPS = 8  # the program holds five [64, 64] fp32 tiles (ring k, v, two state halves, a projection)

_READY: dict[tuple, bool] = {}  # (device type, dtype, head dim, projection dim) -> usable; a plain dict that
# torch.compile reads as a constant (filled by the eager prefill before a compiled decode step traces it)


def _kernel():
    module = optional_module("._hybrid_triton_kernels", "RAGCTX_TRITON", __package__)
    return None if module is None else module._hybrid_decode


def fused_decode_ready(q: Tensor, head_dim: int, proj_dim: int) -> bool:
    """Whether :func:`hybrid_decode` serves this step: a CUDA tensor, fp32/bf16/fp16, head and projection dims
    powers of two in 16..128, Triton importable and ``RAGCTX_TRITON`` not 0. (On a CPU the kernel runs only when
    called directly under Triton's interpreter, as the tests do.)"""
    key = (q.device.type, q.dtype, head_dim, proj_dim)
    if key not in _READY:
        pow2 = lambda n: 16 <= n <= 128 and n & (n - 1) == 0  # noqa: E731
        _READY[key] = bool(q.device.type == "cuda" and pow2(head_dim) and pow2(proj_dim)
                           and q.dtype in (torch.float32, torch.bfloat16, torch.float16) and _kernel() is not None)
    return _READY[key]


@torch.library.custom_op("ragctx::hybrid_decode", mutates_args=("s", "z"))
def _hybrid_decode_op(q: Tensor, pos: Tensor, ring_k: Tensor, ring_v: Tensor, ring_pos: Tensor, ring_valid: Tensor,
                      old_k: Tensor, old_v: Tensor, old_valid: Tensor, s: Tensor, z: Tensor, wq: Tensor, bq: Tensor,
                      wk: Tensor, bk: Tensor, logit: Tensor, window: int) -> Tensor:
    b, hq, _, d = q.shape
    hkv, n_slots, p = ring_k.shape[1], ring_k.shape[2], wq.shape[-1]
    q, ring_k, ring_v, old_k, old_v = (x if x.stride(-1) == 1 else x.contiguous()
                                       for x in (q, ring_k, ring_v, old_k, old_v))
    out = torch.empty(b, hq, 1, d, device=q.device, dtype=q.dtype)
    block = 1 << (max(1, n_slots) - 1).bit_length()
    _kernel()[(b * hkv,)](
        q, pos.contiguous(), ring_k, ring_v, ring_pos.contiguous(), ring_valid.contiguous(), old_k, old_v,
        old_valid.contiguous(), s, z, wq.contiguous(), bq.contiguous(), wk.contiguous(), bk.contiguous(),
        logit.contiguous(), out, q.stride(0), q.stride(1), ring_k.stride(0), ring_k.stride(1), ring_k.stride(2),
        ring_v.stride(0), ring_v.stride(1), ring_v.stride(2), old_k.stride(0), old_k.stride(1), old_v.stride(0),
        old_v.stride(1), out.stride(0), out.stride(1), n_slots, window, d**-0.5,
        HKV=hkv, G=hq // hkv, D=d, P=p, BW=block, num_warps=WARPS)
    return out


@_hybrid_decode_op.register_fake
def _(q, pos, ring_k, ring_v, ring_pos, ring_valid, old_k, old_v, old_valid, s, z, wq, bq, wk, bk, logit, window):
    return torch.empty_like(q)


def hybrid_decode(q: Tensor, positions: Tensor, state: HybridState, evicted: tuple[Tensor, Tensor, Tensor], maps,
                  window: int) -> Tensor:
    """One decode token's hybrid attention with learned maps, after ``state.ring.push`` took its key and value and
    returned ``evicted`` (the key, value and validity that left the window). q [B, Hq, 1, D], positions [B, 1];
    updates ``state.linear`` in place; returns [B, Hq, 1, D] in q's dtype. Check :func:`fused_decode_ready` first.
    The state must be contiguous fp32 ([B, Hkv, 2P, D] and [B, Hkv, 2P]), as ``make_state`` builds it."""
    old_k, old_v, old_valid = evicted
    ring, lin = state.ring, state.linear
    return _hybrid_decode_op(q, positions, ring.k, ring.v, ring.pos, ring.valid, old_k, old_v, old_valid, lin.s,
                             lin.z, maps.q.weight, maps.q.bias, maps.k.weight, maps.k.bias, maps.window_logit,
                             int(window))
