from __future__ import annotations

import json

import pytest
import torch

from ragctx import RagctxError
from ragctx.generator import ATTENTION, ByteTokenizer, Generator, ModelConfig, Transformer

VARIANTS = list(ATTENTION)


def tiny_model(attention="softmax", seed=0, **kw) -> Transformer:
    torch.manual_seed(seed)
    cfg = ModelConfig.from_name("tiny", attention=attention, window=kw.pop("window", 9), chunk_size=4, **kw)
    model = Transformer(cfg).eval()
    with torch.no_grad():  # larger random weights than the init, so variants really differ
        for p in model.parameters():
            p.mul_(3.0) if p.dim() > 1 else None
    return model


@pytest.mark.parametrize("window", [9, 64], ids=["window<length", "window>length"])  # 64: the ring is cut to 40
@pytest.mark.parametrize("name", VARIANTS)
def test_model_prefill_then_decode_equals_full_forward(name, window):
    """Prefill + decode steps on the fixed-size states equal one forward pass; the steps write the states' buffers in
    place (no tensor is replaced or grows: what lets one compiled step serve a generation); reset states serve a
    second sequence as new ones would."""
    from ragctx.generator.attention.common import state_tensors
    from ragctx.generator.decode import decode_one_token

    model = tiny_model(name, window=window)
    ids = torch.randint(0, 256, (2, 37), generator=torch.Generator().manual_seed(1))
    valid = torch.ones(2, 37, dtype=torch.bool)
    valid[1, :6] = False  # left padding
    pos = (valid.long().cumsum(1) - 1).clamp_min(0)
    m = valid[..., None]
    with torch.no_grad():
        full = model(ids, positions=pos, valid=valid)
        states = model.new_states(2, 40)
        for attempt in range(2):
            steps = [model(ids[:, :20], positions=pos[:, :20], valid=valid[:, :20], states=states)]
            buffers = [(t.data_ptr(), t.shape) for s in states for t in state_tensors(s)]
            for i in range(20, 37):
                steps.append(decode_one_token(model, ids[:, i : i + 1], pos[:, i : i + 1], states)[:, None])
            assert [(t.data_ptr(), t.shape) for s in states for t in state_tensors(s)] == buffers
            torch.testing.assert_close(torch.cat(steps, 1) * m, full * m, atol=1e-4, rtol=1e-4, msg=f"pass {attempt}")
            for s in states:
                s.reset()


def test_switching_attention_keeps_weights_and_exact_variants_agree():
    model = tiny_model("softmax")
    ids = torch.randint(0, 256, (1, 50), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        outs = {}
        for name in VARIANTS:
            model.set_attention(name)
            outs[name] = model(ids)
    torch.testing.assert_close(outs["flash"], outs["softmax"], atol=1e-4, rtol=1e-4)
    for name in ("linear", "sliding_window", "hybrid"):  # approximate: measurably different
        assert (outs[name] - outs["softmax"]).abs().max() > 1e-3, name
    # inside the window nothing differs: the first 9 positions see only keys within the window
    torch.testing.assert_close(outs["sliding_window"][:, :9], outs["softmax"][:, :9], atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("name", VARIANTS)
def test_every_variant_trains(name):
    """Gradients flow through every variant: a few steps fit a repeating byte pattern."""
    model = tiny_model(name, seed=3)
    with torch.no_grad():
        for p in model.parameters():
            p.div_(3.0) if p.dim() > 1 else None
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    data = torch.tensor([list(b"abcabcabcabcabcabcabcabcabcabcab")])
    losses = []
    for _ in range(40):
        logits = model(data[:, :-1])
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), data[:, 1:].flatten())
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0], (name, losses[0], losses[-1])


