"""The linearization delta: what ``ragctx linearize`` writes and what loads it over its base model.

A delta is one safetensors file: per layer the learned feature maps (``layers.I.self_attn.maps.*``) and, when the
run fine-tuned, the LoRA factors of q, k, v and o (``layers.I.self_attn.NAME.lora_a`` / ``lora_b``), all bf16. Its
metadata (key ``ragctx``, JSON) holds the format and version, the base checkpoint and the SHA-256 of its weights
(:func:`base_sha256`), the attention settings, the model's shape, the LoRA rank and scale, and the training
settings. :func:`apply_delta` refuses a base whose hash or shape differs. Training is :mod:`.linearize`'s.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..errors import RagctxError
from .model import Transformer

__all__ = ["DELTA_FILE", "LORA_TARGETS", "apply_delta", "base_sha256", "check_base", "load_maps", "merge_lora", "read_delta",
           "write_delta"]

DELTA_FORMAT = "ragctx-delta"
DELTA_VERSION = 1
DELTA_FILE = "delta.safetensors"
LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj")  # the projections a delta's LoRA factors adapt


def base_sha256(path: str | Path) -> str:
    """SHA-256 of a checkpoint's weights: the GGUF file, or a Hugging Face folder's *.safetensors in name order."""
    path = Path(path)
    files = [path] if path.is_file() else sorted(path.glob("*.safetensors")) or sorted(path.glob("*.gguf"))
    if not files:
        raise RagctxError(f"{path}: no weights (.gguf or .safetensors) to hash")
    h = hashlib.sha256()
    for f in files:
        with open(f, "rb") as fh:
            while block := fh.read(1 << 22):
                h.update(block)
    return h.hexdigest()


def write_delta(path: Path, model: Transformer, adapters: dict[str, Any], settings: dict[str, Any], cfg) -> Path:
    """Writes ``model``'s feature maps and the LoRA factors of ``adapters`` (name -> LoRALinear) to ``path``
    atomically, with ``settings`` (base, base_sha256, training) and ``cfg``'s LoRA rank and alpha as metadata."""
    from safetensors.torch import save_file

    tensors = {}
    for i, layer in enumerate(model.layers):
        for n, p in layer.self_attn.maps.named_parameters():
            tensors[f"layers.{i}.self_attn.maps.{n}"] = p.detach().to(torch.bfloat16).cpu().contiguous()
    for key, a in adapters.items():
        tensors[f"{key}.lora_a"] = a.lora_a.detach().to(torch.bfloat16).cpu().contiguous()
        tensors[f"{key}.lora_b"] = a.lora_b.detach().to(torch.bfloat16).cpu().contiguous()
    c = model.cfg
    meta = {"format": DELTA_FORMAT, "format_version": DELTA_VERSION, "base": settings["base"],
            "base_sha256": settings["base_sha256"],
            "attention": {"attention": c.attention, "layer_attention": c.layer_attention, "window": c.window,
                          "feature_map": c.feature_map, "hybrid_feature_map": c.hybrid_feature_map,
                          "hedgehog_dim": c.hedgehog_dim},
            "shape": {"n_layers": c.n_layers, "n_heads": c.n_heads, "n_kv_heads": c.n_kv_heads, "head_dim": c.head_dim},
            "lora": {"rank": cfg.lora_rank, "alpha": cfg.lora_alpha, "targets": list(LORA_TARGETS)} if adapters else None,
            "training": {k: v for k, v in settings.items() if k not in ("base", "base_sha256")}}
    tmp = path.with_name(path.name + ".tmp")
    save_file(tensors, str(tmp), metadata={"ragctx": json.dumps(meta)})
    tmp.replace(path)
    return path


def read_delta(spec: str | Path) -> tuple[dict, dict[str, Tensor]]:
    """(metadata, tensors) of a delta: a .safetensors file or a run folder holding ``delta.safetensors``."""
    from safetensors import safe_open

    path = Path(spec)
    if path.is_dir():
        path = path / DELTA_FILE
    if not path.is_file():
        raise RagctxError(f"{spec}: no linearization delta there (expected {DELTA_FILE}); run ragctx linearize")
    try:
        with safe_open(str(path), framework="pt") as f:
            raw = (f.metadata() or {}).get("ragctx")
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:  # safetensors' own errors: truncated or foreign bytes
        raise RagctxError(f"{path}: not a readable safetensors file ({str(e).splitlines()[0][:160]})") from None
    try:
        meta = json.loads(raw) if raw else None
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


def _check_shape(model: Transformer, meta: dict, where) -> None:
    c = model.cfg
    want = {"n_layers": c.n_layers, "n_heads": c.n_heads, "n_kv_heads": c.n_kv_heads, "head_dim": c.head_dim}
    if meta.get("shape") != want:
        raise RagctxError(f"{where}: the delta is for a model shaped {meta.get('shape')}, this one is {want}")
    dim = (meta.get("attention") or {}).get("hedgehog_dim")
    if not isinstance(dim, int) or dim < 1:
        raise RagctxError(f"{where}: the delta's hedgehog_dim is missing; make it again with ragctx linearize")


def load_maps(model: Transformer, delta: tuple[dict, dict[str, Tensor]], sha: str, where) -> None:
    """Copies a delta's feature maps into ``model``'s (already added) maps, base and shape checked."""
    meta, tensors = delta
    check_base(meta, sha, where)
    _check_shape(model, meta, where)
    with torch.no_grad():
        for i, layer in enumerate(model.layers):
            for n, p in layer.self_attn.maps.named_parameters():
                key = f"layers.{i}.self_attn.maps.{n}"
                if key not in tensors or tensors[key].shape != p.shape:
                    raise RagctxError(f"{where}: {key} is missing or has another shape; the delta does not fit")
                p.copy_(tensors[key].to(p.dtype))


def apply_delta(model: Transformer, delta: tuple[dict, dict[str, Tensor]], sha: str, where) -> None:
    """Loads a delta over ``model`` (the base it was trained on, checked by ``sha``): feature maps added and
    loaded, LoRA merged into q, k, v, o, and the attention settings set."""
    meta, tensors = delta
    check_base(meta, sha, where)
    _check_shape(model, meta, where)
    a = meta["attention"]
    model.add_feature_maps(a["hedgehog_dim"])
    model.to(next(model.parameters()).dtype)
    load_maps(model, delta, sha, where)
    lora = meta.get("lora")
    if lora:
        scale = float(lora["alpha"]) / int(lora["rank"])
        for i, layer in enumerate(model.layers):
            for name in lora["targets"]:
                key = f"layers.{i}.self_attn.{name}"
                if f"{key}.lora_a" not in tensors or f"{key}.lora_b" not in tensors:
                    raise RagctxError(f"{where}: {key}'s LoRA factors are missing; the delta is incomplete")
                merge_lora(getattr(layer.self_attn, name), tensors[f"{key}.lora_a"], tensors[f"{key}.lora_b"], scale)
    model.cfg.set_options(window=a["window"], feature_map=a["feature_map"], hybrid_feature_map=a["hybrid_feature_map"])
    model.set_attention(a["attention"])
    if a.get("layer_attention"):
        model.set_layer_attention(a["layer_attention"])


def merge_lora(linear: nn.Linear, a: Tensor, b: Tensor, scale: float) -> None:
    """W += scale * B A, in place (in fp32, stored back in W's dtype)."""
    with torch.no_grad():
        w = linear.weight
        linear.weight.copy_((w.float() + scale * (b.float() @ a.float())).to(w.dtype))
