"""Retrievers by name: the one place that names a search mode.

``Index.search(mode=...)``, ``Index.retriever``, the CLI's ``--mode`` / ``--retrieval`` choices, ``SEARCH_MODES`` and
QA's ``retrieval`` all read this registry. A name maps to a factory: a function of the index that returns a
:class:`~ragctx.retrieval.base.Retriever`. The factory is called for every search, so a retriever sees the index as
it is now (after ``add`` or ``delete``); keep what is costly to build (a model) outside it.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from ..errors import RagctxError
from .base import Retriever
from .dense import DenseRetriever
from .fusion import HybridRetriever
from .lexical import BM25Retriever

if TYPE_CHECKING:
    from .base import RetrieverFactory, SearchIndex

__all__ = ["make_retriever", "register_retriever", "retriever_names"]

_RETRIEVERS: dict[str, RetrieverFactory] = {
    "dense": DenseRetriever,  # embeddings: cosine similarity (the default)
    "bm25": BM25Retriever,  # words: BM25
    "hybrid": HybridRetriever,  # both, by reciprocal rank fusion
}
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")  # usable as a CLI choice and a JSON value


def retriever_names() -> tuple[str, ...]:
    """The registered retrievers' names, the built-in ones (dense, bm25, hybrid) first, then in registration order."""
    return tuple(_RETRIEVERS)


def make_retriever(name: str, index: SearchIndex) -> Retriever:
    """The retriever registered as ``name``, built for ``index``; a RagctxError listing the names when it is
    unknown."""
    factory = _RETRIEVERS.get(name) if isinstance(name, str) else None
    if factory is None:
        raise RagctxError(f"search mode '{name}' is unknown; use one of {', '.join(_RETRIEVERS)} "
                          "(or add your own with ragctx.retrieval.register_retriever)")
    retriever = factory(index)
    if not isinstance(retriever, Retriever):
        raise RagctxError(f"the factory registered as retriever '{name}' returned a {type(retriever).__name__}, which "
                          "has no retrieve(query, k, allowed) method; return an object that has one")
    return retriever


def register_retriever(name: str, factory: RetrieverFactory, *, replace: bool = False) -> None:
    """Makes ``factory`` (a function of the index returning an object with ``retrieve(query, k, allowed)``, see
    :class:`~ragctx.retrieval.base.Retriever`) the retriever ``name``, for ``Index.search(mode=name)``,
    ``Index.retriever(name)`` and QA's ``retrieval=name``. ``replace``: allow a name that is taken (a built-in one
    too). The CLI's choices are read when its parser is built; the HTTP server takes the names registered when
    ``ragctx.server`` is first imported.

    ``Index.search`` checks the query and ``k``, applies the filter (``allowed``: the chunk ids it keeps, or None) and
    turns the returned (chunk id, score) pairs into hits::

        from ragctx.retrieval import DenseRetriever, register_retriever

        # dense search re-scoring 4k candidates by their exact stored vectors (for an "IVF4096,PQ32" index, say)
        register_retriever("dense-exact", lambda index: DenseRetriever(index, rescore_depth=4))
        index.search("When did the volcano erupt?", k=5, mode="dense-exact")
    """
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise RagctxError(f"retriever name {name!r}: use letters, digits, '_', '-' or '.', starting with a letter or "
                          "digit")
    if not callable(factory):
        raise RagctxError(f"retriever '{name}': factory must be a function of the index returning a retriever, not "
                          f"a {type(factory).__name__}")
    if name in _RETRIEVERS and not replace:
        raise RagctxError(f"retriever '{name}' is registered already; pick another name or pass replace=True")
    _RETRIEVERS[name] = factory
