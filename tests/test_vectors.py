"""FAISS shards against brute-force search as the answer key."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from ragctx import RagctxError, VectorConfig
from ragctx.retrieval import DenseRetriever, reciprocal_rank_fusion
from ragctx.vectors import VectorIndex, exact_topk, merge_topk


def clustered(n: int, dim: int = 32, clusters: int = 50, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((clusters, dim))
    x = centers[rng.integers(0, clusters, n)] + 0.35 * rng.standard_normal((n, dim))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


@pytest.fixture(scope="module")
def data():
    x = clustered(6000)
    ids = np.arange(1000, 7000, dtype=np.int64)  # ids need not start at 0
    rng = np.random.default_rng(1)
    q = x[rng.choice(len(x), 64)] + 0.05 * rng.standard_normal((64, 32))  # queries near the data, as in retrieval
    q = (q / np.linalg.norm(q, axis=1, keepdims=True)).astype(np.float32)
    return ids, x, q


def recall_at(I: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(set(a) & set(b)) / len(b) for a, b in zip(I, truth)]))


@pytest.mark.parametrize("factory", ["Flat", "IVF64,Flat", "HNSW16", "IVF32,SQ8"])
@pytest.mark.parametrize("shards", [1, 3])
def test_search_matches_exact(data, factory, shards):
    ids, x, q = data
    index = VectorIndex(32, VectorConfig(factory=factory, shards=shards, nprobe=16))
    index.add(ids, x)
    assert index.ntotal == len(ids)
    D, I = index.search(q, 10)
    _, truth = exact_topk(q, ids, x, 10)
    minimum = {"Flat": 1.0, "IVF64,Flat": 0.95, "HNSW16": 0.95, "IVF32,SQ8": 0.9}[factory]  # SQ8 is lossy
    assert recall_at(I, truth) >= minimum
    assert np.mean(I[:, 0] == truth[:, 0]) >= 0.9
    assert np.all(np.diff(D, axis=1) <= 1e-6)  # best first


@pytest.mark.parametrize("factory", ["Flat", "IVF64,Flat", "HNSW16", "PQ16x4"])  # PQ: no selector, over-fetch
def test_filter_applies_before_the_search(data, factory):
    ids, x, q = data
    index = VectorIndex(32, VectorConfig(factory=factory, nprobe=64))
    index.add(ids, x)
    allowed = ids[::7]  # large enough to go through FAISS selectors / over-fetch
    lookup = dict(zip(ids.tolist(), x))
    D, I = index.search(q, 5, allowed=allowed)
    assert np.isin(I, allowed).all()
    _, truth = exact_topk(q, allowed, np.stack([lookup[i] for i in allowed]), 5)
    assert recall_at(I, truth) >= {"Flat": 1.0, "IVF64,Flat": 0.9, "HNSW16": 0.9, "PQ16x4": 0.2}[factory]
    # a filter keeping a handful of chunks is answered exactly, whatever the index type
    few = ids[[5, 900, 4000]]
    store = SimpleNamespace(vectors=lambda dim, a: (np.sort(a), np.stack([lookup[i] for i in np.sort(a)])))
    dense = DenseRetriever(SimpleNamespace(vectors=index, store=store))  # re-scores them: no index search
    D, I = dense.search_vectors(q[:4], 5, allowed=few)
    assert set(I[0][:3]) == set(few) and (I[:, 3:] == -1).all() and np.isinf(D[:, 3:]).all()


@pytest.mark.parametrize("factory", ["Flat", "IVF64,Flat", "HNSW16"])
def test_remove_or_rebuild(data, factory):
    ids, x, q = data
    index = VectorIndex(32, VectorConfig(factory=factory, nprobe=64))
    index.add(ids, x)
    gone = ids[:3000]
    if not index.remove(gone):
        assert factory == "HNSW16"  # graph indexes cannot remove: rebuild from the stored vectors
        index.rebuild(ids[3000:], x[3000:])
    assert index.ntotal == 3000
    _, I = index.search(x[:50], 10)
    assert not np.isin(I, gone).any()


def test_save_load_round_trip(tmp_path, data):
    ids, x, q = data
    index = VectorIndex(32, VectorConfig(factory="IVF64,Flat", shards=2, nprobe=8))
    index.add(ids, x)
    names = index.save(tmp_path)
    loaded = VectorIndex.load(tmp_path, names, 32, index.config)
    assert np.array_equal(index.search(q, 10)[1], loaded.search(q, 10)[1])


def test_training_needs_enough_vectors(data):
    ids, x, _ = data
    with pytest.raises(RagctxError, match="needs at least 1024 chunks"):
        VectorIndex(32, VectorConfig(factory="IVF1024,Flat")).add(ids[:100], x[:100])


@pytest.mark.parametrize("factory", ["NotAFactory", "IDMap2,Flat"])
def test_bad_factory_is_a_clear_error(factory):
    with pytest.raises(RagctxError, match="factory"):
        VectorIndex(32, VectorConfig(factory=factory))


def test_merge_topk_and_padding():
    D1, I1 = np.array([[0.9, 0.5]], np.float32), np.array([[1, 2]])
    D2, I2 = np.array([[0.7, -np.inf]], np.float32), np.array([[3, -1]])
    D, I = merge_topk([(D1, I1), (D2, I2)], 4)
    assert I.tolist() == [[1, 3, 2, -1]] and np.isinf(D[0, 3])


def test_reciprocal_rank_fusion():
    fused = reciprocal_rank_fusion([[1, 2, 3], [3, 1, 4]], k=3, rrf_k=60)
    assert [i for i, _ in fused] == [1, 3, 2]
    assert fused[0][1] == pytest.approx(1 / 61 + 1 / 62)
    assert reciprocal_rank_fusion([], k=3) == []


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_torch_topk_is_exact_and_respects_the_mask(dtype):
    import torch

    from ragctx.vectors import torch_topk

    g = torch.Generator().manual_seed(0)
    # near-duplicate rows: fp16 scores alone would misorder them
    base = torch.nn.functional.normalize(torch.randn(50, 64, generator=g), dim=1)
    mat32 = torch.nn.functional.normalize(base.repeat(40, 1) + 0.01 * torch.randn(2000, 64, generator=g), dim=1)
    mat = mat32.to(getattr(torch, dtype))
    q = torch.nn.functional.normalize(base[:9] + 0.05 * torch.randn(9, 64, generator=g), dim=1)
    mask = torch.rand(2000, generator=g) > 0.3
    for m in (None, mask):
        top, pos = torch_topk(q, mat, 10, m)
        ref = q @ mat.float().T  # fp32 scores of the stored vectors: the answer key
        if m is not None:
            ref = ref.masked_fill(~m, float("-inf"))
        ref_top, ref_pos = torch.topk(ref, 10, dim=1)
        torch.testing.assert_close(top, ref_top, rtol=0, atol=1e-5)
        assert torch.equal(pos, ref_pos)
        if m is not None:
            assert m[pos].all()


@pytest.mark.skipif(not __import__("torch").cuda.is_available(), reason="needs a CUDA GPU")
def test_gpu_exact_search_equals_faiss_flat_single_batched_filtered_and_after_updates(data):
    """The torch path on the GPU (pinned buffers; one query replays a CUDA graph per k) against FAISS Flat on the
    CPU: the same ids, scores within the fp16 storage's rounding, for one query and batches, with and without a
    filter, and again after vectors were added and removed (a graph must not read the old vectors)."""
    ids, x, q = data
    cpu, gpu = VectorIndex(32, VectorConfig("Flat")), VectorIndex(32, VectorConfig("Flat"))
    for v in (cpu, gpu):
        v.add(ids[:5000], x[:5000])
    gpu.to_device("cuda")
    assert gpu.backend == "torch-exact"

    def same(queries, k, allowed=None):
        """Every GPU hit is a true top-k hit up to the fp16 storage's rounding (~5e-4 per score; near-ties may
        swap places), its score is its fp32 score within that rounding, and the hits are as many as FAISS's."""
        D0, I0 = cpu.search(queries, k, allowed)
        D1, I1 = gpu.search(queries, k, allowed)
        assert I1.shape == I0.shape and ((I1 >= 0) == (I0 >= 0)).all()
        stored_ids, stored = cpu._reconstruct_all()
        row = {int(i): r for r, i in enumerate(stored_ids)}
        for qv, d0, d1, i1 in zip(queries, D0, D1, I1):
            true = stored[[row[int(i)] for i in i1]] @ qv
            np.testing.assert_allclose(d1, true, atol=1e-3)
            assert (true >= d0[-1] - 1e-3).all()  # no hit worse than FAISS's k-th, beyond rounding
        if allowed is not None:
            assert np.isin(I1, allowed).all()
        return I1

    for k in (1, 5, 10):
        for i in range(4):  # a single query, replayed from the graph for the same k
            same(q[i : i + 1], k)
        same(q, k)
    assert set(gpu._graphs[1]) == {1, 5, 10}
    same(q[:1], 10, ids[::3])
    for v in (cpu, gpu):
        v.add(ids[5000:], x[5000:])
        v.remove(ids[:2500])
    gpu.to_device("cuda")
    I = same(q[:1], 10)
    assert (I >= ids[2500]).all()
