"""The shapes retrieval is written against: a retriever, and what the built-in ones read from an index.

A retriever answers ``retrieve(query, k, allowed)`` with up to ``k`` ``(chunk id, score)`` pairs, best first, every
id among ``allowed`` when it is given. Its caller (:meth:`ragctx.Index.search`) has already checked the input: the
query is non-empty, ``k > 0``, and ``allowed`` (the chunk ids a metadata filter keeps) is None or non-empty. ``k`` may
exceed the number of chunks (``hybrid`` asks its retrievers for ``k * depth``): then every chunk may come back.
Scores compare within one retriever only: cosine similarity for ``dense``, BM25 for ``bm25``, reciprocal rank fusion
for ``hybrid``.

The built-in retrievers hold the index they search, typed as :class:`SearchIndex` (the parts they read), so that
this package sits below :mod:`ragctx.index` and :class:`~ragctx.Index` satisfies the protocol as it is.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol, runtime_checkable

import numpy as np

from ..errors import RagctxError

if TYPE_CHECKING:
    from ..embeddings import Embedder
    from ..vectors import VectorIndex

__all__ = ["LexicalIndex", "Ranked", "Retriever", "RetrieverFactory", "SearchIndex", "StoredVectors"]

Ranked = list[tuple[int, float]]  # (chunk id, score) pairs, best first


def whole_number(name: str, value, minimum: int) -> int:
    """``value`` as an int when it is a whole number >= ``minimum`` (bools refused), else a RagctxError naming it."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise RagctxError(f"{name}={value!r}: pass a whole number >= {minimum}")
    return int(value)


@runtime_checkable
class Retriever(Protocol):
    """Anything that ranks an index's chunks for a query (see the module docstring for the contract)."""

    def retrieve(self, query: str, k: int, allowed: np.ndarray | None = None) -> Ranked:
        """Up to ``k`` (chunk id, score) pairs, best first, ids among ``allowed`` when given."""
        ...


class StoredVectors(Protocol):
    """Where the exact (fp32) embedding of every chunk is kept: :class:`~ragctx.store.ChunkStore`."""

    def vectors(self, dim: int, ids: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(ids, float32 vectors [N, dim]) of ``ids`` (all chunks when None) that exist, in id order."""
        ...


class LexicalIndex(Protocol):
    """A word-matching index over the chunk texts: :class:`~ragctx.retrieval.lexical.BM25Index`."""

    def search(self, query: str, k: int, allowed: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(scores, chunk ids) of the top ``k`` matching chunks, best first."""
        ...


class SearchIndex(Protocol):
    """What the built-in retrievers read from an index: :class:`~ragctx.Index` is one."""

    @property
    def embedder(self) -> Embedder:
        """Turns a query into a unit vector (``encode_query``)."""
        ...

    @property
    def vectors(self) -> VectorIndex:
        """The FAISS shards (or their torch copy on a GPU): the candidate search of ``dense``."""
        ...

    @property
    def store(self) -> StoredVectors:
        """The chunk store, holding every chunk's fp32 vector: the re-scoring step of ``dense``."""
        ...

    @property
    def lexical(self) -> LexicalIndex:
        """BM25 over the chunk texts, as they are now: ``bm25``."""
        ...


RetrieverFactory = Callable[[SearchIndex], Retriever]  # builds a retriever for one index (see register_retriever)
