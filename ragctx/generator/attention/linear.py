"""``linear``: causal, normalized linear attention with a kernel feature map.

    out_t = sum_{s<=t} phi(q_t).phi(k_s) v_s / sum_{s<=t} phi(q_t).phi(k_s)

Feature maps: ``elu`` (elu(x) + 1, Katharopoulos et al. 2020), ``taylor`` (Based, Arora et al. 2024: the
second-order Taylor expansion of exp, phi(q).phi(k) = 1 + q.k/sqrt(D) + (q.k)^2 / (2D), with 1 + D + D(D+1)/2
features, so it suits small head dims) and ``hedgehog`` (learned per head, :mod:`.learned`: 2 x
``hedgehog_dim`` features, trained by ``ragctx linearize`` to imitate a pretrained model's softmax; the layer's
trained maps arrive as ``maps``).

Three forms of one function, tested equal for outputs and gradients:
- :func:`linear_chunkwise`: prefill. The sequence is cut into chunks of ``chunk_size``; inside a chunk the masked
  quadratic form, across chunks the running state (an exclusive cumulative sum of per-chunk phi(k)^T v), so
  time and memory are O(T) in pure torch on CPU and GPU. Inference prefill on a GPU with the ``elu`` map runs
  ragctx's own fused Triton kernels instead (:mod:`.linear_triton`; ``RAGCTX_TRITON=0`` turns them off); with
  ``fla-core`` installed, other inference prefills run its Triton chunk kernel on the same features (lazy import;
  ``RAGCTX_FLA=0`` turns it off). Same results, tested; training keeps the pure-torch form, measured faster under
  autograd.
- :func:`linear_step`: decode, one token against the recurrent state (S, z): O(1) per token.
- ``reference.linear_quadratic``: the masked O(T^2) twin.
Running states are summed in fp32 (fp64 for fp64 input) whatever the input dtype.

The registry entry runs one of four **routes**, each a public function of q, k, v and a state returning
``(o, final_state)`` (shapes above :data:`ROUTES`): ``chunkwise`` (pure torch), ``step`` (decode), ``triton``
(ragctx's kernels) and ``fla`` (fla-core). :func:`select_route` picks one per call and names it;
``with record_routes() as routes:`` collects those names, so a benchmark reports the route it timed.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from functools import lru_cache

import torch
import torch.nn.functional as F
from torch import Tensor

from ...errors import RagctxError
from .common import LinearState, group_q, optional_module, ungroup
from .learned import LEARNED
from .linear_triton import linear_prefill, supports, triton_kernels

__all__ = ["feature_map", "phi", "features", "n_features", "augmented_width", "augment", "linear_chunkwise",
           "linear_step", "linear_fla", "linear_attention", "FEATURE_MAPS", "ROUTES", "select_route", "record_routes",
           "linear_chunkwise_route", "linear_step_route", "linear_triton_route", "linear_fla_route"]

FEATURE_MAPS = ("elu", "taylor", *LEARNED)


def n_features(kind: str, head_dim: int, learned_dim: int = 64) -> int:
    """Features per head of map ``kind`` (``learned_dim``: the projections of a learned map, as
    ``ModelConfig.hedgehog_dim``)."""
    if kind == "elu":
        return head_dim
    if kind == "taylor":
        return 1 + head_dim + head_dim * (head_dim + 1) // 2
    if kind in LEARNED:
        return 2 * learned_dim
    raise RagctxError(f"unknown feature map '{kind}'; choose one of {', '.join(FEATURE_MAPS)}")


def sum_dtype(x: Tensor) -> torch.dtype:
    """The dtype running sums and states of features ``x`` are kept in: fp32 for fp16/bf16 (and fp32), fp64 for fp64
    (the tests)."""
    return torch.float64 if x.dtype == torch.float64 else torch.float32


_PAIRS: dict[tuple, tuple[Tensor, Tensor]] = {}


def _taylor_pairs(d: int, device: torch.device, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """(flat index i*d + j of the pairs i <= j in a flattened d x d outer product, their weights): the weights make
    sum_{i<=j} w^2 x_i x_j y_i y_j = (x.y)^2 / 2 (1/sqrt(2) on the diagonal, 1 off it). Kept in a plain dict (made
    once per head dim, device and dtype), which torch.compile reads as constants (it would trace an lru_cache's
    function every step)."""
    key = (d, device, dtype)
    if key not in _PAIRS:
        with torch.inference_mode(False):  # made under inference mode, they could not serve training later
            i, j = torch.triu_indices(d, d)
            _PAIRS[key] = ((i * d + j).to(device),
                           torch.where(i == j, 1 / math.sqrt(2), 1.0).to(device=device, dtype=dtype))
    return _PAIRS[key]


def feature_map(x: Tensor, kind: str) -> Tensor:
    """phi(x): [..., D] -> [..., F], in x's dtype (bf16 features feed bf16 matmuls; sums and states are fp32).

    Taylor's second-order features are picked out of the outer product x x^T with one index per pair, each index
    once: the backward pass then scatters without collisions (gathering x[..., i] * x[..., j] directly repeats
    every index D + 1 times, and its backward's atomic adds serialized on them: training ran ~13x slower than
    softmax per byte)."""
    if kind == "elu":
        return F.elu(x) + 1.0
    if kind == "taylor":
        d = x.shape[-1]
        x = x / d**0.25
        index, weight = _taylor_pairs(d, x.device, x.dtype)
        second = (x[..., :, None] * x[..., None, :]).flatten(-2).index_select(-1, index) * weight
        return torch.cat([torch.ones_like(x[..., :1]), x, second], dim=-1)
    if kind in LEARNED:
        raise RagctxError(f"feature map '{kind}' is learned: load a linearized model (ragctx linearize, or a "
                          "packaged one such as smollm2-linear) instead of switching a softmax model to it")
    raise RagctxError(f"unknown feature map '{kind}'; choose one of {', '.join(FEATURE_MAPS)}")


def augmented_width(dv: int, multiple: int = 8) -> int:
    """Columns of the values augmented with a column of ones: Dv + 1, rounded up to a multiple of ``multiple``
    (aligned rows for bf16 tensor-core matmuls; the extra columns are zeros)."""
    return -(-(dv + 1) // multiple) * multiple


def augment(v: Tensor, width: int, column: Tensor | None = None) -> Tensor:
    """[..., Dv] -> [..., width]: v, then ``column`` [...] (default ones: its product with the keys' features is the
    normalizer), then zeros. One pass: ones and zeros are broadcast views. A state (S, z) augments as (S, z)."""
    col = v.new_ones(()).expand(*v.shape[:-1], 1) if column is None else column[..., None].to(v.dtype)
    return torch.cat([v, col, v.new_zeros(()).expand(*v.shape[:-1], width - v.shape[-1] - 1)], -1)


def linear_chunkwise(
    fq: Tensor, fk: Tensor, v: Tensor, state: LinearState | None, chunk: int
) -> tuple[Tensor, Tensor, LinearState]:
    """Chunkwise-parallel causal linear attention on features.

    fq [B, Hkv, G, T, F], fk [B, Hkv, T, F] (rows of padding already zeroed), v [B, Hkv, T, Dv].
    Returns (numerator [B, Hkv, G, T, Dv], denominator [B, Hkv, G, T], state after the last token). Numerator and
    denominator come out of the same matmuls, in the features' dtype: the values carry an extra column of ones,
    whose output is the denominator. With bf16/fp16 features the matmuls run in that dtype (fp32 accumulation
    inside each, one rounding per output), while the running state is summed in fp32 across chunks (and returned
    in fp32); fp32 and fp64 features run every step in their own dtype.
    """
    b, h, g, t, f = fq.shape
    dv = v.shape[-1]
    c = max(1, min(chunk, t))
    n = -(-t // c)
    dt, acc = fq.dtype, sum_dtype(fq)
    w = augmented_width(dv)
    va = augment(v.to(dt), w)
    if n * c != t:  # zero rows up to whole chunks: like zero features, they contribute nothing
        fq, fk, va = (F.pad(x, (0, 0, 0, n * c - t)) for x in (fq, fk, va))
    # one batch entry per (B, Hkv, chunk); the G query heads of a group stacked as rows (a free view when G == 1)
    q = fq.view(b, h, g, n, c, f).transpose(2, 3).reshape(b * h * n, g * c, f)
    k = fk.reshape(b * h * n, c, f)
    va = va.view(b * h * n, c, w)
    kv = torch.bmm(k.transpose(1, 2), va).view(b, h, n, f, w)  # each chunk's sum of phi(k) [v, 1]^T
    through = torch.cumsum(kv, 2, dtype=acc)  # the state after each chunk, summed in fp32
    s_before = torch.empty_like(kv)  # the state entering each chunk: `through` shifted by one chunk
    if state is None:
        s_before[:, :, 0] = 0
    else:
        start = augment(state.s, w, state.z)
        through += start[:, :, None]
        s_before[:, :, 0] = start
    s_before[:, :, 1:] = through[:, :, :-1]
    a = torch.bmm(q, k.transpose(1, 2))  # [B*Hkv*N, G*C, C]: scores inside the chunk
    a.view(-1, g, c, c).tril_()  # causal within the chunk, for each of the G heads
    o = torch.baddbmm(torch.bmm(a, va), q, s_before.view(b * h * n, f, w))
    o = o.view(b, h, n, g, c, w).transpose(2, 3).reshape(b, h, g, n * c, w)[..., :t, :]
    last = through[:, :, -1]
    return o[..., :dv], o[..., dv], LinearState(last[..., :dv].contiguous(), last[..., dv].contiguous())


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
    visible, and where none is, num is exactly 0 too: dividing it by 1 there gives 0 with finite gradients."""
    return num / torch.where(den > 0, den, 1.0)[..., None]


