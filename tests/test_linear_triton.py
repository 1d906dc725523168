"""ragctx's own Triton kernels for linear-attention prefill (ragctx/generator/attention/linear_triton.py) against
the masked quadratic reference and the pure-torch chunkwise form.

On a machine without a GPU the kernels run under Triton's interpreter (TRITON_INTERPRET=1, numpy on the CPU), in
fp32: the interpreter's bf16 dot gives wrong products (errors near 1e10 with Triton 3.9), so bf16 is checked on
the GPU only."""

from __future__ import annotations

import os

import pytest
import torch

if not torch.cuda.is_available():  # before the kernels are defined (on first use): Triton's interpreter
    os.environ.setdefault("TRITON_INTERPRET", "1")
pytest.importorskip("triton")

from ragctx.generator.attention import get_attention  # noqa: E402
from ragctx.generator.attention.common import LinearState  # noqa: E402
from ragctx.generator.attention.reference import linear_quadratic  # noqa: E402
from ragctx.generator.config import ModelConfig  # noqa: E402

GPU = torch.cuda.is_available()
DEVICE = "cuda" if GPU else "cpu"


@pytest.fixture(scope="module")
def kernels():
    """The kernels (interpreted on a CPU-only machine: see the top of this file)."""
    from ragctx.generator.attention import linear_triton

    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("RAGCTX_TRITON", raising=False)
        linear_triton.triton_kernels.cache_clear()
        if linear_triton.triton_kernels() is None:
            pytest.skip("Triton kernels unavailable")
        yield linear_triton


