from __future__ import annotations

import numpy as np
import pytest
import torch

from ragctx import RagctxError
from ragctx.embeddings import Embedder, resolve_model

TEXTS = ["  leading and trailing spaces  ", "x", "ünïcödé ÀÉ naïve café", "word " * 400, "Short one.", ""]


def test_fast_tokenization_equals_sentence_transformers(embedder):
    assert embedder._fast is not None  # MiniLM takes the Rust encode_batch path
    batches = list(embedder._batches(TEXTS))
    ref = embedder._preprocess(TEXTS)  # one batch, same order as given
    for key in ("input_ids", "attention_mask", "token_type_ids"):
        assert torch.equal(batches[0][key], ref[key]), key


def test_encode_matches_sentence_transformers_and_is_normalized(embedder):
    texts = TEXTS * 3 + [f"document number {i} about topic {i % 5}" for i in range(40)]
    ours = embedder.encode(texts)
    ref = embedder.model.encode(texts, batch_size=16, normalize_embeddings=True)
    assert ours.dtype == np.float32 and ours.shape == (len(texts), 384)
    np.testing.assert_allclose(ours, ref, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(ours, axis=1), 1.0, atol=1e-5)
    assert embedder.encode([]).shape == (0, 384)


def test_semantic_neighbours(embedder):
    a, b, c = embedder.encode(["A cat sat on the mat.", "A kitten rested on the rug.", "Quarterly tax filing."])
    assert a @ b > a @ c + 0.2


def test_model_resolution_is_offline():
    name, path = resolve_model("all-MiniLM-L6-v2")
    assert name == "sentence-transformers/all-MiniLM-L6-v2" and path.endswith("model")
    with pytest.raises(RagctxError, match="not available offline"):
        Embedder("no-such-org/no-such-model-xyz", device="cpu")


def test_prefetching_threads_give_the_same_inputs(embedder, monkeypatch):
    texts = [f"text number {i} " + "word " * (i % 37) for i in range(150)]
    monkeypatch.setattr(embedder, "SPAN", 16)  # 10 spans
    monkeypatch.setattr(embedder, "batch_size", 8)
    sequential = list(embedder._batches(texts))
    monkeypatch.setattr(embedder, "device", "cuda")  # only switches on the prefetching threads here
    prefetched = list(embedder._batches(texts))
    assert len(prefetched) == len(sequential) == 19  # 9 spans of 16 (2 batches each), 1 of 6
    for a, b in zip(prefetched, sequential):
        assert a.keys() == b.keys()
        assert all(torch.equal(a[k], b[k]) for k in a if isinstance(a[k], torch.Tensor))
    ref = embedder._preprocess(texts[:8])
    assert torch.equal(sequential[0]["input_ids"], ref["input_ids"])
