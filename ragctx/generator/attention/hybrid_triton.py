"""A ``hybrid`` decode step with a learned (Hedgehog) feature map in two Triton kernels.

The pure-torch step (:func:`.hybrid.hybrid_attention` with T = 1) pushes the new key into the ring buffer, runs the
window's softmax, two feature maps, the state update and the log-space combination: some thirty small operations
per layer, a dozen launches even compiled into CUDA graphs; on SmolLM2 (30 layers) the step cost 2.9 ms against
1.2 ms for ``flash`` (eval/reports/decode/). Here the whole step is two launches per layer:

1. ``_hybrid_fold``, one program per (batch row x KV head, feature half): the key the ring is about to evict (its
   oldest slot) joins the linear state, in place: s += phi_k(k) v^T, z += phi_k(k).
2. ``_hybrid_attend``, one program per (batch row x query head): softmax over the ring's visible keys with the new
   key in its slot (fp32), phi_q(q) against the updated state, the learned-share combination, one store; then the
   ring takes the new key and its cursor moves on.

A first version did it all in one program per KV head: 1.97 ms per token on an H100, the query heads of a group
walked one after the other. Same numbers as the torch step (the features rounded to the model's dtype where it
rounds them; the ring, cursor and state left as it leaves them): tests/test_hybrid_triton.py checks it under
``TRITON_INTERPRET=1`` on a CPU and natively on a GPU. Only what decoding needs: inference, a learned map,
power-of-two head and projection dims from 16 to 128. Registered as the custom op ``ragctx::hybrid_decode``, so
that ``torch.compile`` (fullgraph, CUDA graphs) sees one opaque call that mutates the state. ``RAGCTX_TRITON=0``,
set before the first hybrid step of the process, turns it off (the torch step runs); so does a window of more
than :data:`MAX_SLOTS` keys, whose ring would not fit a program's registers.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .common import HybridState, optional_module

__all__ = ["fused_decode_ready", "hybrid_decode"]

WARPS = 4  # a program holds a few fp32 tiles: ring keys and values [slots, D], a state half, a projection [D, P]

_READY: dict[tuple, bool] = {}  # (device type, dtype, head dim, projection dim, slots) -> usable; a plain dict that
# torch.compile reads as a constant (filled by the eager prefill before a compiled decode step traces it)


_MODULE: list = []  # the kernels' module once looked up (or None): not looked up again on every layer and token


def _kernels():
    """(fold, attend), or None when Triton is missing or ``RAGCTX_TRITON=0`` (read at the first use)."""
    if not _MODULE:
        _MODULE.append(optional_module("._hybrid_triton_kernels", "RAGCTX_TRITON", __package__))
    module = _MODULE[0]
    return None if module is None else (module._hybrid_fold, module._hybrid_attend)


MAX_SLOTS = 128  # ring slots a program holds at once ([slots, D] tiles of keys and values in registers)


def fused_decode_ready(q: Tensor, head_dim: int, proj_dim: int, slots: int) -> bool:
    """Whether :func:`hybrid_decode` serves this step: a CUDA tensor, fp32/bf16/fp16, head and projection dims
    powers of two in 16..128, a ring of at most :data:`MAX_SLOTS` slots (a wider window runs the torch step), Triton
    importable and ``RAGCTX_TRITON`` not 0 at the first use. (On a CPU the kernels run only when called directly
    under Triton's interpreter, as the tests do.)"""
    key = (q.device.type, q.dtype, head_dim, proj_dim, slots)
    if key not in _READY:
        pow2 = lambda n: 16 <= n <= 128 and n & (n - 1) == 0  # noqa: E731
        _READY[key] = bool(q.device.type == "cuda" and pow2(head_dim) and pow2(proj_dim) and 1 <= slots <= MAX_SLOTS
                           and q.dtype in (torch.float32, torch.bfloat16, torch.float16) and _kernels() is not None)
    return _READY[key]


@torch.library.custom_op("ragctx::hybrid_decode",
                         mutates_args=("ring_k", "ring_v", "ring_pos", "ring_valid", "cursor", "s", "z"))
def _hybrid_decode_op(q: Tensor, k: Tensor, v: Tensor, pos: Tensor, valid: Tensor, ring_k: Tensor, ring_v: Tensor,
                      ring_pos: Tensor, ring_valid: Tensor, cursor: Tensor, s: Tensor, z: Tensor, wq: Tensor,
                      bq: Tensor, wk: Tensor, bk: Tensor, logit: Tensor, window: int) -> Tensor:
    fold, attend = _kernels()
    b, hq, _, d = q.shape
    hkv, n_slots, p = ring_k.shape[1], ring_k.shape[2], wq.shape[-1]
    q, k, v = (x if x.stride(-1) == 1 else x.contiguous() for x in (q, k, v))
    out = torch.empty(b, hq, 1, d, device=q.device, dtype=q.dtype)
    slot = torch.empty(1, device=q.device, dtype=cursor.dtype)  # the slot the new key takes, from fold to attend
    wq, bq, wk, bk, logit, pos, valid = (x.contiguous() for x in (wq, bq, wk, bk, logit, pos, valid))
    fold[(b * hkv, 2)](ring_k, ring_v, ring_valid, cursor, s, z, wk, bk, slot, *ring_k.stride()[:3],
                       *ring_v.stride()[:3], n_slots, HKV=hkv, D=d, P=p, num_warps=WARPS)
    attend[(b * hq,)](q, k, v, pos, valid, ring_k, ring_v, ring_pos, ring_valid, cursor, s, z, wq, bq, logit, slot,
                      out, q.stride(0), q.stride(1), k.stride(0), k.stride(1), v.stride(0), v.stride(1),
                      *ring_k.stride()[:3], *ring_v.stride()[:3], out.stride(0), out.stride(1), n_slots, window,
                      d**-0.5, HQ=hq, G=hq // hkv, D=d, P=p, BW=1 << (max(1, n_slots) - 1).bit_length(),
                      num_warps=WARPS)
    return out


@_hybrid_decode_op.register_fake
def _(q, k, v, pos, valid, ring_k, ring_v, ring_pos, ring_valid, cursor, s, z, wq, bq, wk, bk, logit, window):
    return torch.empty_like(q)


def hybrid_decode(q: Tensor, k: Tensor, v: Tensor, positions: Tensor, valid: Tensor, state: HybridState, maps,
                  window: int) -> Tensor:
    """One decode token's hybrid attention with learned maps: q [B, Hq, 1, D], the new key and value k, v
    [B, Hkv, 1, D], positions and validity [B, 1]. Writes the new key into ``state.ring`` (its oldest slot, which
    joins ``state.linear``) in place and returns [B, Hq, 1, D] in q's dtype, as the torch step does. Check
    :func:`fused_decode_ready` first. The state must be as ``make_state`` builds it (contiguous; fp32 linear state
    [B, Hkv, 2P, D] and [B, Hkv, 2P])."""
    ring, lin = state.ring, state.linear
    ring.fresh = False
    return _hybrid_decode_op(q, k, v, positions, valid, ring.k, ring.v, ring.pos, ring.valid, ring.cursor, lin.s,
                             lin.z, maps.q.weight, maps.q.bias, maps.k.weight, maps.k.bias, maps.window_logit,
                             int(window))