def _qkv(b, hq, hkv, t, d, dv, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(b, hq, t, d, generator=g, dtype=torch.float64)
    k = torch.randn(b, hkv, t, d, generator=g, dtype=torch.float64)
    v = torch.randn(b, hkv, t, dv, generator=g, dtype=torch.float64)
    return (x.to(DEVICE, dtype) for x in (q, k, v))


# (batch, query heads, KV heads, tokens, head dim, value dim, chunk): GQA, a ragged last chunk, one token, three
# query heads on one KV head over 7 chunks, value blocks (Dv = 128 runs two programs of 64 columns)
SHAPES = [(2, 4, 2, 50, 16, 32, 16), (1, 2, 2, 64, 32, 16, 32), (1, 1, 1, 1, 16, 16, 16), (1, 3, 1, 97, 16, 16, 16),
          (1, 2, 1, 40, 16, 128, 16)]


# scan steps of 1 and 4 chunks (4: 97 tokens end mid-step); the other tests take the default, 8
@pytest.mark.parametrize("unroll", [1, 4], ids=lambda u: f"scan{u}")
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_prefill_equals_the_quadratic_definition_and_returns_the_final_state(kernels, shape, unroll):
    b, hq, hkv, t, d, dv, chunk = shape
    q, k, v = _qkv(b, hq, hkv, t, d, dv)
    out, state = kernels.linear_prefill(q, k, v, None, chunk=chunk, scan_unroll=unroll)
    assert out.shape == (b, hq, t, dv) and out.dtype == q.dtype
    valid = torch.ones(b, t, dtype=torch.bool, device=DEVICE)
    torch.testing.assert_close(out.double(), linear_quadratic(q, k, v, valid, "elu"), atol=2e-5, rtol=2e-5)
    fk = torch.nn.functional.elu(k.double()) + 1  # the state after the last token: sum phi(k) v^T and sum phi(k)
    torch.testing.assert_close(state.s.double(), fk.transpose(-1, -2) @ v.double(), atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(state.z.double(), fk.sum(2), atol=1e-4, rtol=1e-5)


@pytest.mark.parametrize("unroll", [1, 2])
def test_prefill_continues_from_a_state_as_one_long_prefill(kernels, unroll):
    q, k, v = _qkv(1, 4, 2, 75, 16, 16, seed=1)
    whole, end = kernels.linear_prefill(q, k, v, None, chunk=16)
    head, mid = kernels.linear_prefill(q[:, :, :30], k[:, :, :30], v[:, :, :30], None, chunk=16)
    tail, end2 = kernels.linear_prefill(q[:, :, 30:], k[:, :, 30:], v[:, :, 30:], mid, chunk=16, scan_unroll=unroll)
    torch.testing.assert_close(torch.cat([head, tail], 2), whole, atol=2e-5, rtol=2e-5)
    torch.testing.assert_close(end2.s, end.s, atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(end2.z, end.z, atol=1e-4, rtol=1e-5)


def test_prefill_reads_strided_inputs_as_the_model_passes_them(kernels):
    """The model hands q, k, v as transposed views of [B, T, H, D] projections: not contiguous, unit last stride."""
    b, t, hq, hkv, d = 2, 33, 4, 2, 16
    g = torch.Generator().manual_seed(2)
    q = torch.randn(b, t, hq, d, generator=g).to(DEVICE).transpose(1, 2)
    k = torch.randn(b, t, hkv, d, generator=g).to(DEVICE).transpose(1, 2)
    v = torch.randn(b, t, hkv, d, generator=g).to(DEVICE).transpose(1, 2)
    assert not q.is_contiguous()
    out, _ = kernels.linear_prefill(q, k, v, None, chunk=16)
    want, _ = kernels.linear_prefill(q.contiguous(), k.contiguous(), v.contiguous(), None, chunk=16)
    torch.testing.assert_close(out, want, atol=0, rtol=0)


def test_supports_only_what_the_kernels_take(kernels):
    q = torch.zeros(1, 1, 4, 64)
    assert kernels.supports(q, q, q)
    assert not kernels.supports(torch.zeros(1, 1, 4, 48), torch.zeros(1, 1, 4, 48), q)  # head dim not a power of 2
    assert kernels.supports(q.bfloat16(), q.bfloat16(), q.bfloat16())
    assert not kernels.supports(q.double(), q.double(), q.double())
    assert not kernels.supports(q.half(), q.half(), q.half())  # fp16 states would overflow on long prefixes
    assert not kernels.supports(q, q.half(), q)


def test_the_triton_route_equals_the_chunkwise_route_from_a_state(kernels):
    """The public route functions side by side (interpreted on a CPU): (o, final_state) alike, the state passed in
    unchanged; the Triton route refuses what its kernels do not compute."""
    from ragctx.generator.attention.linear import ROUTES

    q, k, v = _qkv(1, 4, 2, 50, 16, 16, seed=4)
    _, start = ROUTES["chunkwise"](q[:, :, :7], k[:, :, :7], v[:, :, :7], None, chunk=16)
    kept = start.s.clone()
    out, end = ROUTES["triton"](q[:, :, 7:], k[:, :, 7:], v[:, :, 7:], start)
    want, want_end = ROUTES["chunkwise"](q[:, :, 7:], k[:, :, 7:], v[:, :, 7:], start, chunk=16)
    torch.testing.assert_close(out, want, atol=2e-5, rtol=2e-5)
    torch.testing.assert_close(end.s, want_end.s, atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(end.z, want_end.z, atol=1e-4, rtol=1e-5)
    assert torch.equal(start.s, kept)
    with pytest.raises(ValueError, match="elu map"):
        ROUTES["triton"](q, k, v, None, kind="taylor")


@pytest.mark.skipif(not GPU, reason="the routing serves CUDA tensors; bf16 dots need a GPU")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_linear_routes_gpu_prefill_through_the_kernels_with_the_pure_torch_results(kernels, monkeypatch, dtype):
    cfg = ModelConfig(dim=512, n_heads=8, n_kv_heads=2, head_dim=64, chunk_size=64, feature_map="elu")
    q, k, v = _qkv(2, 8, 2, 1000, 64, 64, dtype=dtype, seed=3)
    pos = torch.arange(1000, device=DEVICE)[None]
    fn = get_attention("linear").fn
    calls = []
    real = kernels.linear_prefill
    monkeypatch.setattr("ragctx.generator.attention.linear.linear_prefill",
                        lambda *a, **kw: calls.append(1) or real(*a, **kw))
    from ragctx.generator.attention.linear import record_routes

    with torch.no_grad(), record_routes() as routes:
        state = LinearState.empty(2, 2, 64, 64, DEVICE)
        out = fn(q, k, v, positions=pos, valid=None, state=state, cfg=cfg)
        assert calls, "GPU inference prefill with the elu map should run the Triton kernels"
        assert routes == ["triton"]
        monkeypatch.setenv("RAGCTX_TRITON", "0")
        monkeypatch.setenv("RAGCTX_FLA", "0")
        kernels.triton_kernels.cache_clear()
        from ragctx.generator.attention.linear import fla_kernel

        fla_kernel.cache_clear()
        torch_state = LinearState.empty(2, 2, 64, 64, DEVICE)
        want = fn(q, k, v, positions=pos, valid=None, state=torch_state, cfg=cfg)
        assert routes == ["triton", "chunkwise"]
    monkeypatch.delenv("RAGCTX_TRITON")
    monkeypatch.delenv("RAGCTX_FLA")
    kernels.triton_kernels.cache_clear()
    fla_kernel.cache_clear()
    assert len(calls) == 1
    tol = 2e-5 if dtype == torch.float32 else 2e-2
    torch.testing.assert_close(out.float(), want.float(), atol=tol, rtol=tol)
    # in bf16 both forms round each chunk's sum phi(k)^T v to bf16 before the fp32 running sum, from features that
    # round differently: over 16 chunks single entries differ by a few bf16 steps (the GPU showed up to 0.37 with a
    # tolerance of 1e-2 absolute + 1e-3 relative), so states are compared to a share of their largest entry
    for got, ref in ((state.s, torch_state.s), (state.z, torch_state.z)):
        scale = ref.abs().max().item()
        torch.testing.assert_close(got, ref, atol=(1e-2 if dtype == torch.bfloat16 else 2e-5) * scale, rtol=0)