@lru_cache(maxsize=1)
def fla_kernel():
    """fla-core's ``chunk_linear_attn``, or None when fla-core is not installed (or ``RAGCTX_FLA=0``)."""
    module = optional_module("fla.ops.linear_attn", "RAGCTX_FLA")
    return None if module is None else module.chunk_linear_attn


def linear_fla(fq: Tensor, fk: Tensor, v: Tensor, state: LinearState | None, kernel) -> tuple[Tensor, LinearState]:
    """Prefill through fla-core: normalized output [B, Hq, T, Dv] and the state after the last token.

    fla takes [B, T, H, F] with as many key as query heads, so keys and values are repeated per group; ``scale=1``
    because phi already holds it. As in :func:`linear_chunkwise`, the values carry a column of ones, so the
    kernel's unnormalized output holds the denominator too (fla's own ``normalize=True`` adds a separate
    cumulative-sum pass that cost ~2 ms per layer of the 100M model at 128K: eval/reports/attention). Features and
    augmented values are zero-padded to multiples of 16 (fla's bf16 backward refuses odd sizes such as Taylor's
    561; zero features change no dot product) and the state is cut back.
    """
    b, h, g, t, f = fq.shape
    dv = v.shape[-1]
    dtype = v.dtype if v.dtype in (torch.float16, torch.bfloat16) else torch.float32
    pad, w = -f % 16, augmented_width(dv, 16)
    if pad:
        fq, fk = F.pad(fq, (0, pad)), F.pad(fk, (0, pad))
    q = fq.reshape(b, h * g, t, f + pad).transpose(1, 2).to(dtype)
    k = fk.repeat_interleave(g, 1).transpose(1, 2).to(dtype)
    vv = augment(v.to(dtype), w).repeat_interleave(g, 1).transpose(1, 2)
    init = None
    if state is not None:
        init = F.pad(augment(state.s, w, state.z), (0, 0, 0, pad)).repeat_interleave(g, 1).contiguous()
    o, s = kernel(q, k, vv, scale=1.0, initial_state=init, output_final_state=True, normalize=False)
    out = normalize(o[..., :dv], o[..., dv]).transpose(1, 2)  # [B, Hq, T, Dv]
    s = s.float().view(b, h, g, f + pad, w)[:, :, 0, :f]
    return out, LinearState(s[..., :dv].contiguous(), s[..., dv].contiguous())


