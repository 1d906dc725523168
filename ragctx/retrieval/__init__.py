"""Retrieval: components that rank an index's chunks for a query, chosen by name.

An :class:`~ragctx.Index` holds the data (chunk store, vector shards, BM25 over the texts), keeps it on disk and up
to date, applies filters and turns ranked chunk ids into hits; a retriever holds the policy of one search mode::

    base.py       Retriever (the protocol: retrieve(query, k, allowed) -> [(chunk id, score)], best first), and
                  SearchIndex, what the built-in retrievers read from an index
    dense.py      DenseRetriever ("dense"): candidates from the vector index, then the re-scoring step
                  (rescore_exact: exact fp32 inner products of the stored vectors) where it applies
    lexical.py    BM25Index (bm25s) and BM25Retriever ("bm25")
    fusion.py     HybridRetriever ("hybrid"): reciprocal rank fusion of several retrievers, depth configurable
    registry.py   retrievers by name: make_retriever, retriever_names, register_retriever for your own

``index.search(query, k, mode="hybrid")`` is ``index.retriever("hybrid").retrieve(query, k, allowed)`` with the checks,
the filter and the hits around it. Tested in ``tests/test_retrieval.py`` (each retriever against ``Index.search`` and
against the answer key it stands for) and ``tests/test_index.py``.
"""

from __future__ import annotations

from .base import LexicalIndex, Ranked, Retriever, RetrieverFactory, SearchIndex, StoredVectors
from .dense import EXACT_FILTER_MAX, DenseRetriever, rescore_exact
from .fusion import HYBRID_DEPTH, RRF_K, HybridRetriever, reciprocal_rank_fusion
from .lexical import BM25Index, BM25Retriever
from .registry import make_retriever, register_retriever, retriever_names

__all__ = ["BM25Index", "BM25Retriever", "DenseRetriever", "EXACT_FILTER_MAX", "HYBRID_DEPTH", "HybridRetriever",
           "LexicalIndex", "RRF_K", "Ranked", "Retriever", "RetrieverFactory", "SearchIndex", "StoredVectors",
           "make_retriever", "reciprocal_rank_fusion", "register_retriever", "rescore_exact", "retriever_names"]
