"""Random tiny Llama, Qwen2 and Mistral checkpoints built with transformers (no download) load into ragctx
exactly. The inputs (45 tokens) are shorter than the Mistral model's 64-token window."""

from __future__ import annotations

import json

import pytest
import torch

transformers = pytest.importorskip("transformers")

from ragctx import RagctxError  # noqa: E402
from ragctx.generator import Generator  # noqa: E402


def write_tokenizer(folder, vocab_size: int) -> None:
    from tokenizers import Tokenizer, models, pre_tokenizers

    words = {"<unk>": 0, "<s>": 1, "</s>": 2, **{f"w{i}": i for i in range(3, vocab_size)}}
    tok = Tokenizer(models.WordLevel(words, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.save(str(folder / "tokenizer.json"))


def checkpoint(tmp_path, kind: str):
    torch.manual_seed(0)
    common = dict(vocab_size=120, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, max_position_embeddings=256, bos_token_id=1, eos_token_id=2)
    if kind == "llama":
        model = transformers.LlamaForCausalLM(transformers.LlamaConfig(**common, rope_theta=500.0))
    elif kind == "mistral":
        model = transformers.MistralForCausalLM(transformers.MistralConfig(**common, head_dim=16, sliding_window=64))
    else:
        model = transformers.Qwen2ForCausalLM(transformers.Qwen2Config(**common, tie_word_embeddings=True))
    with torch.no_grad():  # random biases too (Qwen2 has q/k/v biases), so that loading them is tested
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.normal_(0, 0.5)
    folder = tmp_path / kind
    model.save_pretrained(folder)
    write_tokenizer(folder, 120)
    return model.eval(), folder


@pytest.mark.parametrize("kind", ["llama", "qwen2", "mistral"])
@pytest.mark.parametrize("attention", ["softmax", "flash"])
def test_logits_and_greedy_generation_match_transformers(tmp_path, kind, attention):
    hf, folder = checkpoint(tmp_path, kind)
    gen = Generator.from_pretrained(folder, attention=attention, device="cpu")
    ids = torch.randint(3, 120, (1, 45), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        ref = hf(ids).logits[0]
    torch.testing.assert_close(gen.logits(ids[0].tolist()), ref, atol=1e-4, rtol=1e-4)
    prompt = ids[0, :10]
    with torch.no_grad():
        hf_out = hf.generate(prompt[None], max_new_tokens=20, do_sample=False, eos_token_id=2, pad_token_id=0)
    hf_new = hf_out[0, 10:].tolist()
    if 2 in hf_new:
        hf_new = hf_new[: hf_new.index(2)]
    ours = gen.generate(prompt.tolist(), max_new_tokens=20)
    assert ours.tokens == hf_new
    assert gen.tokenizer.decode(ours.tokens) == " ".join(f"w{i}" for i in ours.tokens if i > 2)


@pytest.mark.parametrize("setup, expected", [
    ("none", [5, 7]),  # a tokenizer.json without a post-processor adds nothing
    ("config", [1, 5, 7]),  # tokenizer_config.json's add_bos_token
    ("post-processor", [1, 5, 7]),  # a TemplateProcessing that puts <s> before the text (Llama's tokenizer.json)
    ("config-off", [5, 7]),  # add_bos_token false wins over the post-processor
])
def test_bos_is_added_exactly_when_the_checkpoint_tokenizer_adds_it(tmp_path, setup, expected):
    from tokenizers import Tokenizer, processors

    _, folder = checkpoint(tmp_path, "llama")
    if setup in ("post-processor", "config-off"):
        tok = Tokenizer.from_file(str(folder / "tokenizer.json"))
        tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
        tok.save(str(folder / "tokenizer.json"))
    if setup in ("config", "config-off"):
        (folder / "tokenizer_config.json").write_text(json.dumps({"add_bos_token": setup == "config",
                                                                  "bos_token": "<s>"}))
    gen = Generator.from_pretrained(folder, attention="flash", device="cpu")
    assert gen.tokenizer.encode("w5 w7") == expected
    assert gen.tokenizer.encode("w5 w7", bos=True) == [1, 5, 7] and gen.tokenizer.encode("w5 w7", bos=False) == [5, 7]
    assert gen.generate("w5 w7", max_new_tokens=3).prompt_tokens == len(expected)
    assert gen.generate("w5 w7", max_new_tokens=3, bos=True).prompt_tokens == 3


ROPE_SCALINGS = {
    "linear": {"rope_type": "linear", "factor": 4.0},
    "llama3": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
               "original_max_position_embeddings": 64},
    "yarn": {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 64},
    "yarn-betas": {"rope_type": "yarn", "factor": 3.0, "beta_fast": 16, "beta_slow": 2, "attention_factor": 1.2,
                   "original_max_position_embeddings": 64},
}


@pytest.mark.parametrize("name", list(ROPE_SCALINGS))
def test_rope_scaling_matches_transformers(tmp_path, name):
    torch.manual_seed(1)
    rope = {**ROPE_SCALINGS[name], "rope_theta": 10000.0}
    config = transformers.LlamaConfig(vocab_size=120, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                                      rope_parameters=rope)
    hf = transformers.LlamaForCausalLM(config).eval()
    hf.save_pretrained(tmp_path / name)
    write_tokenizer(tmp_path / name, 120)
    gen = Generator.from_pretrained(tmp_path / name, attention="flash", device="cpu")
    assert gen.model.cfg.rope_scaling["rope_type"] == rope["rope_type"]
    ids = torch.randint(3, 120, (1, 200), generator=torch.Generator().manual_seed(4))  # past the original 64
    with torch.no_grad():
        ref = hf(ids).logits[0]
    torch.testing.assert_close(gen.logits(ids[0].tolist()), ref, atol=1e-4, rtol=1e-4)
    plain = Generator.from_pretrained(tmp_path / name, attention="flash", device="cpu")
    plain.model.cfg.rope_scaling = None
    assert (plain.logits(ids[0].tolist()) - ref).abs().max() > 1e-3  # the scaling is what makes them equal


def test_attention_options_are_settable_when_loading(tmp_path):
    _, folder = checkpoint(tmp_path, "llama")
    gen = Generator.from_pretrained(folder, attention="sliding_window", device="cpu", window=8)
    assert gen.model.cfg.window == 8
    ids = list(range(3, 40))
    full = Generator.from_pretrained(folder, attention="flash", device="cpu")
    torch.testing.assert_close(gen.logits(ids[:8]), full.logits(ids[:8]), atol=1e-5, rtol=1e-5)  # inside the window
    assert (gen.logits(ids) - full.logits(ids)).abs().max() > 1e-3  # past it: only the last 8 keys
    assert Generator.open(str(folder), attention="hybrid", window=16).model.cfg.window == 16
    with pytest.raises(RagctxError, match="unknown generator option"):
        Generator.from_pretrained(folder, windw=8)
    with pytest.raises(RagctxError, match="window=0"):
        Generator.from_pretrained(folder, window=0)
    builtin = Generator.open("builtin:sliding_window", device="cpu", window=64)  # built-ins and ragctx folders too
    assert all(layer.self_attn.cfg.window == 64 for layer in builtin.model.layers)


def test_unsupported_checkpoints_are_clear_errors(tmp_path):
    _, folder = checkpoint(tmp_path, "llama")
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "rope_parameters": {"rope_type": "dynamic", "factor": 2.0,
                                                                                  "rope_theta": 1.0}}))
    with pytest.raises(RagctxError, match="RoPE scaling 'dynamic' is not implemented"):
        Generator.from_pretrained(folder)
    (folder / "config.json").write_text("{not json")
    with pytest.raises(RagctxError, match="not valid JSON"):
        Generator.from_pretrained(folder)
    (folder / "config.json").write_text(json.dumps({k: v for k, v in config.items() if k != "hidden_size"}))
    with pytest.raises(RagctxError, match="lacks or mistypes"):
        Generator.from_pretrained(folder)
    (folder / "config.json").write_text(json.dumps({**config, "model_type": "gpt2"}))
    with pytest.raises(RagctxError, match="model_type 'gpt2' is not supported"):
        Generator.from_pretrained(folder)
    (folder / "config.json").write_text(json.dumps({**config, "num_hidden_layers": 3}))
    with pytest.raises(RagctxError, match="missing"):
        Generator.from_pretrained(folder)
    with pytest.raises(RagctxError, match="no such file or folder"):
        Generator.from_pretrained(tmp_path / "nothing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(RagctxError, match="config.json is missing"):
        Generator.from_pretrained(tmp_path / "empty")