def phi(q: Tensor, k: Tensor, kind: str, maps=None) -> tuple[Tensor, Tensor]:
    """(phi(q) [B, Hq, T, F], phi(k) [B, Hkv, T, F]) by a fixed map, or by the layer's learned ``maps``."""
    if kind in LEARNED and maps is not None:
        return maps.q(q), maps.k(k)
    return feature_map(q, kind), feature_map(k, kind)


def features(q: Tensor, k: Tensor, valid: Tensor | None, kind: str, maps=None) -> tuple[Tensor, Tensor]:
    """(phi(q) grouped [B, Hkv, G, T, F], phi(k) [B, Hkv, T, F] with padding rows zeroed)."""
    fq, fk = phi(q, k, kind, maps)
    fq = group_q(fq, k.shape[1])
    if valid is not None:  # no padding: no pass over the features at all
        fk = fk * valid[:, None, :, None]
    return fq, fk


# -- the routes: one function each, (o, final_state) ---------------------------------------------------------
# Every route takes q [B, Hq, T, D], k [B, Hkv, T, D], v [B, Hkv, T, Dv] (RoPE applied), ``state`` the LinearState
# before the first token (s [B, Hkv, F, Dv], z [B, Hkv, F], fp32; None: empty), ``valid`` [B, T] bool or None (no
# padding), the feature map ``kind``, the layer's learned ``maps`` (or None) and the pure-torch chunk length, and
# returns (o [B, Hq, T, Dv] in q's dtype, the LinearState after the last token, fp32). It leaves ``state`` as it
# is: linear_attention writes the new one into the decoding buffers.
def linear_chunkwise_route(q, k, v, state, *, valid=None, kind="elu", maps=None, chunk=64) -> tuple[Tensor, LinearState]:
    """Pure torch, any T, CPU or GPU, with autograd: :func:`linear_chunkwise` on the features."""
    fq, fk = features(q, k, valid, kind, maps)
    num, den, new = linear_chunkwise(fq, fk, v, state, chunk)
    return ungroup(normalize(num, den)).to(q.dtype), new


