"""Every checkpoint format goes through the loader's one check (ragctx.generator.checkpoints.check_state): a ragctx
folder or built-in with a renamed tensor, a Hugging Face folder with a wrong shape, a GGUF file with a missing, an
extra or an integer tensor, a delta whose maps or LoRA factors do not fit, and a training init of another shape are
each the same one-line error naming the file, the tensor and the fix."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

import ragctx.generator.checkpoints as checkpoints
from ragctx import RagctxError
from ragctx.generator import ByteTokenizer, Generator, ModelConfig, Transformer

gguf = pytest.importorskip("gguf")
transformers = pytest.importorskip("transformers")

from tests.test_gguf import add_byte_tokenizer, byte_vocab, finish  # noqa: E402
from tests.test_hf_loading import checkpoint  # noqa: E402
from tests.test_linearize import TINY, tiny_base  # noqa: E402

# the one check's error: file, what does not match, the tensor (as the file names it), what is wrong, the fix
ONE_CHECK = re.compile(r"^(?P<file>\S+): weights do not match the config(?:'s shapes|'s dtypes)?: tensor "
                       r"(?P<tensor>\S+) (?:is|has) [^;\n]+; [^\n]+$")


def refused(call, *args, **kwargs) -> re.Match:
    """The one check's error that ``call`` raises, parsed."""
    with pytest.raises(RagctxError) as info:
        call(*args, **kwargs)
    match = ONE_CHECK.match(str(info.value))
    assert match, str(info.value)
    return match


def saved_folder(tmp_path: Path) -> Path:
    torch.manual_seed(0)
    return Generator(Transformer(ModelConfig.from_name("tiny")), ByteTokenizer()).save(tmp_path / "gen")


def rewrite(path: Path, change) -> None:
    """Rewrites safetensors file ``path`` with ``change(tensors)`` applied (metadata kept)."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
    tensors = load_file(str(path))
    change(tensors)
    save_file(tensors, str(path), metadata=meta)


def test_a_ragctx_folder_or_builtin_with_a_renamed_tensor(tmp_path, monkeypatch):
    folder = saved_folder(tmp_path)
    rewrite(folder / "model.safetensors",
            lambda t: t.__setitem__("layers.1.mlp.upproj.weight", t.pop("layers.1.mlp.up_proj.weight")))
    for call in (lambda: Generator.load(folder), lambda: Generator.open(str(folder))):
        m = refused(call)
        assert m["file"] == str(folder / "model.safetensors") and m["tensor"] == "layers.1.mlp.up_proj.weight"
        assert m.group(0).endswith("is missing; save the generator again")
    monkeypatch.setattr(checkpoints, "BUILTIN_DIR", tmp_path)
    assert refused(Generator.load, "builtin:gen")["tensor"] == "layers.1.mlp.up_proj.weight"
    rewrite(folder / "model.safetensors",  # back under its name, plus one the model has no place for
            lambda t: t.update({"layers.1.mlp.up_proj.weight": t.pop("layers.1.mlp.upproj.weight"),
                                "layers.9.extra.weight": torch.zeros(2)}))
    assert "tensor layers.9.extra.weight has no place in the model" in refused(Generator.load, folder).group(0)


def test_a_training_init_of_another_shape(tmp_path):
    from ragctx.generator.train import _INIT_FIX

    folder = saved_folder(tmp_path)
    model = Transformer(ModelConfig.from_name("tiny", dim=96))
    m = refused(checkpoints.load_weights, model, folder, fix=_INIT_FIX)
    assert "the config's shapes" in m.group(0) and m.group(0).endswith("does not fit this model)")


def test_a_hugging_face_folder_with_a_wrong_shape(tmp_path):
    _, folder = checkpoint(tmp_path, "llama")
    weights = folder / "model.safetensors"
    rewrite(weights, lambda t: t.__setitem__("model.layers.0.mlp.up_proj.weight", torch.zeros(96, 32)))
    m = refused(Generator.from_pretrained, folder)
    assert m["file"] == str(weights) and m["tensor"] == "model.layers.0.mlp.up_proj.weight"
    assert "is (96, 32), the config's (96, 64)" in m.group(0)
    rewrite(weights, lambda t: t.__setitem__("model.layers.0.mlp.up_proj.weight", torch.zeros(96, 64, dtype=torch.int32)))
    assert "is int32, not floating point" in refused(Generator.from_pretrained, folder).group(0)


GGUF_SHAPES = {"token_embd.weight": (None, 64), "output_norm.weight": (64,)} | {
    f"blk.{i}.{name}": shape for i in range(2) for name, shape in {
        "attn_norm.weight": (64,), "ffn_norm.weight": (64,), "attn_q.weight": (64, 64), "attn_k.weight": (32, 64),
        "attn_v.weight": (32, 64), "attn_output.weight": (64, 64), "ffn_gate.weight": (128, 64),
        "ffn_up.weight": (128, 64), "ffn_down.weight": (64, 128)}.items()}


def tiny_gguf(path: Path, *, drop: str | None = None, extra: dict[str, np.ndarray] | None = None) -> Path:
    """A random 2-layer llama GGUF (F32 weights, the byte-level BPE tokenizer of tests/test_gguf.py) written with
    gguf.GGUFWriter, leaving out tensor ``drop`` and adding ``extra``."""
    tokens, merges = byte_vocab()
    w = gguf.GGUFWriter(str(path), "llama")
    for add, value in ((w.add_context_length, 256), (w.add_embedding_length, 64), (w.add_block_count, 2),
                       (w.add_feed_forward_length, 128), (w.add_head_count, 4), (w.add_head_count_kv, 2)):
        add(value)
    add_byte_tokenizer(w, tokens, merges)
    rng = np.random.default_rng(0)
    for name, shape in GGUF_SHAPES.items():
        if name != drop:
            shape = tuple(len(tokens) if n is None else n for n in shape)
            w.add_tensor(name, (rng.standard_normal(shape) * 0.02).astype(np.float32))
    for name, value in (extra or {}).items():
        w.add_tensor(name, value)
    finish(w)
    return path


def test_a_gguf_file_with_a_missing_an_extra_or_an_integer_tensor(tmp_path):
    Generator.from_pretrained(tiny_gguf(tmp_path / "whole.gguf"), device="cpu")  # the file as written loads
    path = tiny_gguf(tmp_path / "missing.gguf", drop="blk.1.ffn_up.weight")
    m = refused(Generator.from_pretrained, path)
    assert m["file"] == str(path) and m["tensor"] == "blk.1.ffn_up.weight" and "is missing" in m.group(0)
    path = tiny_gguf(tmp_path / "extra.gguf", extra={"blk.0.attn_extra.weight": np.zeros(64, np.float32)})
    assert refused(Generator.from_pretrained, path)["tensor"] == "blk.0.attn_extra.weight"
    path = tiny_gguf(tmp_path / "int.gguf", drop="blk.0.attn_norm.weight",
                     extra={"blk.0.attn_norm.weight": np.zeros(64, np.int32)})
    m = refused(Generator.open, str(path))
    assert m["tensor"] == "blk.0.attn_norm.weight" and "is int32, not floating point" in m.group(0)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A linearization run over a tiny Hugging Face base, with LoRA factors: (base folder, run folder)."""
    from ragctx.generator.linearize import LinearizeConfig, linearize

    tmp = tmp_path_factory.mktemp("delta")
    base = tiny_base(tmp / "tiny")
    cfg = LinearizeConfig(**{**TINY, "transfer_steps": 1, "finetune_steps": 1})
    linearize(str(base), cfg, tmp / "run", progress=False, log=lambda *_: None)
    return base, tmp / "run"


