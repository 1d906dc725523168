"""Loading llama.cpp's GGUF files: the config from the file's metadata, the weights dequantized (F32, F16, BF16,
Q8_0, Q4_0, Q4_1 by torch here; Q5_0, Q5_1, the K-quants Q2_K-Q6_K and the rest by the ``gguf`` package), llama.cpp's
Q/K row permutation undone, and the tokenizer and chat template from ``tokenizer.*`` (:func:`gguf_tokenizer`).

The header is parsed here rather than by ``gguf.GGUFReader``, which builds a numpy view per vocabulary entry: 2.5 s
for SmolLM2's 49K tokens and 49K merges on a 2-core CPU, against ~0.1 s here; the torch dequantizers cut the
weights' 1.3 s in numpy about fourfold. Both are tested against the gguf package (tests/test_gguf.py): the same
metadata, and bit-identical weights.

Architectures: ``llama`` (Llama 2/3, SmolLM, Mistral, TinyLlama), ``qwen2`` and ``gemma3`` (text; its 5:1 local/global
layers, GeGLU, q/k and sandwich norms as config fields); others are refused with their name.
Logits equal transformers' own GGUF loading (``from_pretrained(dir, gguf_file=...)``, which dequantizes to fp32):
tests/test_gguf.py.
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import RagctxError
from .config import ModelConfig
from .tokenizer import HFTokenizer, gguf_tokenizer

__all__ = ["ARCHITECTURES", "GGUFFile", "GGUFTensor", "dequantize", "find_gguf"]

ARCHITECTURES = ("llama", "qwen2", "gemma3")
PERMUTED = ("llama",)  # llama.cpp's converter reorders q/k rows for these (interleaved RoPE pairs)

# GGUF tensor name (after "blk.N.") -> ragctx / Hugging Face name (after "layers.N.")
_BLOCK = {
    "attn_norm.weight": "input_layernorm.weight",
    "ffn_norm.weight": "post_attention_layernorm.weight",
    "attn_q.weight": "self_attn.q_proj.weight", "attn_q.bias": "self_attn.q_proj.bias",
    "attn_k.weight": "self_attn.k_proj.weight", "attn_k.bias": "self_attn.k_proj.bias",
    "attn_v.weight": "self_attn.v_proj.weight", "attn_v.bias": "self_attn.v_proj.bias",
    "attn_output.weight": "self_attn.o_proj.weight",
    "ffn_gate.weight": "mlp.gate_proj.weight",
    "ffn_up.weight": "mlp.up_proj.weight",
    "ffn_down.weight": "mlp.down_proj.weight",
}
# Gemma's sandwich norms (llama.cpp's converter stores each norm weight as 1 + w, the plain multiplier ragctx's
# RMSNorm takes, so they load unchanged): its ffn_norm is the norm before the FFN
_GEMMA_BLOCK = {**_BLOCK, "ffn_norm.weight": "pre_feedforward_layernorm.weight",
                "post_attention_norm.weight": "post_attention_layernorm.weight",
                "post_ffw_norm.weight": "post_feedforward_layernorm.weight",
                "attn_q_norm.weight": "self_attn.q_norm.weight", "attn_k_norm.weight": "self_attn.k_norm.weight"}
_TOP = {"token_embd.weight": "embed_tokens.weight", "output_norm.weight": "norm.weight",
        "output.weight": "lm_head.weight"}
_TOP_NAMES, _BLOCK_NAMES, _GEMMA_NAMES = ({v: k for k, v in m.items()} for m in (_TOP, _BLOCK, _GEMMA_BLOCK))
_INTEGER = {24: torch.int8, 25: torch.int16, 26: torch.int32, 27: torch.int64}  # ggml's I8-I64: not weights


def find_gguf(path: Path) -> Path | None:
    """``path`` if it is a .gguf file; the one .gguf file of a folder; None when there is none."""
    if path.is_file():
        return path if path.suffix.lower() == ".gguf" else None
    if path.is_dir():
        files = sorted(path.glob("*.gguf"))
        if len(files) > 1:
            raise RagctxError(f"{path} holds {len(files)} GGUF files ({', '.join(f.name for f in files[:4])}); "
                              "pass the file itself")
        return files[0] if files else None
    return None


class GGUFFile:
    """One GGUF file, opened and checked: its metadata, config, tokenizer and weights."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise RagctxError(f"{self.path}: no such GGUF file")
        try:
            self.meta, self.tensors = _read(self.path)
        except (ValueError, struct.error, UnicodeDecodeError, OverflowError, MemoryError, RecursionError) as e:
            raise RagctxError(f"{self.path}: not a readable GGUF file ({e}); re-download or re-convert it") from None
        self.architecture = self.meta.get("general.architecture")
        if self.architecture not in ARCHITECTURES:
            raise RagctxError(f"{self.path}: architecture '{self.architecture}' is not supported; ragctx loads "
                              f"{', '.join(ARCHITECTURES)} GGUF files")

    def _key(self, name: str, default: Any = None, *, required: bool = False) -> Any:
        value = self.meta.get(f"{self.architecture}.{name}", default)
        if required and value is None:
            raise RagctxError(f"{self.path}: metadata key '{self.architecture}.{name}' is missing")
        if isinstance(value, list):
            raise RagctxError(f"{self.path}: '{self.architecture}.{name}' varies per layer; ragctx needs one value")
        return value

    def config(self, attention: str) -> ModelConfig:
        """The :class:`ModelConfig` the metadata describes (``window`` = the file's sliding window, else the
        whole context)."""
        dim = int(self._key("embedding_length", required=True))
        heads = int(self._key("attention.head_count", required=True))
        head_dim = int(self._key("attention.key_length", dim // heads))
        rope_dims = int(self._key("rope.dimension_count", head_dim))
        if rope_dims != head_dim:
            raise RagctxError(f"{self.path}: RoPE on {rope_dims} of {head_dim} head dimensions (partial rotary) "
                              "is not implemented")
        emb = self.tensors.get("token_embd.weight")
        vocab = self._key("vocab_size") or len(self.meta.get("tokenizer.ggml.tokens") or []) or \
            (int(emb.shape[1]) if emb is not None else 0)
        context = int(self._key("context_length", 4096))
        gemma = {}
        if self.architecture == "gemma3":  # llama.cpp's constants for Gemma 3 where the file has no key
            gemma = dict(activation="gelu_tanh", qk_norm=True, norm_layout="sandwich", embed_scale=dim**0.5,
                         global_every=int(self._key("attention.sliding_window_pattern", 6)),
                         rope_local_base=float(self._key("rope.freq_base_swa", 10000.0)))
        return ModelConfig(
            vocab_size=int(vocab),
            dim=dim,
            n_layers=int(self._key("block_count", required=True)),
            n_heads=heads,
            n_kv_heads=int(self._key("attention.head_count_kv", heads)),
            head_dim=head_dim,
            hidden_dim=int(self._key("feed_forward_length", required=True)),
            norm_eps=float(self._key("attention.layer_norm_rms_epsilon", 1e-5)),
            rope_base=float(self._key("rope.freq_base", 10000.0)),
            rope_scaling=self._rope_scaling(context, head_dim),
            max_seq_len=context,
            tie_embeddings="output.weight" not in self.tensors,
            attention_bias="blk.0.attn_q.bias" in self.tensors,
            attention=attention,
            window=int(self._key("attention.sliding_window", 0) or context),
            **gemma,
        )

    def _rope_scaling(self, context: int, head_dim: int) -> dict[str, Any] | None:
        if "rope_freqs.weight" in self.tensors:  # Llama 3.1's scaling, baked into per-frequency divisors
            return {"rope_type": "factors", "factors": self._array("rope_freqs.weight").reshape(-1).tolist()}
        kind = self._key("rope.scaling.type", "none")
        if kind in ("none", None):
            return None
        factor = self._key("rope.scaling.factor")
        if not isinstance(factor, (int, float)) or factor <= 0:
            raise RagctxError(f"{self.path}: RoPE scaling '{kind}' without a positive rope.scaling.factor ({factor!r})")
        if kind == "linear":
            return {"rope_type": "linear", "factor": float(factor)}
        if kind == "yarn":
            out = {"rope_type": "yarn", "factor": float(factor),
                   "original_max_position_embeddings": int(self._key("rope.scaling.original_context_length", context))}
            for ours, theirs in (("beta_fast", "rope.scaling.yarn_beta_fast"),
                                 ("beta_slow", "rope.scaling.yarn_beta_slow")):
                if self._key(theirs) is not None:
                    out[ours] = float(self._key(theirs))
            attn = self._key("rope.scaling.attn_factor")
            if attn is not None:  # llama.cpp multiplies YaRN's own 0.1 ln(factor) + 1 by it (Hugging Face replaces it)
                out["attention_factor"] = float(attn) * (0.1 * math.log(factor) + 1.0 if factor > 1 else 1.0)
            return out
        raise RagctxError(f"{self.path}: RoPE scaling '{kind}' is not implemented (linear, yarn and Llama 3's "
                          "rope_freqs are)")

    def tokenizer(self) -> HFTokenizer:
        return gguf_tokenizer(self.meta, str(self.path), cache=self.path)

    def _array(self, name: str) -> np.ndarray:
        """Tensor ``name`` dequantized to float32, in PyTorch's [rows, columns] order."""
        return dequantize(self.tensors[name], f"{self.path}: tensor {name}")

    def _ours(self, name: str) -> str | None:
        """ragctx's (Hugging Face's) name for the file's tensor ``name``; None for one the model has no place for."""
        if name in _TOP:
            return _TOP[name]
        block = _GEMMA_BLOCK if self.architecture == "gemma3" else _BLOCK
        if name.startswith("blk.") and name.count(".") >= 2:
            _, layer, rest = name.split(".", 2)
            return f"layers.{layer}.{block[rest]}" if rest in block else None
        return None

    def file_name(self, ours: str) -> str:
        """The file's name for ragctx's tensor ``ours`` (the inverse of the renaming), as errors name it."""
        if ours in _TOP_NAMES:
            return _TOP_NAMES[ours]
        block = _GEMMA_NAMES if self.architecture == "gemma3" else _BLOCK_NAMES
        if ours.startswith("layers.") and ours.count(".") >= 2:
            _, layer, rest = ours.split(".", 2)
            if rest in block:
                return f"blk.{layer}.{block[rest]}"
        return ours

    def shapes(self) -> dict[str, torch.Tensor]:
        """Every weight as a meta tensor (its shape in PyTorch's order and its dtype after dequantization, no
        data) under ragctx's name, or the file's own name for one the model has no place for: what the loader's
        check reads before anything is dequantized."""
        out = {}
        for name, t in self.tensors.items():
            if name == "rope_freqs.weight":
                continue
            dtype = _INTEGER.get(t.qtype, torch.float32)
            out[self._ours(name) or name] = torch.empty(tuple(reversed(t.shape)), dtype=dtype, device="meta")
        return out

    def state_dict(self, cfg: ModelConfig, dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
        """Every weight under ragctx's (Hugging Face's) names, dequantized to ``dtype``, llama.cpp's Q/K row order
        undone. Tensors the model has no place for are left out: the loader checks :meth:`shapes` first."""
        state: dict[str, torch.Tensor] = {}
        for name in self.tensors:
            ours = self._ours(name)
            if ours is None:
                continue
            w = self._array(name)
            if self.architecture in PERMUTED and ours.endswith(("q_proj.weight", "q_proj.bias", "k_proj.weight",
                                                                "k_proj.bias")):
                w = _unpermute(w, cfg.n_heads if ".q_proj." in ours else cfg.n_kv_heads)
            state[ours] = torch.from_numpy(w).to(dtype)
        return state


def _unpermute(w: np.ndarray, n_head: int) -> np.ndarray:
    """Inverse of llama.cpp's ``permute``: rows of each head back from interleaved pairs to rotate-half halves."""
    shape = w.shape
    return w.reshape(n_head, shape[0] // n_head // 2, 2, *shape[1:]).swapaxes(1, 2).reshape(shape)


# -- the file format (github.com/ggml-org/ggml/blob/master/docs/gguf.md) -----------------------------------------
_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
_NUMPY = {0: np.uint8, 1: np.int8, 2: np.uint16, 3: np.int16, 4: np.uint32, 5: np.int32, 6: np.float32, 7: np.bool_,
          10: np.uint64, 11: np.int64, 12: np.float64}
_STRING, _ARRAY = 8, 9


@dataclass(frozen=True)
class GGUFTensor:
    """One tensor's place in the file: raw bytes (quantized) or typed values, shaped [rows, ...] as numpy reads."""

    name: str
    qtype: int  # ggml's type number (gguf.GGMLQuantizationType)
    shape: tuple[int, ...]  # ggml order (ne0 = columns first), as the file writes it
    data: np.ndarray  # a read-only view of the file


def _read(path: Path) -> tuple[dict[str, Any], dict[str, GGUFTensor]]:
    """(metadata, tensors) of a GGUF file (version 2 or 3, little-endian); bad or truncated files raise ValueError."""
    from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType

    buf = np.memmap(path, dtype=np.uint8, mode="r")
    raw = memoryview(buf)
    pos = 0

    def take(fmt: str):
        nonlocal pos
        size = struct.calcsize(fmt)
        if pos + size > len(raw):
            raise ValueError(f"the file ends at byte {len(raw)} inside its header")
        (value,) = struct.unpack_from(fmt, raw, pos)
        pos += size
        return value

    def string() -> str:
        nonlocal pos
        n = take("<Q")
        if pos + n > len(raw):
            raise ValueError(f"the file ends at byte {len(raw)} inside a string of its header")
        out = bytes(raw[pos : pos + n]).decode("utf-8")
        pos += n
        return out

    def value(kind: int, depth: int = 0):
        nonlocal pos
        if kind == _STRING:
            return string()
        if kind == _ARRAY:
            if depth > 8:
                raise ValueError(f"arrays nested more than 8 deep at byte {pos}")
            item, n = take("<I"), take("<Q")
            if item == _STRING:
                return [string() for _ in range(n)]
            if item in _NUMPY:
                size = np.dtype(_NUMPY[item]).itemsize * n
                if pos + size > len(raw):
                    raise ValueError(f"the file ends at byte {len(raw)} inside an array of its header")
                out = np.frombuffer(raw, dtype=_NUMPY[item], count=n, offset=pos).tolist()
                pos += size
                return out
            return [value(item, depth + 1) for _ in range(n)]
        if kind not in _SCALARS:
            raise ValueError(f"unknown metadata value type {kind} at byte {pos}")
        return take(_SCALARS[kind])

    if len(raw) < 24 or bytes(raw[:4]) != b"GGUF":
        raise ValueError("no GGUF magic number at its start")
    pos = 4
    version = take("<I")
    if version not in (2, 3):
        raise ValueError(f"GGUF version {version} (ragctx reads versions 2 and 3, little-endian)")
    n_tensors, n_kv = take("<Q"), take("<Q")
    meta: dict[str, Any] = {}
    for _ in range(n_kv):
        key = string()
        meta[key] = value(take("<I"))
    infos = []
    for _ in range(n_tensors):
        name, n_dims = string(), take("<I")
        dims = tuple(take("<Q") for _ in range(n_dims))
        infos.append((name, dims, take("<I"), take("<Q")))
    align = meta.get("general.alignment", 32)
    if not isinstance(align, int) or isinstance(align, bool) or align < 1 or align % 8:
        raise ValueError(f"general.alignment is {align!r} (the format asks for a positive multiple of 8)")
    start = -(-pos // align) * align
    tensors = {}
    for name, dims, qtype, offset in infos:
        try:
            block, size = GGML_QUANT_SIZES[GGMLQuantizationType(qtype)]
        except (ValueError, KeyError):
            raise ValueError(f"tensor {name} has unknown type {qtype}") from None
        count = int(np.prod(dims, dtype=np.int64))
        if count % block or (dims and dims[0] % block):
            raise ValueError(f"tensor {name} of shape {dims} does not split into blocks of {block}")
        nbytes, at = count // block * size, start + offset
        if at + nbytes > len(buf):
            raise ValueError(f"tensor {name} needs bytes {at}-{at + nbytes}, the file has {len(buf)} (truncated?)")
        rows = tuple(reversed(dims[1:]))
        data = buf[at : at + nbytes].reshape(*rows, -1)  # [rows..., bytes of a row]
        typed = {0: np.float32, 1: np.float16}.get(qtype)
        tensors[name] = GGUFTensor(name, qtype, dims, data.view(typed) if typed else data)
    return meta, tensors


def dequantize(t: GGUFTensor, where: str) -> np.ndarray:
    """float32 [rows, columns]: torch for F32, F16, BF16, Q8_0, Q4_0 and Q4_1 (bit-identical to the gguf package),
    the gguf package for every other type it knows."""
    from gguf import GGMLQuantizationType
    from gguf import quants

    fast = _FAST.get(t.qtype)
    if fast is not None:
        return fast(torch.from_numpy(np.array(t.data)).view(-1, t.data.shape[-1]), t.shape[0]) \
            .reshape(*t.data.shape[:-1], t.shape[0]).numpy()
    try:
        return np.array(quants.dequantize(t.data, GGMLQuantizationType(t.qtype)), dtype=np.float32)
    except NotImplementedError:
        raise RagctxError(f"{where} is stored as {GGMLQuantizationType(t.qtype).name}, which ragctx cannot "
                          "dequantize; use a file quantized as F16, Q8_0, Q4_K, Q5_K or Q6_K") from None


def _blocks(raw: torch.Tensor, size: int) -> torch.Tensor:
    return raw.reshape(-1, size)  # [blocks, bytes of a block]


def _f16(raw: torch.Tensor) -> torch.Tensor:
    """Little-endian float16 from byte pairs [..., 2] -> float32 [..., 1]."""
    return raw.contiguous().view(torch.float16).float()


def _nibbles(qs: torch.Tensor) -> torch.Tensor:
    """[blocks, 16] bytes -> [blocks, 32]: low nibbles are elements 0-15, high nibbles 16-31 (ggml's order)."""
    return torch.cat([qs & 0x0F, qs >> 4], dim=1)


def _q8_0(raw: torch.Tensor, cols: int) -> torch.Tensor:
    b = _blocks(raw, 34)
    return b.view(torch.int8)[:, 2:].float().mul_(_f16(b[:, :2])).reshape(-1, cols)  # one strided read, in place


def _q4_0(raw: torch.Tensor, cols: int) -> torch.Tensor:
    b = _blocks(raw, 18)
    return (_f16(b[:, :2]) * (_nibbles(b[:, 2:]).to(torch.int8) - 8).float()).reshape(-1, cols)


def _q4_1(raw: torch.Tensor, cols: int) -> torch.Tensor:
    b = _blocks(raw, 20)
    return (_f16(b[:, :2]) * _nibbles(b[:, 4:]).float() + _f16(b[:, 2:4])).reshape(-1, cols)


def _bf16(raw: torch.Tensor, cols: int) -> torch.Tensor:
    return raw.contiguous().view(torch.bfloat16).float().reshape(-1, cols)


_FAST = {
    0: lambda raw, cols: raw.float().reshape(-1, cols),  # F32 (a typed view already)
    1: lambda raw, cols: raw.float().reshape(-1, cols),  # F16
    30: _bf16, 8: _q8_0, 2: _q4_0, 3: _q4_1,
}