def linear_step_route(q, k, v, state, *, valid=None, kind="elu", maps=None, chunk=64) -> tuple[Tensor, LinearState]:
    """Decode: T = 1 against ``state`` (required), the recurrent update in the state's dtype. ``chunk`` unused."""
    fq, fk = features(q, k, valid, kind, maps)
    num, den, new = linear_step(fq, fk, v, state)
    return ungroup(normalize(num, den)).to(q.dtype), new


def linear_triton_route(q, k, v, state, *, valid=None, kind="elu", maps=None, chunk=64) -> tuple[Tensor, LinearState]:
    """ragctx's fused Triton kernels (:func:`.linear_triton.linear_prefill`): inference, ``elu`` map, no padding, the
    shapes :func:`.linear_triton.supports` takes; its own chunk of 64 rows (``chunk`` is the pure-torch form's)."""
    if kind != "elu" or valid is not None or maps is not None:
        raise ValueError("the Triton route takes the elu map without padding or learned maps")
    return linear_prefill(q, k, v, state)


def linear_fla_route(q, k, v, state, *, valid=None, kind="elu", maps=None, chunk=64) -> tuple[Tensor, LinearState]:
    """fla-core's chunk kernel on the features (:func:`linear_fla`; inference). Needs fla-core and a GPU."""
    kernel = fla_kernel()
    if kernel is None:
        raise RagctxError("the fla route needs fla-core (pip install fla-core) and RAGCTX_FLA not 0")
    fq, fk = features(q, k, valid, kind, maps)
    out, new = linear_fla(fq, fk, v, state, kernel)
    return out.to(q.dtype), new


ROUTES = {"triton": linear_triton_route, "fla": linear_fla_route, "step": linear_step_route,
          "chunkwise": linear_chunkwise_route}  # name -> route, in the order select_route tries them
_RECORDS: list[list[str]] = []  # open record_routes() lists


def select_route(q: Tensor, k: Tensor, v: Tensor, valid: Tensor | None, state: LinearState | None, cfg) -> str:
    """The name in :data:`ROUTES` of the route that applies, recorded in every open :func:`record_routes` list.
    Inference prefill on a GPU: ragctx's own fused Triton kernels (elu map, no padding, supported shapes), else
    fla-core's when installed; under autograd the pure-torch form (it trained the Taylor-map model 2.4x faster than
    fla's kernels with 576 padded features, forward + backward: eval/reports/attention); one token with a state:
    the recurrent step; anything else: pure-torch chunkwise."""
    prefill = q.is_cuda and q.shape[2] > 1 and not torch.is_grad_enabled()
    if (prefill and cfg.feature_map == "elu" and valid is None and triton_kernels() is not None
            and supports(q, k, v)):
        name = "triton"
    elif prefill and fla_kernel() is not None:
        name = "fla"
    elif state is not None and q.shape[2] == 1:
        name = "step"
    else:
        name = "chunkwise"
    for record in _RECORDS:
        record.append(name)
    return name


@contextmanager
def record_routes():
    """``with record_routes() as routes: model(ids)``: ``routes`` lists the linear route each call took (one entry
    per linear layer call), so a benchmark can report what it timed."""
    record: list[str] = []
    _RECORDS.append(record)
    try:
        yield record
    finally:
        _RECORDS.remove(record)


def linear_attention(q, k, v, *, positions, valid, state, cfg, maps=None) -> Tensor:
    """The registry entry: the route :func:`select_route` picks; a decoding state takes the new values in place."""
    route = select_route(q, k, v, valid, state, cfg)
    out, new = ROUTES[route](q, k, v, state, valid=valid, kind=cfg.feature_map, maps=maps, chunk=cfg.chunk_size)
    if state is not None:
        state.update(new)  # in place: the state's buffers keep their addresses
    return out
