"""Lexical retrieval: BM25 through bm25s, and ``bm25``, the retriever over it.

The BM25 index is rebuilt from the chunk store when first needed (it takes well under a second per 10K chunks)
rather than saved, so an index folder holds nothing that could fall out of step with the store; the
:class:`~ragctx.Index` keeps it (``Index.lexical``) and drops it when its chunks change.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from .base import Ranked, SearchIndex

__all__ = ["BM25Index", "BM25Retriever"]


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


class BM25Retriever:
    """``bm25``: the chunks by BM25 score against the query's words (English stop words left out); chunks that share
    no word with the query are not returned, so there may be fewer than ``k``."""

    def __init__(self, index: SearchIndex) -> None:
        self.index = index

    def retrieve(self, query: str, k: int, allowed: np.ndarray | None = None) -> Ranked:
        """Up to ``k`` (chunk id, BM25 score) pairs, best first, ids among ``allowed`` when given."""
        scores, ids = self.index.lexical.search(query, k, allowed)
        return list(zip(ids.tolist(), scores.tolist()))
