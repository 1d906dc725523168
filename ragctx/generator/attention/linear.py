"""``linear``: causal, normalized linear attention with a kernel feature map.

    out_t = sum_{s<=t} phi(q_t).phi(k_s) v_s / sum_{s<=t} phi(q_t).phi(k_s)

Feature maps: ``elu`` (elu(x) + 1, Katharopoulos et al. 2020) and ``taylor`` (Based, Arora et al. 2024: the
second-order Taylor expansion of exp, phi(q).phi(k) = 1 + q.k/sqrt(D) + (q.k)^2 / (2D), with 1 + D + D(D+1)/2
features, so it suits small head dims).

Three forms of one function, tested equal for outputs and gradients:
- :func:`linear_chunkwise`: prefill. The sequence is cut into chunks of ``chunk_size``; inside a chunk the masked
  quadratic form, across chunks the running state (an exclusive cumulative sum of per-chunk phi(k)^T v), so
  time and memory are O(T) in pure torch on CPU and GPU. With ``fla-core`` installed, prefill on a GPU runs its
  Triton chunk kernel on the same features instead (lazy import; ``RAGCTX_FLA=0`` turns it off; same results,
  tested on the GPU).
- :func:`linear_step`: decode, one token against the recurrent state (S, z): O(1) per token.
- ``reference.linear_quadratic``: the masked O(T^2) twin.
State and accumulations are fp32 whatever the input dtype.
"""

from __future__ import annotations

import math
import os
from functools import lru_cache

import torch
import torch.nn.functional as F
from torch import Tensor

from ...errors import RagctxError
from .common import LinearState, group_q, ungroup

__all__ = ["feature_map", "n_features", "linear_chunkwise", "linear_step", "linear_attention", "FEATURE_MAPS"]

FEATURE_MAPS = ("elu", "taylor")


def n_features(kind: str, head_dim: int) -> int:
    if kind == "elu":
        return head_dim
    if kind == "taylor":
        return 1 + head_dim + head_dim * (head_dim + 1) // 2
    raise RagctxError(f"unknown feature map '{kind}'; choose one of {', '.join(FEATURE_MAPS)}")


def sum_dtype(x: Tensor) -> torch.dtype:
    """The dtype running sums and states of features ``x`` are kept in: fp32 for fp16/bf16 (and fp32), fp64 for fp64
    (the tests)."""
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def feature_map(x: Tensor, kind: str) -> Tensor:
    """phi(x): [..., D] -> [..., F], in x's dtype (bf16 features feed bf16 matmuls; sums and states are fp32)."""
    if kind == "elu":
        return F.elu(x) + 1.0
    if kind == "taylor":
        d = x.shape[-1]
        x = x / d**0.25
        i, j = torch.triu_indices(d, d, device=x.device)
        weight = torch.where(i == j, 1 / math.sqrt(2), 1.0).to(x.dtype)  # sum_{i<=j} w^2 x_i x_j y_i y_j = (x.y)^2/2
        second = x[..., i] * x[..., j] * weight
        return torch.cat([torch.ones_like(x[..., :1]), x, second], dim=-1)
    raise RagctxError(f"unknown feature map '{kind}'; choose one of {', '.join(FEATURE_MAPS)}")


