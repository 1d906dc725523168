"""Learned feature maps for linear and hybrid attention: Hedgehog's map as LoLCATs uses it.

Per head h, with a trainable projection W_h [D, P] and bias b_h [P],

    phi_h(x) = [softmax(x W_h + b_h), softmax(-(x W_h + b_h))]   (2P features, each half sums to 1)

so phi(q).phi(k) is positive and spiky like exp(q.k): trained to imitate a pretrained model's softmax
attention (``ragctx.generator.linearize``), it turns that model into a linear or hybrid one. W starts as the
identity when P equals the head dimension (phi then depends on the raw query and key directions), else as a
random orthonormal projection.

A layer's :class:`FeatureMaps` hold one map for its query heads, one for its key/value heads, and, for
``hybrid``, each query head's learned share of the sliding window (see ``hybrid.py``). The attention functions
receive them as ``maps``; the fixed maps (``elu``, ``taylor``) need none.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["HedgehogMap", "FeatureMaps", "LEARNED"]

LEARNED = ("hedgehog",)  # feature maps with trained parameters (the rest are fixed functions)


class HedgehogMap(nn.Module):
    """phi for ``heads`` heads of width ``head_dim``: [B, H, T, D] -> [B, H, T, 2 * dim], in the input's dtype
    (the softmax is taken in fp32, or fp64 for fp64 input)."""

    def __init__(self, heads: int, head_dim: int, dim: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(heads, head_dim, dim))
        self.bias = nn.Parameter(torch.zeros(heads, dim))
        with torch.no_grad():
            if dim == head_dim:
                self.weight.copy_(torch.eye(dim).expand(heads, dim, dim))
            else:
                for w in self.weight:
                    nn.init.orthogonal_(w)

    def forward(self, x: Tensor) -> Tensor:
        wide = torch.float64 if x.dtype == torch.float64 else torch.float32
        z = torch.einsum("bhtd,hdp->bhtp", x.to(self.weight.dtype), self.weight) + self.bias[:, None]
        z = z.to(wide)
        return torch.cat([F.softmax(z, -1), F.softmax(-z, -1)], -1).to(x.dtype)


class FeatureMaps(nn.Module):
    """One layer's learned maps: ``q`` (``n_heads``), ``k`` (``n_kv_heads``) and ``window_logit`` [n_heads]: under
    ``hybrid``, sigmoid(window_logit) is the share of attention the window's softmax gets against a total of
    (1 - share) * sum phi(q).phi(k) for the keys that left it."""

    def __init__(self, n_heads: int, n_kv_heads: int, head_dim: int, dim: int) -> None:
        super().__init__()
        self.q = HedgehogMap(n_heads, head_dim, dim)
        self.k = HedgehogMap(n_kv_heads, head_dim, dim)
        self.window_logit = nn.Parameter(torch.zeros(n_heads))

    def window_share(self, like: Tensor) -> tuple[Tensor, Tensor]:
        """(log share, log (1 - share)) as [1, Hq, 1] in ``like``'s dtype, for the hybrid's combination."""
        logit = self.window_logit.to(like.dtype)[None, :, None]
        return F.logsigmoid(logit), F.logsigmoid(-logit)
