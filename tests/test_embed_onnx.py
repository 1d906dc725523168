"""The ONNX Runtime embedder: the packaged MiniLM exported once, the same vectors as sentence-transformers."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("onnxruntime")

from ragctx import RagctxError  # noqa: E402
from ragctx.embeddings import OnnxEmbedder, make_embedder  # noqa: E402

TEXTS = ["The P-400 pump moves 35 litres a minute.", "  Valves are checked weekly.  ", "naïve café — ünïcödé ✓ 東京",
         "word " * 400]  # longer than the 256-token limit: truncated as sentence-transformers does


def test_onnx_vectors_equal_sentence_transformers(embedder, tmp_path, monkeypatch):
    monkeypatch.setenv("RAGCTX_CACHE", str(tmp_path))
    onnx = OnnxEmbedder()
    assert onnx.dim == embedder.dim == 384
    a, b = onnx.encode(TEXTS), embedder.encode(TEXTS)
    assert (a * b).sum(1).min() > 0.99999  # cosine: the same vectors (measured 0.99999994)
    assert np.allclose(np.linalg.norm(a, axis=1), 1.0, atol=1e-5)
    assert list((tmp_path / "onnx").glob("*/model.onnx"))  # exported once into the cache
    again = OnnxEmbedder()  # the cached export is reused
    np.testing.assert_allclose(again.encode(TEXTS[:1]), a[:1], atol=1e-6)
    q8 = make_embedder(backend="onnx-int8", device="cpu")
    c = q8.encode(TEXTS)
    assert (c * b).sum(1).min() > 0.8  # quantized: close, not equal (recall measured in eval/reports/embedding-cpu)
    with pytest.raises(RagctxError, match="choose one of torch, onnx, onnx-int8"):
        make_embedder(backend="tpu")
    with pytest.raises(RagctxError, match="runs on the CPU"):
        make_embedder(backend="onnx", device="cuda")
