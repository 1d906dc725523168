"""``softmax``: the reference. Materializes the [T, Tk] scores in fp32 for every head: O(N^2) memory on purpose."""

from __future__ import annotations

import torch
from torch import Tensor

from .common import NEG_INF, KVCache, all_valid, allowed, group_q, ungroup

__all__ = ["softmax_attention", "masked_softmax"]


def masked_softmax(q: Tensor, k: Tensor, v: Tensor, ok: Tensor, scale: float) -> tuple[Tensor, Tensor]:
    """Softmax attention in fp32 under a boolean mask; returns (out [B, Hq, T, D], log-sum-exp [B, Hq, T]).

    q [B, Hq, T, D]; k, v [B, Hkv, Tk, D]; ok [B, 1, T, Tk]. A query that may see no key gets 0 and lse -inf.
    """
    qg = group_q(q.float(), k.shape[1])  # [B, Hkv, G, T, D]
    scores = torch.einsum("bhgtd,bhsd->bhgts", qg, k.float()) * scale  # [B, Hkv, G, T, Tk]
    scores = scores.masked_fill(~ok[:, :, None], NEG_INF)
    lse = torch.logsumexp(scores, dim=-1)  # [B, Hkv, G, T]
    probs = torch.exp(scores - lse[..., None].clamp_min(-1e30)).nan_to_num(0.0)
    out = torch.einsum("bhgts,bhsd->bhgtd", probs, v.float())
    return ungroup(out), ungroup(lse[..., None])[..., 0]


def softmax_attention(q, k, v, *, positions, valid, state, cfg) -> Tensor:
    """Causal softmax attention, readable and exact (the twin every faster variant is tested against)."""
    valid = all_valid(valid, positions)
    if state is not None:
        assert isinstance(state, KVCache)
        k, v, pos_k, valid_k = state.append(k, v, positions, valid)
    else:
        pos_k, valid_k = positions, valid
    out, _ = masked_softmax(q, k, v, allowed(positions, pos_k, valid_k), cfg.head_dim**-0.5)
    return out.to(q.dtype)
