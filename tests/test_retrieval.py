"""Retrievers by name (ragctx.retrieval) on four of the packaged essays: each one against ``Index.search`` in its mode
and against the answer key it stands for; the re-scoring step; ``register_retriever``; unknown names."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from ragctx import ChunkConfig, Index, RagctxError, VectorConfig, load_path
from ragctx.cli import build_parser
from ragctx.data import essays_dir
from ragctx.retrieval import (
    BM25Retriever,
    DenseRetriever,
    HybridRetriever,
    Retriever,
    make_retriever,
    reciprocal_rank_fusion,
    register_retriever,
    registry,
    rescore_exact,
    retriever_names,
)
from ragctx.vectors import exact_topk

QUERIES = ["How do you get startup ideas?", "hiring good programmers", "Lisp macros", "the best way to get rich"]
BUILT_IN = ("dense", "bm25", "hybrid")


def essay_documents():
    """Four essays, the first marked part=first (a filter that keeps one essay's chunks)."""
    docs = load_path(essays_dir()).documents[:4]
    return [replace(d, metadata={**d.metadata, "part": "first" if i == 0 else "rest"}) for i, d in enumerate(docs)]


@pytest.fixture(scope="module")
def essays(embedder):
    return Index.build(essay_documents(), embedder=embedder, chunking=ChunkConfig(128, 16), device="cpu")


@pytest.fixture(scope="module")
def essays_sq8(embedder):
    """The same essays under a lossy code (8-bit scalar quantization): the index's scores are approximate."""
    return Index.build(essay_documents(), embedder=embedder, chunking=ChunkConfig(128, 16),
                       vectors=VectorConfig(factory="SQ8"), device="cpu")


@pytest.fixture()
def own_registry(monkeypatch):
    """Registrations made in a test end with it."""
    monkeypatch.setattr(registry, "_RETRIEVERS", dict(registry._RETRIEVERS))


def exact_scores(index: Index, query: str, ids: list[int]) -> np.ndarray:
    """Inner products of the query with the stored fp32 vectors of ``ids`` (the answer key)."""
    q = index.embedder.encode_query(query)
    stored = dict(zip(*index.store.vectors(index.dim)))
    return np.array([float(stored[i] @ q) for i in ids])


def test_built_in_names_are_the_search_modes():
    from ragctx.index import SEARCH_MODES

    assert retriever_names()[:3] == SEARCH_MODES == BUILT_IN
    for name in BUILT_IN:  # the CLI's choices
        assert build_parser().parse_args(["search", "idx", "q", "--mode", name]).mode == name
        assert build_parser().parse_args(["ask", "idx", "q", "--retrieval", name]).retrieval == name


@pytest.mark.parametrize("filtered", [False, True], ids=["all", "filtered"])
@pytest.mark.parametrize("name", BUILT_IN)
def test_each_retriever_is_index_search_in_its_mode(essays, name, filtered):
    filt = {"part": "first"} if filtered else None
    allowed = essays.store.filter_ids(filt) if filt else None
    retriever = essays.retriever(name)
    assert isinstance(retriever, Retriever)
    assert type(retriever) is {"dense": DenseRetriever, "bm25": BM25Retriever, "hybrid": HybridRetriever}[name]
    found = 0
    for query in QUERIES:
        for k in (1, 5, len(essays)):
            ranked = retriever.retrieve(query, k, allowed)
            hits = essays.search(query, k, filter=filt, mode=name)
            assert ranked == [(h.chunk_id, h.score) for h in hits], (name, query, k)
            assert len(ranked) <= k and (allowed is None or set(dict(ranked)) <= set(allowed.tolist()))
            found += len(ranked)
    assert found  # BM25 finds nothing for a query whose words a chunk lacks; not for all of them


def test_dense_is_exact_search_over_the_stored_vectors(essays):
    ids, vecs = essays.store.vectors(essays.dim)
    for query in QUERIES:
        ranked = essays.retriever("dense").retrieve(query, 10)
        D, _ = exact_topk(essays.embedder.encode_query(query)[None, :], ids, vecs, 10)
        np.testing.assert_allclose([s for _, s in ranked], D[0], rtol=0, atol=1e-5)  # the same top 10 (near-ties
        np.testing.assert_allclose([s for _, s in ranked], exact_scores(essays, query, [i for i, _ in ranked]),
                                   rtol=0, atol=1e-5)  # may swap: FAISS and numpy round differently)


def test_bm25_is_the_indexs_bm25(essays):
    for query in QUERIES:
        scores, ids = essays.lexical.search(query, 7)
        assert essays.retriever("bm25").retrieve(query, 7) == list(zip(ids.tolist(), scores.tolist()))
    assert essays.retriever("bm25").retrieve("the and of", 5) == []  # stop words only: nothing matches


def test_hybrid_fuses_dense_then_bm25_at_its_depth(essays):
    dense, bm25 = DenseRetriever(essays), BM25Retriever(essays)
    for query in QUERIES:
        for depth, k in ((4, 5), (1, 3), (2, len(essays))):
            n = min(len(essays), k * depth)
            want = reciprocal_rank_fusion([[i for i, _ in r.retrieve(query, n)] for r in (dense, bm25)], k)
            assert HybridRetriever(essays, depth=depth).retrieve(query, k) == want
        flipped = HybridRetriever(essays, [bm25, dense], rrf_k=10).retrieve(query, 5)
        assert flipped == reciprocal_rank_fusion([[i for i, _ in r.retrieve(query, 20)] for r in (bm25, dense)], 5, 10)
    with pytest.raises(RagctxError, match="depth=0"):
        HybridRetriever(essays, depth=0)
    with pytest.raises(RagctxError, match=r"retrievers=\[\]"):
        HybridRetriever(essays, [])


def test_the_rescoring_step_gives_exact_scores(essays_sq8):
    index, query = essays_sq8, QUERIES[0]
    # no filter: the vector index's own (8-bit, approximate) scores
    approx = index.retriever("dense").retrieve(query, 10)
    assert np.abs(np.array([s for _, s in approx]) - exact_scores(index, query, [i for i, _ in approx])).max() > 1e-5
    # a small filter: its chunks are re-scored by their stored vectors, the vector index is not asked
    allowed = index.store.filter_ids({"part": "first"})
    few = index.retriever("dense").retrieve(query, 5, allowed)
    np.testing.assert_allclose([s for _, s in few], exact_scores(index, query, [i for i, _ in few]), atol=1e-6)
    q = index.embedder.encode_query(query)[None, :]
    D, I = rescore_exact(q, allowed, index.store, 5)
    assert few == [(int(i), float(d)) for d, i in zip(D[0], I[0])]
    through_index = DenseRetriever(index, exact_filter_max=0).retrieve(query, 5, allowed)  # the same filter in FAISS
    assert {i for i, _ in through_index} <= set(allowed.tolist()) and through_index != few
    # rescore_depth: the index's top k * depth, ranked by the stored vectors
    rescored = DenseRetriever(index, rescore_depth=4).retrieve(query, 10)
    candidates = {i for i, _ in index.retriever("dense").retrieve(query, 40)}
    assert {i for i, _ in rescored} <= candidates
    scores = [s for _, s in rescored]
    np.testing.assert_allclose(scores, exact_scores(index, query, [i for i, _ in rescored]), atol=1e-6)
    assert scores == sorted(scores, reverse=True)
    with pytest.raises(RagctxError, match="rescore_depth=-1"):
        DenseRetriever(index, rescore_depth=-1)


class Phrase:
    """A user's retriever: the chunks holding the query verbatim (case-insensitive), by how often, then by id."""

    def __init__(self, index: Index) -> None:
        self.index = index

    def retrieve(self, query: str, k: int, allowed: np.ndarray | None = None) -> list[tuple[int, float]]:
        ids, texts = self.index.store.texts()
        keep = set(allowed.tolist()) if allowed is not None else None
        counts = [(int(i), float(t.lower().count(query.lower()))) for i, t in zip(ids, texts)
                  if keep is None or int(i) in keep]
        return sorted((c for c in counts if c[1] > 0), key=lambda c: -c[1])[:k]


def test_register_retriever(essays, own_registry):
    register_retriever("phrase", Phrase)
    register_retriever("dense-exact", lambda index: DenseRetriever(index, rescore_depth=4))
    assert retriever_names() == (*BUILT_IN, "phrase", "dense-exact")
    hits = essays.search("startup", k=3, mode="phrase")
    assert hits and all("startup" in h.text.lower() for h in hits)
    assert [(h.chunk_id, h.score) for h in hits] == Phrase(essays).retrieve("startup", 3)
    allowed = essays.store.filter_ids({"part": "first"})
    assert {h.chunk_id for h in essays.search("startup", k=50, filter={"part": "first"}, mode="phrase")} <= \
        set(allowed.tolist())
    exact = essays.search(QUERIES[1], k=5, mode="dense-exact")
    assert [h.chunk_id for h in exact] == [h.chunk_id for h in essays.search(QUERIES[1], k=5)]  # Flat: exact already
    cli = build_parser().parse_args(["search", "idx", "q", "--mode", "phrase"])
    assert cli.mode == "phrase"
    with pytest.raises(RagctxError, match="'phrase' is registered already"):
        register_retriever("phrase", Phrase)
    register_retriever("phrase", lambda index: BM25Retriever(index), replace=True)
    assert isinstance(essays.retriever("phrase"), BM25Retriever)


@pytest.mark.parametrize("name,factory,match", [
    ("two words", Phrase, "retriever name 'two words'"),
    ("", Phrase, "retriever name ''"),
    ("mine", "not a function", "factory must be a function"),
])
def test_register_retriever_refuses_bad_input(own_registry, name, factory, match):
    with pytest.raises(RagctxError, match=match):
        register_retriever(name, factory)
    assert retriever_names() == BUILT_IN


def test_a_factory_must_return_a_retriever(essays, own_registry):
    register_retriever("broken", lambda index: "not a retriever")
    with pytest.raises(RagctxError, match="retriever 'broken' returned a str, which has no retrieve"):
        essays.search("startup", k=3, mode="broken")


def test_an_unknown_name_lists_the_valid_ones(essays, own_registry):
    register_retriever("phrase", Phrase)
    for call in (lambda: make_retriever("semantic", essays), lambda: essays.retriever("semantic"),
                 lambda: essays.search("startup", k=3, mode="semantic")):
        with pytest.raises(RagctxError, match=r"search mode 'semantic' is unknown; use one of dense, bm25, hybrid, "
                                              r"phrase \(or add your own with ragctx.retrieval.register_retriever\)"):
            call()