def bad_delta(tmp_path: Path, run: Path, change) -> Path:
    folder = tmp_path / "bad"
    folder.mkdir(exist_ok=True)
    (folder / "delta.safetensors").write_bytes((run / "delta.safetensors").read_bytes())
    rewrite(folder / "delta.safetensors", change)
    return folder


def test_a_delta_that_does_not_fit_its_base(tmp_path, run):
    base, folder = run
    assert Generator.open(folder).model.has_feature_maps  # as written, it loads
    maps = next(k for k in load_file(str(folder / "delta.safetensors")) if ".maps." in k)
    bad = bad_delta(tmp_path, folder, lambda t: t.__setitem__(maps, t[maps][..., :-1].contiguous()))
    m = refused(Generator.open, bad)
    assert m["file"] == str(bad / "delta.safetensors") and m["tensor"] == maps and "the config's shapes" in m.group(0)
    assert m.group(0).endswith("make the delta again with ragctx linearize over this base")
    # the same delta as the start of another run's maps (linearize's maps_from) is the same error
    from ragctx.generator.linearize import LinearizeConfig, linearize

    cfg = LinearizeConfig(**{**TINY, "transfer_steps": 1, "maps_from": str(bad / "delta.safetensors")})
    assert refused(linearize, str(base), cfg, tmp_path / "again", progress=False)["tensor"] == maps
    lora = "layers.1.self_attn.v_proj.lora_b"
    bad = bad_delta(tmp_path, folder, lambda t: t.__setitem__(lora, torch.zeros(t[lora].shape[0], 3)))
    assert refused(Generator.open, bad)["tensor"] == lora
    bad = bad_delta(tmp_path, folder, lambda t: t.pop("layers.0.self_attn.q_proj.lora_a"))
    assert "tensor layers.0.self_attn.q_proj.lora_a is missing" in refused(Generator.open, bad).group(0)


def test_every_format_is_loaded_through_the_one_check(tmp_path, monkeypatch, run):
    """The check runs for each format (a spy records what it checked), and what it passes loads."""
    checked = []
    real = checkpoints.check_state

    def spy(expected, found, where, **kw):
        checked.append(Path(str(where)).name)
        return real(expected, found, where, **kw)

    monkeypatch.setattr(checkpoints, "check_state", spy)
    folder = saved_folder(tmp_path)
    Generator.load(folder)
    assert checked == ["model.safetensors"]
    checkpoints.load_weights(Transformer(ModelConfig.from_name("tiny")), folder, fix="")
    assert checked[1:] == ["model.safetensors"]
    _, hf = checkpoint(tmp_path, "qwen2")
    Generator.from_pretrained(hf)
    assert checked[2:] == ["qwen2"]
    Generator.from_pretrained(tiny_gguf(tmp_path / "t.gguf"))
    assert checked[3:] == ["t.gguf"]  # once on the header's shapes, before anything is dequantized
    del checked[:]
    Generator.open(run[1])
    assert checked == ["tiny", "delta.safetensors", "delta.safetensors"]  # the base, the whole delta, then its maps as they are loaded
