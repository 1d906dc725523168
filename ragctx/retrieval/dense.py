"""``dense``: embedding search in two named steps, candidates from the vector index and then exact re-scoring.

1. Candidates: the vector index (:class:`~ragctx.vectors.VectorIndex`: FAISS shards on the CPU or a GPU, or the torch
   search of a ``Flat`` index on a GPU) returns its top ids for the query vector, with its own scores.
2. Re-scoring (:func:`rescore_exact`): candidates ranked by the exact fp32 inner product of their stored vectors (the
   chunk store keeps every chunk's embedding as the embedder gave it) with the query.

Which steps run (:meth:`DenseRetriever.search_vectors`):

- a filter that keeps at most ``exact_filter_max`` chunks: those chunks are the candidates, step 1 is skipped and
  step 2 ranks them, whatever the index type (graph indexes such as HNSW lose recall under a selective filter, and a
  few thousand inner products cost less than a search);
- otherwise, by default, step 1 alone: its top ``k`` with the vector index's scores (fp32 inner products for
  ``Flat`` and ``IVF...,Flat``; on a GPU the fp16 copy's best candidates re-scored in fp32 inside the search, see
  :func:`~ragctx.vectors.torch_topk`; approximate for lossy codes such as ``SQ8`` or ``PQ``);
- with ``rescore_depth=d``: step 1's top ``k * d``, then step 2 over them: exact scores, and a better order, for
  lossy codes and the GPU's fp16 copy, at the cost of reading ``k * d`` vectors from the store per query.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from ..errors import RagctxError
from ..vectors import exact_topk
from .base import whole_number

if TYPE_CHECKING:
    from .base import Ranked, SearchIndex, StoredVectors

__all__ = ["DenseRetriever", "rescore_exact", "EXACT_FILTER_MAX"]

EXACT_FILTER_MAX = 4096  # a filter that keeps at most this many chunks is answered by re-scoring them all


def rescore_exact(queries: np.ndarray, candidates: np.ndarray, store: StoredVectors,
                  k: int) -> tuple[np.ndarray, np.ndarray]:
    """The re-scoring step: the top ``k`` of ``candidates`` (chunk ids) by the exact fp32 inner product of their
    stored vectors with each query (``queries`` [Q, dim], the index's dimension). (scores [Q, k], chunk ids [Q, k]),
    best first, padded with (-inf, -1) when fewer candidates exist; ids the store lacks are left out."""
    return exact_topk(queries, *store.vectors(queries.shape[1], candidates), k)


class DenseRetriever:
    """``dense``: the chunks whose embeddings are nearest the query's (cosine similarity), in the steps the module
    docstring describes.

    Args:
        index: what it searches (an :class:`~ragctx.Index`).
        rescore_depth: 0 (default) keeps the vector index's scores; ``d`` > 0 fetches ``k * d`` candidates and ranks
            them by their exact stored vectors.
        exact_filter_max: a filter keeping at most this many chunks skips the vector index and re-scores them all.
    """

    def __init__(self, index: SearchIndex, *, rescore_depth: int = 0, exact_filter_max: int = EXACT_FILTER_MAX) -> None:
        self.index = index
        self.rescore_depth = whole_number("rescore_depth", rescore_depth, 0)
        self.exact_filter_max = whole_number("exact_filter_max", exact_filter_max, 0)

    def retrieve(self, query: str, k: int, allowed: np.ndarray | None = None) -> Ranked:
        """Up to ``k`` (chunk id, cosine similarity) pairs, best first, ids among ``allowed`` when given."""
        query_vector = self.index.embedder.encode_query(query)[None, :]
        D, I = self.search_vectors(query_vector, k, allowed)
        return [(int(i), float(d)) for d, i in zip(D[0], I[0]) if i >= 0]

    def search_vectors(self, queries: np.ndarray, k: int,
                       allowed: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` (scores [Q, k], chunk ids [Q, k]) for query vectors ([Q, dim], unit norm), best first, padded with
        (-inf, -1): the candidate search, then the re-scoring step where it applies."""
        vectors = self.index.vectors
        queries = np.ascontiguousarray(np.atleast_2d(queries), dtype=np.float32)
        if queries.shape[1] != vectors.dim:
            raise RagctxError(f"query vectors have dimension {queries.shape[1]}; this index holds {vectors.dim}")
        if allowed is not None and len(allowed) <= self.exact_filter_max:
            return rescore_exact(queries, allowed, self.index.store, k)
        if not self.rescore_depth:
            return vectors.search(queries, k, allowed)
        _, I = vectors.search(queries, k * self.rescore_depth, allowed)
        rows = [rescore_exact(q[None, :], ids[ids >= 0], self.index.store, k) for q, ids in zip(queries, I)]
        return np.vstack([d for d, _ in rows]), np.vstack([i for _, i in rows])
