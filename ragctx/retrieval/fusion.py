"""``hybrid``: reciprocal rank fusion of several retrievers, the fusion policy in one place.

Each retriever ranks the top ``k * depth`` chunks (all of them in a smaller index); a chunk's fused score is the sum
over rankings of ``1 / (rrf_k + rank)`` (Cormack et al. 2009), so a chunk that both rank high wins, and scores on
different scales (cosine, BM25) never meet. The default pair is ``dense`` then ``bm25``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from ..errors import RagctxError
from .base import Retriever, whole_number
from .dense import DenseRetriever
from .lexical import BM25Retriever

if TYPE_CHECKING:
    from .base import Ranked, SearchIndex

__all__ = ["HybridRetriever", "reciprocal_rank_fusion", "HYBRID_DEPTH", "RRF_K"]

HYBRID_DEPTH = 4  # hybrid search fuses the top k * HYBRID_DEPTH of each retriever
RRF_K = 60  # the constant of Cormack et al. (2009): damps the weight of the very first ranks


def reciprocal_rank_fusion(rankings: Sequence[Sequence[int]], k: int, rrf_k: int = RRF_K) -> list[tuple[int, float]]:
    """Fuses ranked id lists: score(id) = sum over lists of 1 / (rrf_k + rank), rank from 1. Top ``k``, best first;
    ties keep the order in which ids first appear."""
    scores: dict[int, float] = {}
    for ranking in rankings:
        for rank, chunk_id in enumerate(ranking, 1):
            scores[int(chunk_id)] = scores.get(int(chunk_id), 0.0) + 1.0 / (rrf_k + rank)
    return sorted(scores.items(), key=lambda item: -item[1])[:k]


class HybridRetriever:
    """``hybrid``: the rankings of ``retrievers`` (default: dense, then BM25) fused by reciprocal rank fusion.

    Args:
        index: what the default retrievers search (an :class:`~ragctx.Index`).
        retrievers: whose rankings are fused, in this order (the order breaks ties); None: dense, then BM25.
        depth: each retriever ranks the top ``k * depth`` chunks.
        rrf_k: the fusion constant (larger: the first ranks weigh less against later ones).
    """

    def __init__(self, index: SearchIndex, retrievers: Sequence[Retriever] | None = None, *,
                 depth: int = HYBRID_DEPTH, rrf_k: int = RRF_K) -> None:
        if isinstance(rrf_k, bool) or not isinstance(rrf_k, (int, float, np.number)) or rrf_k < 0:
            raise RagctxError(f"rrf_k={rrf_k!r}: pass a number >= 0 (60 is the usual constant)")
        self.index = index
        self.retrievers = list(retrievers) if retrievers is not None else [DenseRetriever(index), BM25Retriever(index)]
        if not self.retrievers:
            raise RagctxError("retrievers=[]: pass the retrievers whose rankings to fuse, or None for dense and BM25")
        bad = [r for r in self.retrievers if not isinstance(r, Retriever)]  # the registry's check of a factory's
        if bad:
            raise RagctxError(f"retrievers: {bad[0]!r} has no retrieve(query, k, allowed); pass retrievers such as "
                              "index.retriever('dense')")
        self.depth = whole_number("depth", depth, 1)  # each retriever ranks k * depth chunks
        self.rrf_k = rrf_k

    def retrieve(self, query: str, k: int, allowed: np.ndarray | None = None) -> Ranked:
        """Up to ``k`` (chunk id, fused score) pairs, best first, ids among ``allowed`` when given."""
        rankings = [[chunk_id for chunk_id, _ in r.retrieve(query, k * self.depth, allowed)] for r in self.retrievers]
        return reciprocal_rank_fusion(rankings, k, self.rrf_k)
