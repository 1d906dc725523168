"""The OpenVINO embedder: the cached ONNX export of the packaged MiniLM run by OpenVINO, in bf16 where the CPU has
it natively, else fp32. Its vectors stay within a stated cosine of sentence-transformers' and its recall on labelled
essay questions equals theirs."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

ov = pytest.importorskip("openvino")

from ragctx import ChunkConfig, RagctxError, load_path  # noqa: E402
from ragctx.chunking import Chunker  # noqa: E402
from ragctx.embeddings import BACKENDS, OpenVinoEmbedder, make_embedder  # noqa: E402

TEXTS = ["The P-400 pump moves 35 litres a minute.", "  Valves are checked weekly.  ", "naïve café — ünïcödé ✓ 東京",
         "word " * 400]  # longer than the 256-token limit: truncated as sentence-transformers does
NATIVE_BF16 = "BF16" in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")
# min cosine to sentence-transformers' fp32 vectors: fp32 is the same computation (measured 0.99999994); bf16 rounds
# weights and activations to 8 bits of mantissa (measured >= 0.99996 over the essays' 1,001 chunks)
COSINE = {"f32": 0.99999, "bf16": 0.9999}


@pytest.fixture()
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("RAGCTX_CACHE", str(tmp_path))
    return tmp_path


@pytest.mark.parametrize("precision", ["auto", "f32", "bf16"])
def test_openvino_vectors_close_to_sentence_transformers(embedder, cache, precision):
    if precision == "bf16" and not NATIVE_BF16:
        with pytest.raises(RagctxError, match="no native bfloat16"):
            OpenVinoEmbedder(precision="bf16")
        return
    ovm = OpenVinoEmbedder(precision=precision, threads=2, batch_size=3)
    assert ovm.precision == (precision if precision != "auto" else ("bf16" if NATIVE_BF16 else "f32"))
    assert ovm.dim == embedder.dim == 384
    a, b = ovm.encode(TEXTS * 3), embedder.encode(TEXTS * 3)  # four batches over two streams, done out of order
    assert a.dtype == np.float32 and a.shape == b.shape
    assert (a * b).sum(1).min() > COSINE[ovm.precision]
    assert np.allclose(np.linalg.norm(a, axis=1), 1.0, atol=1e-5)
    assert float(ovm.encode_query(TEXTS[2]) @ a[2]) > COSINE[ovm.precision]  # alone or in a batch: the same
    assert list(cache.glob("onnx/*/model.onnx"))  # it runs the onnx backend's cached export


def test_openvino_backend_by_name(cache):
    assert "openvino" in BACKENDS
    emb = make_embedder(backend="openvino", device="cpu")
    assert isinstance(emb, OpenVinoEmbedder) and emb.encode([]).shape == (0, 384)
    with pytest.raises(RagctxError, match="choose one of torch, onnx, onnx-int8, openvino"):
        make_embedder(backend="openvino-int4")
    with pytest.raises(RagctxError, match="runs on the CPU"):
        make_embedder(backend="openvino", device="cuda")
    with pytest.raises(RagctxError, match="precision 'fp64' is unknown; choose one of auto, bf16, f32"):
        OpenVinoEmbedder(precision="fp64")


def test_openvino_recall_equals_torch_on_labelled_essays(embedder, cache):
    """Dense recall@5 over the essays QA questions whose evidence lies in four essays (~110 chunks of 200 tokens):
    the openvino backend finds what sentence-transformers finds."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from eval._common import QA_FILE
    from ragctx.data import essays_dir
    from ragctx.evaluation.metrics import doc_spans_overlap as recall
    from ragctx.evaluation.qa_tasks import load_qa_file

    essays = {"vcsqueeze.txt", "web20.txt", "gh.txt", "startuplessons.txt"}
    docs = [d for d in load_path(essays_dir()).documents if d.id in essays]
    chunker = Chunker(ChunkConfig(200, 32))
    chunks = [c for d in docs for c in chunker.split(d)]
    items = [i for i in load_qa_file(QA_FILE, corpus=True)
             if i["answers"] and {e["doc_id"] for e in i["evidence"]} <= essays]
    assert len(items) >= 15 and len(chunks) >= 80
    texts, questions = [c.text for c in chunks], [i["question"] for i in items]

    def top5(emb) -> np.ndarray:
        return np.argsort(-(emb.encode(questions) @ emb.encode(texts).T), axis=1)[:, :5]

    def recall_at_5(top: np.ndarray) -> float:
        return float(np.mean([recall([(chunks[j].doc_id, chunks[j].start, chunks[j].end) for j in row],
                                     [(e["doc_id"], e["start"], e["end"]) for e in item["evidence"]])
                              for item, row in zip(items, top)]))

    want, got = top5(embedder), top5(OpenVinoEmbedder(threads=2))
    assert recall_at_5(want) > 0.5  # the set is answerable: a broken embedder would not pass this
    assert recall_at_5(got) >= recall_at_5(want) - 1e-9
    same = np.mean([set(a) == set(b) for a, b in zip(want, got)])
    assert same >= 0.9  # the same five chunks for nearly every question (measured 1.0; onnx-int8: 0.31)
