"""Lexical retrieval (BM25 through bm25s) and reciprocal rank fusion for hybrid search.

The BM25 index is rebuilt from the chunk store when first needed (it takes well under a second per 10K chunks)
rather than saved, so an index folder holds nothing that could fall out of step with the store.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["BM25Index", "reciprocal_rank_fusion", "RRF_K"]

RRF_K = 60  # the constant of Cormack et al. (2009): damps the weight of the very first ranks


class BM25Index:
    """BM25 over chunk texts, returning chunk ids."""

    def __init__(self, ids: np.ndarray, texts: list[str]) -> None:
        import bm25s

        self._bm25s = bm25s
        self.ids = np.asarray(ids, dtype=np.int64)
        self._retriever = bm25s.BM25()
        if len(texts):
            tokens = bm25s.tokenize(texts, stopwords="en", show_progress=False)
            self._retriever.index(tokens, show_progress=False)

    def search(self, query: str, k: int, allowed: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(scores, chunk ids) of the top ``k`` chunks with a positive BM25 score, best first."""
        if len(self.ids) == 0:
            return np.zeros(0, np.float32), np.zeros(0, np.int64)
        tokens = self._bm25s.tokenize([query], stopwords="en", return_ids=False, show_progress=False)
        if not tokens[0]:
            return np.zeros(0, np.float32), np.zeros(0, np.int64)
        mask = None
        if allowed is not None:
            mask = np.isin(self.ids, allowed).astype(np.float32)
        kk = min(k, len(self.ids))
        pos, scores = self._retriever.retrieve(tokens, k=kk, show_progress=False, weight_mask=mask)
        pos, scores = pos[0], scores[0].astype(np.float32)
        keep = scores > 0
        return scores[keep], self.ids[pos[keep]]


def reciprocal_rank_fusion(rankings: Sequence[Sequence[int]], k: int, rrf_k: int = RRF_K) -> list[tuple[int, float]]:
    """Fuses ranked id lists: score(id) = sum over lists of 1 / (rrf_k + rank), rank from 1. Top ``k``, best first;
    ties keep the order in which ids first appear."""
    scores: dict[int, float] = {}
    for ranking in rankings:
        for rank, chunk_id in enumerate(ranking, 1):
            scores[int(chunk_id)] = scores.get(int(chunk_id), 0.0) + 1.0 / (rrf_k + rank)
    return sorted(scores.items(), key=lambda item: -item[1])[:k]
