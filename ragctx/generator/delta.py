"""The linearization delta's format and its writer (what ``ragctx linearize`` saves).

A delta is one safetensors file: per layer the learned feature maps (``layers.I.self_attn.maps.*``) and, when the
run fine-tuned, the LoRA factors of q, k, v and o (``layers.I.self_attn.NAME.lora_a`` / ``lora_b``), all bf16. Its
metadata (key ``ragctx``, JSON) holds the format and version, the base checkpoint and the SHA-256 of its weights
(:func:`base_sha256`), the attention settings, the model's shape, the LoRA rank and scale, and the training
settings. This module is the format and its writer; the loader reads a delta and applies it over its base, refusing
a base whose hash or shape differs and tensors that do not fit (:func:`~ragctx.generator.checkpoints.apply_delta`).
Training is :mod:`.linearize`'s.
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

__all__ = ["DELTA_FILE", "DELTA_FORMAT", "DELTA_VERSION", "LORA_TARGETS", "base_sha256", "merge_lora", "write_delta"]

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


def merge_lora(linear: nn.Linear, a: Tensor, b: Tensor, scale: float) -> None:
    """W += scale * B A, in place (in fp32, stored back in W's dtype)."""
    with torch.no_grad():
        w = linear.weight
        linear.weight.copy_((w.float() + scale * (b.float() @ a.float())).to(w.dtype))
