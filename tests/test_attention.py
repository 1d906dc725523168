"""Every registered attention variant against its reference twin; picked up from the registry automatically."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

from ragctx import RagctxError
from ragctx.generator.attention import (
    ATTENTION, AttentionBackend, canonical_name, get_attention, kv_cache_state, register, same_weights, unregister,
    weights_of)
from ragctx.generator.attention.flash import sdpa
from ragctx.generator.attention.linear import (
    ROUTES, feature_map, linear_chunkwise, linear_step, normalize, n_features, record_routes, select_route)
from ragctx.generator.attention.common import LinearState, allowed, group_q, ungroup
from ragctx.generator.attention.learned import LEARNED, FeatureMaps
from ragctx.generator.attention.reference import linear_quadratic, linear_recurrent
from ragctx.generator.attention.softmax import masked_softmax, softmax_lse
from ragctx.generator.config import ModelConfig



def _example():
    """examples/my_attention.py, the user-registered backend that the registry's docstring points to."""
    path = Path(__file__).resolve().parents[1] / "examples" / "my_attention.py"
    spec = importlib.util.spec_from_file_location("my_attention", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


USER = _example().BACKEND
my_softmax = USER.fn


@pytest.fixture(autouse=True, scope="module")
def user_backend():
    """USER is registered while this module's tests run (and only then: other modules see the built-ins)."""
    register(USER)
    yield USER
    unregister(USER.name)


VARIANTS = list(ATTENTION)
# every entry with a feature map also runs under each learned map (random trained-looking parameters)
LEARNED_CASES = [(name, kind) for name, b in ATTENTION.items() if b.features for kind in LEARNED]
CASES = [pytest.param((name, None), id=name) for name in VARIANTS] + [
    pytest.param(case, id=f"{case[0]}-{case[1]}") for case in LEARNED_CASES] + [
    pytest.param((USER.name, None), id="user-registered")]  # register()ed: the same tests as the built-ins
SHAPES = [  # (B, Hq, Hkv, T, D, left padding of the second sequence)
    pytest.param((1, 4, 4, 1, 8, 0), id="T1"),
    pytest.param((1, 4, 2, 7, 8, 0), id="gqa-T7"),
    pytest.param((2, 4, 2, 33, 16, 5), id="gqa-T33-padded"),
    pytest.param((2, 6, 1, 40, 8, 11), id="mqa-T40-padded"),
]


def inputs(b, hq, hkv, t, d, pad, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = 0.5 * torch.randn(b, hq, t, d, generator=g)
    k = 0.5 * torch.randn(b, hkv, t, d, generator=g)
    v = torch.randn(b, hkv, t, d, generator=g)
    valid = torch.ones(b, t, dtype=torch.bool)
    if b > 1 and pad:
        valid[1, :pad] = False
    positions = (valid.long().cumsum(1) - 1).clamp_min(0)
    return q, k, v, valid, positions


def config(hq, hkv, d, **kw):
    return ModelConfig(dim=hq * d, n_heads=hq, n_kv_heads=hkv, head_dim=d, window=kw.pop("window", 6),
                       chunk_size=kw.pop("chunk_size", 4), **kw)


def run(name, q, k, v, positions, valid, cfg, state=None, maps=None):
    return get_attention(name).fn(q, k, v, positions=positions, valid=valid, state=state, cfg=cfg, maps=maps)


def learned_case(case, cfg, seed=0):
    """(name, maps) for a test case: the case's learned feature map set on ``cfg`` with random parameters (far from
    the identity start, and a window share away from 1/2), or no maps for a plain entry."""
    name, kind = case
    if kind is None:
        return name, None
    setattr(cfg, get_attention(name).features, kind)
    cfg.hedgehog_dim = 5
    torch.manual_seed(seed)
    maps = FeatureMaps(cfg.n_heads, cfg.n_kv_heads, cfg.head_dim, cfg.hedgehog_dim)
    with torch.no_grad():
        for p in maps.parameters():
            p.normal_(0, 0.7)
    return name, maps


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("case", CASES)
def test_variant_equals_its_reference_twin(case, shape):
    b, hq, hkv, t, d, pad = shape
    q, k, v, valid, positions = inputs(b, hq, hkv, t, d, pad)
    cfg = config(hq, hkv, d)
    name, maps = learned_case(case, cfg)
    out = run(name, q, k, v, positions, valid if pad else None, cfg, maps=maps)
    ref = get_attention(name).reference(q, k, v, valid, cfg, maps)
    m = valid[:, None, :, None]  # rows of padding queries are don't-care
    torch.testing.assert_close((out.double() * m), ref * m, atol=2e-6, rtol=1e-5)


@pytest.mark.parametrize("split", [1, 5, 17])
@pytest.mark.parametrize("case", CASES)
def test_prefill_then_decode_equals_one_forward(case, split):
    q, k, v, valid, positions = inputs(2, 4, 2, 30, 8, 3, seed=split)
    cfg = config(4, 2, 8, window=7)
    name, maps = learned_case(case, cfg)
    full = run(name, q, k, v, positions, valid, cfg, maps=maps)
    state = get_attention(name).make_state(cfg, 2, 30, q.device, q.dtype)
    outs = [run(name, q[:, :, :split], k[:, :, :split], v[:, :, :split], positions[:, :split], valid[:, :split],
                cfg, state, maps)]
    for i in range(split, 30):
        s = slice(i, i + 1)
        outs.append(run(name, q[:, :, s], k[:, :, s], v[:, :, s], positions[:, s], valid[:, s], cfg, state, maps))
    m = valid[:, None, :, None]
    torch.testing.assert_close(torch.cat(outs, 2) * m, full * m, atol=1e-5, rtol=1e-5)


def _spy_fused(monkeypatch) -> list:
    """Counts the calls softmax_lse makes to torch's fused CPU kernel (so a test cannot compare masked_softmax
    with itself)."""
    import ragctx.generator.attention.softmax as softmax_module

    calls, real = [], softmax_module._FUSED_CPU
    assert real is not None, "torch has no fused CPU attention kernel here"
    monkeypatch.setattr(softmax_module, "_FUSED_CPU", lambda *a, **kw: calls.append(1) or real(*a, **kw))
    return calls


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shape", SHAPES)
def test_fused_cpu_softmax_lse_equals_masked_softmax(shape, dtype, monkeypatch):
    """softmax_lse (torch's fused CPU kernel, which hybrid prefill uses for its window) against masked_softmax:
    GQA, a sliding window, padding queries that see no key (0 and -inf)."""
    b, hq, hkv, t, d, pad = shape
    q, k, v, valid, positions = (x.to(dtype) if x.is_floating_point() else x for x in inputs(b, hq, hkv, t, d, pad))
    ok = allowed(positions, positions, valid, 5)
    ok[-1, :, : t // 3] = False  # queries that see no key (as padding queries without a visible key)
    calls = _spy_fused(monkeypatch)
    with torch.inference_mode():
        out, lse = softmax_lse(q, k, v, ok, d**-0.5)
        want, want_lse = masked_softmax(q, k, v, ok, d**-0.5)
    assert calls and out.dtype == want.dtype == torch.float32
    torch.testing.assert_close(out, want, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(lse, want_lse, atol=1e-5, rtol=1e-5)  # -inf where no key is visible, in both
    assert torch.isneginf(lse[-1, :, : t // 3]).all() and not out[-1, :, : t // 3].any()


def test_fused_cpu_softmax_lse_over_a_ring_and_many_blocks(monkeypatch):
    """The hybrid window's shape after a ring: 700 queries against 200 older keys + their own, window 256,
    padding; several of the kernel's blocks in each direction. With autograd it stays masked_softmax."""
    q, k, v, valid, positions = inputs(2, 6, 2, 900, 32, 37, seed=11)
    q, qpos = q[:, :, 200:], positions[:, 200:]
    ok = allowed(qpos, positions, valid, 256)
    calls = _spy_fused(monkeypatch)
    with torch.inference_mode():
        out, lse = softmax_lse(q, k, v, ok, 32**-0.5)
        want, want_lse = masked_softmax(q, k, v, ok, 32**-0.5)
    assert len(calls) == 1
    torch.testing.assert_close(out, want, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(lse, want_lse, atol=1e-5, rtol=1e-5)
    softmax_lse(q.requires_grad_(), k, v, ok, 32**-0.5)
    assert len(calls) == 1  # training keeps masked_softmax (its backward)


@pytest.mark.parametrize("case", CASES)
def test_a_state_shorter_than_the_window_equals_one_forward(case):
    """A state allocated for fewer tokens than the window (the ring then has max_len slots, not W)."""
    q, k, v, valid, positions = inputs(2, 4, 2, 12, 8, 3, seed=5)
    cfg = config(4, 2, 8, window=16)
    name, maps = learned_case(case, cfg)
    full = run(name, q, k, v, positions, valid, cfg, maps=maps)
    state = get_attention(name).make_state(cfg, 2, 12, q.device, q.dtype)
    outs = [run(name, q[:, :, :8], k[:, :, :8], v[:, :, :8], positions[:, :8], valid[:, :8], cfg, state, maps)]
    for i in range(8, 12):
        s = slice(i, i + 1)
        outs.append(run(name, q[:, :, s], k[:, :, s], v[:, :, s], positions[:, s], valid[:, s], cfg, state, maps))
    m = valid[:, None, :, None]
    torch.testing.assert_close(torch.cat(outs, 2) * m, full * m, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("case", CASES)
def test_chunked_prefill_with_state_equals_one_forward(case):
    """Prefill in several multi-token pieces (as a QA pipeline continuing a conversation would)."""
    q, k, v, valid, positions = inputs(1, 4, 2, 41, 8, 0, seed=3)
    cfg = config(4, 2, 8, window=9, chunk_size=5)
    name, maps = learned_case(case, cfg)
    full = run(name, q, k, v, positions, None, cfg, maps=maps)
    state = get_attention(name).make_state(cfg, 1, 41, q.device, q.dtype)
    pieces = [(0, 12), (12, 13), (13, 30), (30, 41)]
    outs = [run(name, q[:, :, a:b], k[:, :, a:b], v[:, :, a:b], positions[:, a:b], valid[:, a:b], cfg, state, maps)
            for a, b in pieces]
    torch.testing.assert_close(torch.cat(outs, 2), full, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("shape", SHAPES)
def test_flash_equals_softmax(shape):
    b, hq, hkv, t, d, pad = shape
    q, k, v, valid, positions = inputs(b, hq, hkv, t, d, pad, seed=7)
    cfg = config(hq, hkv, d)
    for mask in (valid, None) if not pad else (valid,):
        torch.testing.assert_close(run("flash", q, k, v, positions, mask, cfg),
                                   run("softmax", q, k, v, positions, mask, cfg), atol=1e-6, rtol=1e-5)
    # not causal: every (valid) key visible to every query
    ok = valid[:, None, None, :].expand(b, 1, t, t)
    ref, _ = masked_softmax(q, k, v, ok, d**-0.5)
    torch.testing.assert_close(sdpa(q, k, v, ok), ref, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(sdpa(q, k, v, None), masked_softmax(q, k, v, torch.ones_like(ok), d**-0.5)[0],
                               atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("kind", ["elu", "taylor"])
@pytest.mark.parametrize("chunk", [1, 3, 8, 64])
def test_linear_chunkwise_recurrent_quadratic_agree_with_gradients(kind, chunk):
    q, k, v, valid, _ = inputs(2, 4, 2, 21, 6, 4, seed=chunk)
    q, k, v = (x.double().requires_grad_() for x in (q, k, v))

    def chunkwise(q, k, v):
        fq = group_q(feature_map(q, kind).double(), 2)
        fk = feature_map(k, kind).double() * valid[:, None, :, None]
        num, den, _ = linear_chunkwise(fq, fk, v, None, chunk)
        return ungroup(normalize(num, den))

    def step_by_step(q, k, v):
        state = LinearState(torch.zeros(2, 2, n_features(kind, 6), 6, dtype=torch.float64),
                            torch.zeros(2, 2, n_features(kind, 6), dtype=torch.float64))
        outs = []
        for i in range(q.shape[2]):
            fq = group_q(feature_map(q[:, :, i : i + 1], kind).double(), 2)
            fk = feature_map(k[:, :, i : i + 1], kind).double() * valid[:, None, i : i + 1, None]
            num, den, state = linear_step(fq, fk, v[:, :, i : i + 1], state)
            outs.append(ungroup(normalize(num, den)))
        return torch.cat(outs, 2)

    w = torch.randn(2, 4, 21, 6, dtype=torch.float64) * valid[:, None, :, None]
    results = {}
    for name, fn in [("chunkwise", chunkwise), ("recurrent", step_by_step),
                     ("quadratic", lambda q, k, v: linear_quadratic(q, k, v, valid, kind)),
                     ("recurrent-ref", lambda q, k, v: linear_recurrent(q, k, v, valid, kind))]:
        out = fn(q, k, v)
        grads = torch.autograd.grad((out * w).sum(), (q, k, v))
        results[name] = (out * valid[:, None, :, None], grads)
    out0, g0 = results["quadratic"]
    for name, (out, grads) in results.items():
        torch.testing.assert_close(out, out0, atol=1e-10, rtol=1e-8, msg=name)
        for a, b in zip(grads, g0):
            torch.testing.assert_close(a, b, atol=1e-10, rtol=1e-8, msg=name)



@pytest.mark.parametrize("kind", ["elu", "taylor"])
@pytest.mark.parametrize("state_in", [False, True])
def test_linear_chunkwise_in_bf16_stays_close_to_the_fp64_definition(kind, state_in):
    """bf16 features run the matmuls in bf16 (numerator and denominator come out in bf16) while the state sums in
    fp32: the error is bf16 rounding's, not growing with length (a bf16 running state would drift over these 700
    tokens)."""
    q, k, v, valid, _ = inputs(1, 4, 2, 700, 16, 0, seed=3)
    prev = None
    if state_in:  # a prefix already folded into the state, as in chunked prefill
        fk0 = feature_map(k[:, :, :100].double(), kind)
        prev = LinearState(torch.einsum("bhtf,bhtd->bhfd", fk0, v[:, :, :100].double()).float(), fk0.sum(2).float())
        q, k, v = q[:, :, 100:], k[:, :, 100:], v[:, :, 100:]
    low = [x.bfloat16() for x in (q, k, v)]
    num, den, last = linear_chunkwise(group_q(feature_map(low[0], kind), 2), feature_map(low[1], kind), low[2],
                                      prev, 64)
    assert num.dtype == den.dtype == torch.bfloat16 and last.s.dtype == last.z.dtype == torch.float32
    ref_num, ref_den, ref_last = linear_chunkwise(group_q(feature_map(q.double(), kind), 2),
                                                  feature_map(k.double(), kind), v.double(),
                                                  None if prev is None else LinearState(prev.s.double(), prev.z.double()), 64)
    out, ref = ungroup(normalize(num, den)).double(), ungroup(normalize(ref_num, ref_den))
    assert ((out - ref).norm() / ref.norm()).item() < 1e-2
    assert ((last.s.double() - ref_last.s).norm() / ref_last.s.norm()).item() < 1e-2

def test_taylor_feature_map_is_the_second_order_expansion_of_exp():
    x, y = torch.randn(5, 16).double(), torch.randn(5, 16).double()
    dot = (x * y).sum(-1) / 16**0.5
    got = (feature_map(x, "taylor").double() * feature_map(y, "taylor").double()).sum(-1)
    torch.testing.assert_close(got, 1 + dot + dot**2 / 2)


def test_decode_state_memory_is_bounded_for_linear_window_hybrid():
    cfg = config(4, 2, 8, window=6)
    for name in ("linear", "sliding_window", "hybrid"):
        state = get_attention(name).make_state(cfg, 1, 10_000, "cpu", torch.float32)
        tensors = [t for t in vars(state).values() if isinstance(t, torch.Tensor)]
        tensors += [t for sub in vars(state).values() if hasattr(sub, "__dataclass_fields__")
                    for t in vars(sub).values() if isinstance(t, torch.Tensor)]
        assert sum(t.numel() for t in tensors) < 20_000, name  # independent of the 10K-token budget
    kv = get_attention("softmax").make_state(cfg, 1, 10_000, "cpu", torch.float32)
    assert kv.k.shape[2] == 10_000  # static KV cache: sized once for the whole budget


def test_unknown_attention_lists_valid_names():
    with pytest.raises(RagctxError, match="softmax, flash, linear, sliding_window, hybrid"):
        get_attention("ring")


def test_aliases_select_their_entry_and_configs_keep_the_entry_name():
    assert get_attention("eager") is ATTENTION["softmax"] and get_attention("sdpa") is ATTENTION["flash"]
    assert canonical_name("sdpa") == "flash" and canonical_name("linear") == "linear"
    assert ModelConfig(attention="sdpa").attention == "flash"
    cfg = ModelConfig.from_name("tiny", layer_attention="eager,linear")
    assert cfg.attentions == ["softmax", "linear"]
    with pytest.raises(RagctxError, match="aliases: eager = softmax, sdpa = flash"):
        get_attention("ring")


def test_weight_sharing_is_the_registry_s():
    assert weights_of("flash") == weights_of("sdpa") == weights_of("softmax") == "softmax"
    assert weights_of("linear") == "linear"
    assert same_weights("softmax") == same_weights("eager") == ["flash"] and same_weights("hybrid") == []


def test_register_refuses_taken_names_and_bad_entries():
    with pytest.raises(RagctxError, match="'softmax' is taken by 'softmax'"):
        register(AttentionBackend("softmax", my_softmax, kv_cache_state, USER.reference), replace=True)
    with pytest.raises(RagctxError, match="'sdpa' is taken by 'flash'"):
        register(AttentionBackend("mine", my_softmax, kv_cache_state, USER.reference, aliases=("sdpa",)))
    with pytest.raises(RagctxError, match="pass replace=True"):
        register(USER)
    with pytest.raises(RagctxError, match="shares_weights_with='nope'"):
        register(AttentionBackend("mine", my_softmax, kv_cache_state, USER.reference, shares_weights_with="nope"))
    with pytest.raises(RagctxError, match="without commas"):
        register(AttentionBackend("a,b", my_softmax, kv_cache_state, USER.reference))
    with pytest.raises(RagctxError, match="built in"):
        unregister("flash")
    assert "mine" not in ATTENTION and get_attention("sdpa").name == "flash"


def test_a_registered_backend_runs_through_the_model():
    """A tiny model under the user's backend: the same logits as under softmax, and the same greedy text with its
    KV cache (prefill + decode) as softmax's."""
    from ragctx.generator import ByteTokenizer, Generator, Transformer

    torch.manual_seed(0)
    model = Transformer(ModelConfig.from_name("tiny", attention="softmax")).eval()
    ids = torch.randint(0, model.cfg.vocab_size, (2, 23))
    with torch.no_grad():
        want = model(ids)
        gen = Generator(model, ByteTokenizer())
        text = gen.generate("The registry holds", max_new_tokens=12).text
        gen.set_attention("my_softmax")
        assert model.cfg.attention == "my_softmax"
        torch.testing.assert_close(model(ids), want, atol=1e-5, rtol=1e-5)
        assert gen.generate("The registry holds", max_new_tokens=12).text == text


@pytest.mark.skipif(not torch.cuda.is_available(), reason="FlexAttention path runs on a GPU")
@pytest.mark.parametrize("name", ["sliding_window", "hybrid"])
def test_flex_path_equals_masked_path_on_gpu(name):
    q, k, v, valid, positions = (x.cuda() for x in inputs(1, 4, 2, 300, 16, 0, seed=11))
    cfg = config(4, 2, 16, window=64, chunk_size=32)
    fast = run(name, q, k, v, positions, None, cfg)  # FlexAttention
    slow = run(name, q, k, v, positions, valid, cfg)  # dense masked
    torch.testing.assert_close(fast.float(), slow.float(), atol=2e-3, rtol=2e-3)
    # prefill into a fresh state also takes FlexAttention, and decoding after it continues correctly
    state = get_attention(name).make_state(cfg, 1, 300, "cuda", q.dtype)
    steps = [run(name, q[:, :, :250], k[:, :, :250], v[:, :, :250], positions[:, :250], None, cfg, state)]
    for i in range(250, 300):
        s = slice(i, i + 1)
        steps.append(run(name, q[:, :, s], k[:, :, s], v[:, :, s], positions[:, s], None, cfg, state))
    torch.testing.assert_close(torch.cat(steps, 2).float(), slow.float(), atol=2e-3, rtol=2e-3)


@pytest.mark.parametrize("case", CASES)
def test_gradients_are_finite_with_padding(case):
    q, k, v, valid, positions = inputs(2, 4, 2, 19, 8, 6, seed=5)
    q, k, v = (x.requires_grad_() for x in (q, k, v))
    cfg = config(4, 2, 8, window=4)
    name, maps = learned_case(case, cfg)
    out = run(name, q, k, v, positions, valid, cfg, maps=maps)
    (out * valid[:, None, :, None]).square().sum().backward()
    assert all(torch.isfinite(x.grad).all() for x in (q, k, v)), name
    if maps is not None:  # the learned maps (and the hybrid's window share) get gradients: they can be trained
        grads = {n: p.grad for n, p in maps.named_parameters()}
        used = [n for n in grads if name == "hybrid" or n != "window_logit"]
        assert all(grads[n] is not None and torch.isfinite(grads[n]).all() and grads[n].abs().sum() > 0
                   for n in used), grads


def test_hedgehog_map_starts_as_softmax_of_the_input_and_each_half_sums_to_one():
    from ragctx.generator.attention.learned import HedgehogMap

    m = HedgehogMap(3, 8, 8)
    x = torch.randn(2, 3, 5, 8)
    f = m(x)
    assert f.shape == (2, 3, 5, 16)
    torch.testing.assert_close(f[..., :8], torch.softmax(x, -1))
    torch.testing.assert_close(f[..., 8:], torch.softmax(-x, -1))
    narrow = HedgehogMap(3, 8, 4)  # fewer projections than the head dimension: orthonormal columns
    torch.testing.assert_close(narrow.weight[0].T @ narrow.weight[0], torch.eye(4), atol=1e-5, rtol=0)
    torch.testing.assert_close(narrow(x).sum(-1), torch.full((2, 3, 5), 2.0))


@pytest.mark.parametrize("name", [n for n, b in ATTENTION.items() if b.features])
def test_a_learned_map_without_its_trained_parameters_is_a_clear_error(name):
    q, k, v, valid, positions = inputs(1, 4, 2, 9, 8, 0)
    cfg = config(4, 2, 8)
    setattr(cfg, get_attention(name).features, "hedgehog")
    with pytest.raises(RagctxError, match="learned: load a linearized model"):
        run(name, q, k, v, positions, None, cfg)


def _fla_shaped_kernel(seen):
    """fla-core's chunk_linear_attn interface ([B, T, H, F] in; with normalize=False the plain causal sum
    o_t = sum_{s<=t} (q_t.k_s) v_s and one state tensor S [B, H, F, V]) on a direct sum, to check the wrapper's
    layouts, padding and state handling where fla-core cannot run."""
    def kernel(q, k, v, *, scale, initial_state, output_final_state, **opts):
        seen.append((q.shape[-1], v.shape[-1]))
        assert q.shape[-1] % 16 == 0 and v.shape[-1] % 16 == 0 and scale == 1.0 and output_final_state
        assert opts == {"normalize": False}
        q, k, v = (x.transpose(1, 2).double() for x in (q, k, v))  # [B, H, T, .]
        scores = (q @ k.transpose(-1, -2)).tril()
        s0 = 0 if initial_state is None else initial_state.double()
        out = scores @ v + (0 if initial_state is None else q @ s0)
        return out.transpose(1, 2), s0 + k.transpose(-1, -2) @ v
    return kernel


@pytest.mark.parametrize("kind", ["elu", "taylor"])
def test_fla_wrapper_pads_features_and_keeps_the_state_exact(kind):
    from ragctx.generator.attention.linear import linear_fla

    q, k, v, _, _ = inputs(2, 4, 2, 30, 6, 0, seed=21)
    q, k, v = q.double(), k.double(), v.double()
    fq, fk = group_q(feature_map(q, kind), 2), feature_map(k, kind)
    f = fq.shape[-1]
    head = LinearState(torch.einsum("bhtf,bhtd->bhfd", fk[:, :, :10], v[:, :, :10]), fk[:, :, :10].sum(2))
    seen = []
    out, new = linear_fla(fq[..., 10:, :], fk[:, :, 10:], v[:, :, 10:], head, _fla_shaped_kernel(seen))
    num, den, ref = linear_chunkwise(fq[..., 10:, :], fk[:, :, 10:], v[:, :, 10:], head, 8)
    assert f % 16 and seen == [(f + (-f % 16), 16)]  # padding was exercised (elu: 6 -> 16, taylor: 28 -> 32)
    torch.testing.assert_close(out.double(), ungroup(normalize(num, den)), atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(new.s.double(), ref.s, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(new.z.double(), ref.z, atol=1e-6, rtol=1e-6)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="fla-core's Triton kernel runs on a GPU")
def test_fla_prefill_equals_pure_torch_on_gpu(monkeypatch):
    from ragctx.generator.attention.linear import fla_kernel

    if fla_kernel() is None:
        pytest.skip("fla-core not installed")
    q, k, v, valid, positions = (x.cuda() for x in inputs(1, 4, 2, 200, 16, 0, seed=13))
    cfg = config(4, 2, 16, chunk_size=32)
    state = get_attention("linear").make_state(cfg, 1, 300, "cuda", torch.float32)
    with torch.no_grad():  # fla-core serves inference prefill only
        fast = run("linear", q, k, v, positions, None, cfg, state)
    fla_kernel.cache_clear()
    monkeypatch.setenv("RAGCTX_FLA", "0")
    ref_state = get_attention("linear").make_state(cfg, 1, 300, "cuda", torch.float32)
    slow = run("linear", q, k, v, positions, None, cfg, ref_state)
    fla_kernel.cache_clear()
    # fla's Triton dots run in tf32 for fp32 inputs: relative errors near 3e-4 are expected (METHOD.md)
    for name, a, b in [("out", fast, slow), ("S", state.s, ref_state.s), ("z", state.z, ref_state.z)]:
        rel = ((a.float() - b.float()).norm() / b.float().norm()).item()
        assert rel < 5e-3, (name, rel)


def test_flash_buckets_lengths_and_right_padding_changes_no_causal_output():
    from ragctx.generator.attention.flash import bucket, causal

    sizes = [bucket(t) for t in range(1, 70000)]
    assert all(b >= t for t, b in zip(range(1, 70000), sizes))
    assert all(b <= max(t * 1.125, -(-t // 64) * 64) for t, b in zip(range(1, 70000), sizes))  # <= 12.5% (or to 64)
    assert all(bucket(2**i) == 2**i for i in range(6, 17))  # none at powers of two
    assert len(set(sizes[1023:])) <= 8 * 7  # 8 per octave from 1K to 64K
    q, k, v, _, _ = inputs(2, 4, 2, 300, 16, 0, seed=5)
    torch.testing.assert_close(causal(q, k, v, bucketed=True), causal(q, k, v, bucketed=False), atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("kind", ["elu", "taylor"])
def test_linear_routes_return_the_output_and_final_state_and_leave_the_state_alone(kind):
    """The CPU routes as public functions: chunkwise prefill from a state, then one step, equal the quadratic
    definition over the whole sequence; the state passed in is not changed, the one returned is the sum over keys."""
    q, k, v, valid, positions = inputs(2, 4, 2, 21, 8, 0, seed=7)
    q, k, v = q.double(), k.double(), v.double()
    want = linear_quadratic(q, k, v, valid, kind)
    zero = LinearState.empty(2, 2, n_features(kind, 8), 8, "cpu", torch.float64)
    head, mid = ROUTES["chunkwise"](q[:, :, :20], k[:, :, :20], v[:, :, :20], zero, kind=kind, chunk=6)
    assert not zero.s.any() and not zero.z.any()
    last, end = ROUTES["step"](q[:, :, 20:], k[:, :, 20:], v[:, :, 20:], mid, kind=kind)
    torch.testing.assert_close(torch.cat([head, last], 2), want, atol=1e-10, rtol=1e-10)
    fk = feature_map(k, kind)
    torch.testing.assert_close(end.z, fk.sum(2))
    torch.testing.assert_close(end.s, fk.transpose(-1, -2) @ v)
    assert head.shape == (2, 4, 20, 8) and head.dtype == q.dtype


def test_select_route_names_what_ran_and_a_model_reports_it():
    from ragctx.generator import Transformer

    q, k, v, valid, positions = inputs(1, 4, 2, 9, 8, 0)
    cfg = config(4, 2, 8)
    state = get_attention("linear").make_state(cfg, 1, 10, "cpu", torch.float32)
    assert select_route(q, k, v, None, None, cfg) == "chunkwise"  # CPU prefill (GPU routes need CUDA)
    assert select_route(q[:, :, :1], k[:, :, :1], v[:, :, :1], None, state, cfg) == "step"
    torch.manual_seed(0)
    model = Transformer(ModelConfig.from_name("tiny", attention="linear")).eval()
    with torch.no_grad(), record_routes() as routes:
        states = model.new_states(1, 12)
        model(torch.arange(10)[None], states=states)
        model(torch.tensor([[3]]), positions=torch.tensor([[10]]), states=states)
    assert routes == ["chunkwise"] * model.cfg.n_layers + ["step"] * model.cfg.n_layers
    assert select_route(q, k, v, None, None, cfg) and routes[-1] == "step"  # closed: no longer recorded


def test_each_entry_names_its_options_and_they_are_config_fields():
    """An entry's ``options`` are the ModelConfig fields it reads: a window for the window entries, the feature map
    for the kernel entries (the one ``features`` names among them), none for softmax and flash."""
    from dataclasses import fields

    config_fields = {f.name for f in fields(ModelConfig)}
    for name, entry in ATTENTION.items():
        assert set(entry.options) <= config_fields, name
        if entry.features:
            assert entry.features in entry.options, name
    assert get_attention("sliding_window").options == ("window",)
    assert "window" in get_attention("hybrid").options and "window" not in get_attention("linear").options
    assert get_attention("eager").options == get_attention("sdpa").options == ()