def test_generation_controls():
    gen = Generator(tiny_model("flash"), ByteTokenizer())
    greedy = gen.generate("Hello", max_new_tokens=12)
    assert greedy.finish_reason == "length" and len(greedy.tokens) == 12 and greedy.prompt_tokens == 6
    assert gen.generate("Hello", max_new_tokens=12).tokens == greedy.tokens  # deterministic
    sampled = [gen.generate("Hello", max_new_tokens=12, temperature=1.5, seed=s).tokens for s in (1, 1, 2)]
    assert sampled[0] == sampled[1] and sampled[0] != sampled[2]
    assert gen.generate("Hello", max_new_tokens=12, temperature=1.5, top_p=1e-6, seed=5).tokens == greedy.tokens
    assert "".join(gen.stream("Hello", max_new_tokens=12)) == greedy.text
    text = greedy.text
    stop = text[3:5]
    stopped = gen.generate("Hello", max_new_tokens=12, stop=[stop, "\x00never"])
    assert stopped.finish_reason == "stop" and stopped.text == text[: text.find(stop)]
    assert "".join(gen.stream("Hello", max_new_tokens=12, stop=stop)) == stopped.text
    assert stopped.timings["prefill_s"] > 0 and stopped.timings["decode_s"] > 0


def test_generation_stops_at_eos():
    model = tiny_model("softmax")
    with torch.no_grad():
        model.lm_head.weight[ByteTokenizer.eos_id] += 100.0  # tied: eos becomes every step's argmax
    result = Generator(model, ByteTokenizer()).generate("x", max_new_tokens=5)
    assert result.finish_reason == "eos" and result.tokens == [] and result.text == ""


@pytest.mark.parametrize("kwargs,match", [
    (dict(prompt=[]), "empty prompt"),
    (dict(prompt="x" * 1100), "exceeds the generator's context of 1024"),
    (dict(prompt="x", max_new_tokens=-1), "max_new_tokens"),
])
def test_generation_input_errors(kwargs, match):
    gen = Generator(tiny_model(), ByteTokenizer())
    with pytest.raises(RagctxError, match=match):
        gen.generate(**kwargs)


def test_byte_tokenizer_round_trip():
    tok = ByteTokenizer()
    text = "naïve café 日本 🙂\r\n"
    assert tok.decode(tok.encode(text)) == text and tok.encode(text)[0] == tok.bos_id


def test_save_and_load_round_trip(tmp_path):
    gen = Generator(tiny_model("softmax", tie_embeddings=False), ByteTokenizer())
    folder = gen.save(tmp_path / "gen")
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "model.safetensors"]
    again = Generator.load(folder, attention="linear")
    assert again.attention == "linear"
    again.set_attention("softmax")
    ids = list(range(40))
    torch.testing.assert_close(again.logits(ids), gen.logits(ids))
    with pytest.raises(RagctxError, match="no built-in generator 'nope'"):
        Generator.load("builtin:nope")
    with pytest.raises(RagctxError, match="unknown attention 'fast'"):
        Generator.load(folder, attention="fast")
    (folder / "config.json").write_text(json.dumps({"format": "other"}))
    with pytest.raises(RagctxError, match="not a ragctx generator"):
        Generator.load(folder)


