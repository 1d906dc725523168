"""Reference twins: naive, loop-free-of-tricks versions that each fast variant is tested against.

Each takes full sequences with no cache: q [B, Hq, T, D], k, v [B, Hkv, T, D], ``valid`` [B, T] bool, and
computes in float64 from the definition.
"""

from __future__ import annotations

import copy

import torch
from torch import Tensor

from .learned import LEARNED
from .linear import phi

__all__ = ["softmax_reference", "window_reference", "linear_quadratic", "linear_recurrent", "hybrid_reference"]


def _div(num: Tensor, den: Tensor) -> Tensor:
    """num / den with 0 where den == 0, and finite gradients there (a plain where would pass NaN back)."""
    seen = den > 0
    return torch.where(seen, num / torch.where(seen, den, 1.0), 0.0)


def _expand(k: Tensor, hq: int) -> Tensor:
    return k.repeat_interleave(hq // k.shape[1], dim=1).double()


def _positions(valid: Tensor) -> Tensor:
    return (valid.long().cumsum(1) - 1).clamp_min(0)


def _mask(valid: Tensor, window: int | None) -> Tensor:
    """[B, 1, T, T]: key valid, causal by position, inside the window."""
    pos = _positions(valid)
    diff = pos[:, :, None] - pos[:, None, :]
    ok = (diff >= 0) & valid[:, None, :]
    if window is not None:
        ok &= diff < window
    return ok[:, None]


def _softmax_weights(q, k, ok):
    scores = torch.einsum("bhtd,bhsd->bhts", q.double(), _expand(k, q.shape[1])) / q.shape[-1] ** 0.5
    return torch.exp(scores).masked_fill(~ok, 0.0)  # unnormalized: inputs are small in tests


def softmax_reference(q, k, v, valid, window: int | None = None) -> Tensor:
    e = _softmax_weights(q, k, _mask(valid, window))
    den = e.sum(-1, keepdim=True)
    out = torch.einsum("bhts,bhsd->bhtd", e, _expand(v, q.shape[1]))
    return _div(out, den)


def window_reference(q, k, v, valid, window: int) -> Tensor:
    return softmax_reference(q, k, v, valid, window)


def _phi(q, k, valid, kind, maps):
    """phi(q), phi(k) in float64, padding keys zeroed (a learned map's parameters are cast to float64)."""
    if maps is not None:
        maps = copy.deepcopy(maps).double()
    fq, fk = phi(q.double(), k.double(), kind, maps)
    return fq.double(), fk.double() * valid[:, None, :, None]


def _linear_weights(q, k, valid, kind, older_than: int | None = None, maps=None):
    fq, fk = _phi(q, k, valid, kind, maps)
    a = torch.einsum("bhtf,bhsf->bhts", fq, _expand(fk, q.shape[1]))
    pos = _positions(valid)
    diff = pos[:, :, None] - pos[:, None, :]
    ok = (diff >= (older_than or 0))[:, None]
    return a.masked_fill(~ok, 0.0)


def linear_quadratic(q, k, v, valid, kind: str, maps=None) -> Tensor:
    """The masked O(T^2) form: A = phi(Q) phi(K)^T under the causal mask; out = A V / A 1."""
    a = _linear_weights(q, k, valid, kind, maps=maps)
    den = a.sum(-1, keepdim=True)
    out = torch.einsum("bhts,bhsd->bhtd", a, _expand(v, q.shape[1]))
    return _div(out, den)


def linear_recurrent(q, k, v, valid, kind: str, maps=None) -> Tensor:
    """Token by token: S += phi(k) v^T, z += phi(k); out = phi(q) S / phi(q) z."""
    fq, fk = _phi(q, k, valid, kind, maps)
    fk, v = _expand(fk, q.shape[1]), _expand(v, q.shape[1])
    b, h, t, f = fq.shape
    s = fq.new_zeros(b, h, f, v.shape[-1])
    z = fq.new_zeros(b, h, f)
    outs = []
    for i in range(t):
        s = s + fk[:, :, i, :, None] * v[:, :, i, None, :]
        z = z + fk[:, :, i]
        num = torch.einsum("bhf,bhfd->bhd", fq[:, :, i], s)
        den = torch.einsum("bhf,bhf->bh", fq[:, :, i], z)[..., None]
        outs.append(_div(num, den))
    return torch.stack(outs, 2)


def hybrid_reference(q, k, v, valid, window: int, kind: str, maps=None) -> Tensor:
    """exp weights inside the window, phi(q).phi(k) weights for older keys, one normalization over both. With a
    learned map the window's weights are its softmax times the head's share s, the older keys' (1 - s) phi.phi."""
    e = _softmax_weights(q, k, _mask(valid, window))
    a = _linear_weights(q, k, valid, kind, older_than=window, maps=maps)
    if kind in LEARNED:
        share = torch.sigmoid(maps.window_logit.double())[None, :, None, None]
        e = share * _div(e, e.sum(-1, keepdim=True))
        a = (1 - share) * a
    wts = e + a
    den = wts.sum(-1, keepdim=True)
    out = torch.einsum("bhts,bhsd->bhtd", wts, _expand(v, q.shape[1]))
    return _div(out, den)