def linear_chunkwise(
    fq: Tensor, fk: Tensor, v: Tensor, state: LinearState | None, chunk: int
) -> tuple[Tensor, Tensor, LinearState]:
    """Chunkwise-parallel causal linear attention on features.

    fq [B, Hkv, G, T, F], fk [B, Hkv, T, F] (rows of padding already zeroed), v [B, Hkv, T, Dv].
    Returns (numerator [B, Hkv, G, T, Dv], denominator [B, Hkv, G, T], state after the last token), all fp32 (fp64
    for fp64 input). With bf16/fp16 features the matmuls run in that dtype (fp32 accumulation inside each), while
    the running state is summed in fp32 across chunks; fp32 and fp64 features run every step in their own dtype.
    """
    b, h, g, t, f = fq.shape
    dv = v.shape[-1]
    c = max(1, min(chunk, t))
    n = -(-t // c)
    pad = n * c - t
    dt = fq.dtype
    acc = sum_dtype(fq)  # dtype of sums across chunks and of the results
    v = v.to(dt)
    if pad:  # zero rows contribute nothing
        fq, fk, v = F.pad(fq, (0, 0, 0, pad)), F.pad(fk, (0, 0, 0, pad)), F.pad(v, (0, 0, 0, pad))
    # queries of one chunk, all G of a group together: [B, Hkv, N, G*C, F] (a free view when G == 1)
    q = fq.view(b, h, g, n, c, f).transpose(2, 3).reshape(b, h, n, g * c, f)
    k = fk.view(b, h, n, c, f)
    v = v.view(b, h, n, c, dv)
    kv = torch.matmul(k.transpose(-1, -2), v)  # [B, Hkv, N, F, Dv]: each chunk's sum of phi(k) v^T
    ks = k.sum(3, dtype=acc)  # [B, Hkv, N, F]
    s_before = torch.cumsum(kv, 2, dtype=acc).sub_(kv)  # exclusive prefix sums: the state entering each chunk
    z_before = torch.cumsum(ks, 2).sub_(ks)
    if state is not None:
        s_before.add_(state.s[:, :, None])
        z_before.add_(state.z[:, :, None])
    a = torch.matmul(q, k.transpose(-1, -2))  # [B, Hkv, N, G*C, C] scores inside the chunk
    causal = torch.ones(c, c, dtype=torch.bool, device=fq.device).tril().repeat(g, 1)
    a = a.masked_fill(~causal, 0.0)
    num = torch.matmul(q, s_before.to(dt)).add_(torch.matmul(a, v)).to(acc)  # [B, Hkv, N, G*C, Dv]
    den = torch.matmul(q, z_before.to(dt)[..., None])[..., 0].to(acc).add_(a.sum(-1, dtype=acc))
    num = num.view(b, h, n, g, c, dv).transpose(2, 3).reshape(b, h, g, n * c, dv)[..., :t, :]
    den = den.view(b, h, n, g, c).transpose(2, 3).reshape(b, h, g, n * c)[..., :t]
    last = (s_before[:, :, -1] + kv[:, :, -1].to(acc), z_before[:, :, -1] + ks[:, :, -1])
    return num, den, LinearState(*last)


def linear_step(fq: Tensor, fk: Tensor, v: Tensor, state: LinearState) -> tuple[Tensor, Tensor, LinearState]:
    """One token: fq [B, Hkv, G, 1, F], fk [B, Hkv, 1, F], v [B, Hkv, 1, Dv]; the recurrent update (in the state's
    dtype, fp32 or fp64)."""
    fq, fk, v = (x.to(state.s.dtype) for x in (fq, fk, v))
    s = state.s + torch.einsum("bhf,bhd->bhfd", fk[:, :, 0], v[:, :, 0])
    z = state.z + fk[:, :, 0]
    num = torch.einsum("bhgtf,bhfd->bhgtd", fq, s)
    den = torch.einsum("bhgtf,bhf->bhgt", fq, z)
    return num, den, LinearState(s, z)


def normalize(num: Tensor, den: Tensor) -> Tensor:
    """num / den, with 0 where no key was seen. Both feature maps are positive, so den > 0 whenever a key is
    visible and no epsilon is needed."""
    seen = den[..., None] > 0
    return torch.where(seen, num / torch.where(seen, den[..., None], 1.0), 0.0)


@lru_cache(maxsize=1)
def fla_kernel():
    """fla-core's ``chunk_linear_attn``, or None when fla-core is not installed (or ``RAGCTX_FLA=0``)."""
    if os.environ.get("RAGCTX_FLA", "1") == "0":
        return None
    try:
        from fla.ops.linear_attn import chunk_linear_attn
    except ImportError:
        return None
    return chunk_linear_attn


def linear_fla(fq: Tensor, fk: Tensor, v: Tensor, state: LinearState | None, kernel) -> tuple[Tensor, LinearState]:
    """Prefill through fla-core: normalized output [B, Hq, T, Dv] and the state after the last token.

    fla takes [B, T, H, F] with as many key as query heads, so keys, values and state are repeated per group;
    ``scale=1`` because phi already holds it (and the scale cancels in the normalized output anyway). Features are
    zero-padded to a multiple of 16 (fla's bf16 backward refuses odd sizes such as Taylor's 561; zero features
    change no dot product) and the state is cut back.
    """
    b, h, g, t, f = fq.shape
    dtype = v.dtype if v.dtype in (torch.float16, torch.bfloat16) else torch.float32
    pad = -f % 16
    q = F.pad(fq.reshape(b, h * g, t, f), (0, pad)).transpose(1, 2).to(dtype)
    k = F.pad(fk, (0, pad)).repeat_interleave(g, 1).transpose(1, 2).to(dtype)
    vv = v.repeat_interleave(g, 1).transpose(1, 2).to(dtype)
    init = None
    if state is not None:
        s0 = F.pad(state.s, (0, 0, 0, pad)).repeat_interleave(g, 1).contiguous()
        z0 = F.pad(state.z, (0, pad)).repeat_interleave(g, 1)[:, None].contiguous()
        init = (s0, z0)
    o, (s, z) = kernel(q, k, vv, scale=1.0, initial_state=init, output_final_state=True, normalize=True)
    s = s.float().view(b, h, g, f + pad, -1)[:, :, 0, :f]
    z = z.float().view(b, h, g, f + pad)[:, :, 0, :f]
    return o.transpose(1, 2), LinearState(s, z)


def features(q: Tensor, k: Tensor, valid: Tensor | None, kind: str) -> tuple[Tensor, Tensor]:
    """(phi(q) grouped [B, Hkv, G, T, F], phi(k) [B, Hkv, T, F] with padding rows zeroed)."""
    fq = group_q(feature_map(q, kind), k.shape[1])
    fk = feature_map(k, kind)
    if valid is not None:  # no padding: no pass over the features at all
        fk = fk * valid[:, None, :, None]
    return fq, fk


def linear_attention(q, k, v, *, positions, valid, state, cfg) -> Tensor:
    fq, fk = features(q, k, valid, cfg.feature_map)
    kernel = fla_kernel() if q.is_cuda and q.shape[2] > 1 else None
    if kernel is not None:
        out, new = linear_fla(fq, fk, v, state, kernel)
    else:
        if state is not None and q.shape[2] == 1:
            num, den, new = linear_step(fq, fk, v, state)
        else:
            num, den, new = linear_chunkwise(fq, fk, v, state, cfg.chunk_size)
        out = ungroup(normalize(num, den))
    if state is not None:
        state.s, state.z = new.s, new.z
    return out.to(q.dtype)