def test_model_without_positional_encoding():
    model = tiny_model("softmax", rope_base=None)
    ids = torch.randint(0, 256, (1, 20), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        full = model(ids)
        states = model.new_states(1, 20)
        steps = [model(ids[:, :10], states=states)] + [
            model(ids[:, i : i + 1], positions=torch.tensor([[i]]), states=states) for i in range(10, 20)]
    torch.testing.assert_close(torch.cat(steps, 1), full, atol=1e-4, rtol=1e-4)
    with torch.no_grad():  # without RoPE, positions only order the causal mask: shifting them changes nothing
        torch.testing.assert_close(model(ids, positions=torch.arange(20)[None] + 1000), full, atol=1e-5, rtol=1e-5)


def test_builtin_aliases_run_another_builtins_weights_and_are_validated(tmp_path, monkeypatch):
    import ragctx.generator.checkpoints as checkpoints

    gen = Generator(tiny_model("softmax"), ByteTokenizer())
    gen.save(tmp_path / "softmax")
    monkeypatch.setattr(checkpoints, "BUILTIN_DIR", tmp_path)
    (tmp_path / "window").mkdir()
    (tmp_path / "window" / "alias.json").write_text(json.dumps({"weights": "softmax", "attention": "sliding_window"}))
    assert checkpoints.builtin_names() == ["softmax", "window"]
    alias = Generator.load("builtin:window")
    assert alias.attention == "sliding_window"
    assert Generator.load("builtin:window", attention="flash").attention == "flash"  # the caller's choice wins
    alias.set_attention("softmax")
    ids = list(range(30))
    torch.testing.assert_close(alias.logits(ids), gen.logits(ids))
    (tmp_path / "window" / "alias.json").write_text(json.dumps({"weights": "gone", "attention": "flash"}))
    with pytest.raises(RagctxError, match="must name an installed built-in"):
        Generator.load("builtin:window")
    (tmp_path / "window" / "alias.json").write_text(json.dumps({"weights": "softmax", "attention": "fast"}))
    with pytest.raises(RagctxError, match="unknown attention 'fast'"):
        Generator.load("builtin:window")


def test_context_override_lets_longer_inputs_in(tmp_path):
    folder = Generator(tiny_model("softmax"), ByteTokenizer()).save(tmp_path / "gen")
    short = Generator.open(folder)
    limit = short.max_context
    prompt = "x" * (limit + 100)
    with pytest.raises(RagctxError, match="exceeds the generator's context"):
        short.generate(prompt, max_new_tokens=2)
    longer = Generator.open(folder, max_seq_len=limit + 200)
    assert longer.max_context == limit + 200 and len(longer.generate(prompt, max_new_tokens=2).tokens) <= 2
    with pytest.raises(RagctxError, match="positive number of tokens"):
        longer.with_context(0)
    with pytest.raises(RagctxError, match="positive number of tokens"):
        Generator.open(folder, max_seq_len=0)  # 0 is refused, not read as "no override"


@pytest.mark.parametrize("name", list(ATTENTION))
def test_probe_logprobs_equal_a_full_forward_and_leave_the_generation_as_it_was(name):
    """log P(probe | prompt) from the prefill's state (KV caches rolled back, other states copied) equals the same
    quantity read off one forward pass over prompt + probe; the generation that follows is unchanged."""
    gen = Generator(tiny_model(name, seed=3), ByteTokenizer())
    prompt, probe = list(b"The magic number is 42. The magic"), list(b" num")
    logits = gen.logits(prompt + probe).double().log_softmax(-1)
    expected = sum(float(logits[len(prompt) - 1 + i, t]) for i, t in enumerate(probe))
    plain = gen.generate(prompt, max_new_tokens=8)
    probed = gen.generate(prompt, max_new_tokens=8, probes=[probe, probe[:1]])
    assert probed.probe_logprobs[0] == pytest.approx(expected, abs=1e-3)
    assert probed.probe_logprobs[1] == pytest.approx(float(logits[len(prompt) - 1, probe[0]]), abs=1e-3)
    assert probed.tokens == plain.tokens


def test_token_logprobs_are_the_chosen_tokens_log_probabilities_with_the_one_that_ended_it():
    """Generation.token_logprobs (logprobs=True): log P of each chosen token (greedy here) as one forward pass over
    prompt + completion reads them, one per token, plus the eos or stop-string token that ended the completion; per
    row in a batch; nothing without logprobs=True."""
    gen = Generator(tiny_model("softmax", seed=3), ByteTokenizer())
    prompt = list(b"The magic number is 42. The magic")
    g = gen.generate(prompt, max_new_tokens=12, logprobs=True)
    logits = gen.logits(prompt + g.tokens).double().log_softmax(-1)
    expected = [float(logits[len(prompt) - 1 + i, t]) for i, t in enumerate(g.tokens)]
    assert g.finish_reason == "length" and g.token_logprobs == pytest.approx(expected, abs=1e-3)
    at = g.tokens.index(g.tokens[2])  # where that byte first comes: the stop string ends the completion there
    stopped = gen.generate(prompt, max_new_tokens=12, stop=[bytes(g.tokens[2:3]).decode("latin-1")], logprobs=True)
    assert stopped.finish_reason == "stop" and len(stopped.token_logprobs) == at + 1  # + the one that stopped it
    assert stopped.token_logprobs == pytest.approx(g.token_logprobs[: at + 1], abs=1e-4)
    batch = gen.generate_batch([prompt, list(b"Once upon")], max_new_tokens=12, logprobs=True)
    assert batch[0].token_logprobs == pytest.approx(g.token_logprobs, abs=1e-3)
    assert len(batch[1].token_logprobs) == len(batch[1].tokens) + (batch[1].finish_reason != "length")
    assert gen.generate(prompt, max_new_tokens=12).token_logprobs == []  # only when asked: no work per step
