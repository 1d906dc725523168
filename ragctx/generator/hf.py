"""Hugging Face Llama / Qwen2 / Mistral checkpoints (a local folder: config.json, *.safetensors, tokenizer.json):
their config as a :class:`ModelConfig` and their tensor names as ragctx's. The loader reads and checks the weights
(:mod:`.checkpoints`, safetensors only).

Mistral's training window becomes ``cfg.window``: ``attention="sliding_window"`` reproduces it; softmax and flash
attend to everything, which equals Mistral for inputs no longer than its window.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..errors import RagctxError
from .config import ModelConfig

__all__ = ["hf_config", "ragctx_name", "SUPPORTED_MODEL_TYPES"]

SUPPORTED_MODEL_TYPES = ("llama", "qwen2", "mistral")


def hf_config(folder: Path, attention: str) -> ModelConfig:
    """A :class:`ModelConfig` from a checkpoint's config.json, refusing what this model does not implement."""
    path = folder / "config.json"
    if not path.is_file():
        raise RagctxError(f"{path} is missing; pass a folder holding config.json, *.safetensors and tokenizer.json")
    try:
        c: dict[str, Any] = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise RagctxError(f"{path} is not valid JSON ({e}); restore the checkpoint's config.json") from None
    if not isinstance(c, dict):
        raise RagctxError(f"{path} must hold a JSON object (the checkpoint's config)")
    kind = c.get("model_type")
    if kind not in SUPPORTED_MODEL_TYPES:
        raise RagctxError(f"{path}: model_type '{kind}' is not supported; ragctx loads {', '.join(SUPPORTED_MODEL_TYPES)}")
    rope = dict(c.get("rope_parameters") or c.get("rope_scaling") or {})
    if rope.get("rope_type", rope.get("type", "default")) in ("llama3", "yarn"):  # as transformers fills it in
        rope.setdefault("original_max_position_embeddings",
                        c.get("original_max_position_embeddings", c.get("max_position_embeddings")))
    if c.get("hidden_act", "silu") != "silu":
        raise RagctxError(f"{path}: activation '{c.get('hidden_act')}' is not implemented (SwiGLU with silu only)")
    if c.get("mlp_bias"):
        raise RagctxError(f"{path}: MLP biases are not implemented")
    heads = c.get("num_attention_heads")
    try:
        return _config(c, heads, rope, kind, attention)
    except (KeyError, TypeError, ValueError) as e:
        raise RagctxError(f"{path}: config.json lacks or mistypes a field ({type(e).__name__}: {e})") from None
    except RagctxError as e:
        raise RagctxError(f"{path}: {e}") from None


def _config(c: dict[str, Any], heads: int, rope: dict[str, Any], kind: str, attention: str) -> ModelConfig:
    return ModelConfig(
        vocab_size=c["vocab_size"],
        dim=c["hidden_size"],
        n_layers=c["num_hidden_layers"],
        n_heads=heads,
        n_kv_heads=c.get("num_key_value_heads") or heads,
        head_dim=c.get("head_dim") or c["hidden_size"] // heads,
        hidden_dim=c["intermediate_size"],
        norm_eps=c.get("rms_norm_eps", 1e-6),
        rope_base=float(rope.get("rope_theta", c.get("rope_theta", 10000.0))),
        rope_scaling=rope or None,
        max_seq_len=c.get("max_position_embeddings", 4096),
        tie_embeddings=bool(c.get("tie_word_embeddings", False)),
        attention_bias=bool(c.get("attention_bias", kind == "qwen2")),
        attention=attention,
        # Mistral's training window; other models have none (sliding_window runs 4096 unless window= says)
        window=int(c.get("sliding_window") or 4096) if kind == "mistral" else min(4096, c.get("max_position_embeddings",
                                                                                           4096)),
    )


def ragctx_name(name: str) -> str | None:
    """ragctx's name for a checkpoint's tensor ``name`` (``model.`` dropped: ragctx keeps the rest of Hugging Face's
    names); None for RoPE's cached ``inv_freq``, which is computed, not loaded."""
    return None if name.endswith("rotary_emb.inv_freq") else name.removeprefix("model.")
