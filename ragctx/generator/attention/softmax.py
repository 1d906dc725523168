"""``softmax``: the reference. Materializes the [T, Tk] scores in fp32 for every head: O(N^2) memory on purpose."""

from __future__ import annotations

import torch
from torch import Tensor

from .common import NEG_INF, all_valid, allowed, group_q, ungroup, visible_keys

__all__ = ["softmax_attention", "masked_softmax", "softmax_lse"]

# torch's fused attention for CPUs (FlashAttention's tiling: no [T, Tk] scores), the one SDPA kernel that also returns
# the log-sum-exp; private, so looked up rather than assumed (None: masked_softmax serves)
_FUSED_CPU = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)


def masked_softmax(q: Tensor, k: Tensor, v: Tensor, ok: Tensor, scale: float) -> tuple[Tensor, Tensor]:
    """Softmax attention in fp32 under a boolean mask; returns (out [B, Hq, T, D], log-sum-exp [B, Hq, T]).

    q [B, Hq, T, D]; k, v [B, Hkv, Tk, D]; ok [B, 1, T, Tk]. A query that may see no key gets 0 and lse -inf.
    """
    qg = group_q(q.float(), k.shape[1])  # [B, Hkv, G, T, D]
    scores = torch.einsum("bhgtd,bhsd->bhgts", qg, k.float()) * scale  # [B, Hkv, G, T, Tk]
    mask = ok[:, :, None]
    any_key = mask.any(-1)  # [B, 1, 1, T]: rows with something to attend to (padding queries have nothing)
    if torch.is_grad_enabled() and scores.requires_grad:
        scores = scores.masked_fill(~mask, NEG_INF).masked_fill(~any_key[..., None], 0.0)  # empty rows stay finite
        lse = torch.logsumexp(scores, dim=-1)  # [B, Hkv, G, T]
        probs = torch.exp(scores - lse[..., None]) * any_key[..., None]
    else:  # inference: the same steps in place, so one [T, Tk] fp32 tensor per head is alive, not three
        scores.masked_fill_(~mask, NEG_INF).masked_fill_(~any_key[..., None], 0.0)
        lse = torch.logsumexp(scores, dim=-1)
        probs = scores.sub_(lse[..., None]).exp_().mul_(any_key[..., None])
    lse = lse.masked_fill(~any_key, NEG_INF)
    out = torch.einsum("bhgts,bhsd->bhgtd", probs, v.float())
    return ungroup(out), ungroup(lse[..., None])[..., 0]


def softmax_lse(q: Tensor, k: Tensor, v: Tensor, ok: Tensor, scale: float) -> tuple[Tensor, Tensor]:
    """:func:`masked_softmax`'s (out, log-sum-exp), fp32, through torch's fused CPU attention kernel when it serves:
    CPU tensors of at most fp32 and no autograd. It tiles the scores instead of materializing [T, Tk] of them for
    every head, so the hybrid's window prefill on a CPU moves a fraction of the memory (equal to masked_softmax
    within 1e-5: tests/test_attention.py). Elsewhere (GPU, fp64, training) it is masked_softmax."""
    if (_FUSED_CPU is None or q.device.type != "cpu" or q.dtype == torch.float64
            or (torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad))):
        return masked_softmax(q, k, v, ok, scale)
    g = q.shape[1] // k.shape[1]
    kf, vf = k.float(), v.float()
    if g > 1:  # the kernel takes as many key heads as query heads
        kf, vf = kf.repeat_interleave(g, 1), vf.repeat_interleave(g, 1)
    any_key = ok.any(-1)  # [B, 1, T]: a query with no visible key (padding) gets 0 and lse -inf, as masked_softmax
    bias = torch.zeros(ok.shape, dtype=torch.float32).masked_fill_(~(ok | ~any_key[..., None]), NEG_INF)
    out, lse = _FUSED_CPU(q.float(), kf, vf, 0.0, False, attn_mask=bias, scale=scale)
    return out.masked_fill(~any_key[..., None], 0.0), lse.masked_fill(~any_key, NEG_INF)


def softmax_attention(q, k, v, *, positions, valid, state, cfg, maps=None) -> Tensor:
    """Causal softmax attention, readable and exact (the twin every faster variant is tested against)."""
    k, v, pos_k, valid_k = visible_keys(state, k, v, positions, all_valid(valid, positions))
    out, _ = masked_softmax(q, k, v, allowed(positions, pos_k, valid_k), cfg.head_dim**-0.5)
    return out.to(q.dtype)
