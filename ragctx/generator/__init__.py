"""The generator: a Llama-style decoder whose attention is one switch (see ``attention``)."""

from __future__ import annotations

from .attention import ATTENTION, get_attention
from .checkpoints import builtin_names
from .config import PRESETS, ModelConfig
from .generate import Generation, Generator
from .model import Transformer
from .tokenizer import ByteTokenizer, HFTokenizer

__all__ = ["ATTENTION", "ByteTokenizer", "Generation", "Generator", "HFTokenizer", "ModelConfig", "PRESETS",
           "Transformer", "builtin_names", "get_attention"]
