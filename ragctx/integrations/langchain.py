"""A LangChain retriever over a ragctx :class:`~ragctx.index.Index` (needs ``langchain-core``).

    from ragctx import Index
    from ragctx.integrations.langchain import RagctxRetriever

    retriever = RagctxRetriever(index=Index.load("indexes/docs"), k=5, mode="hybrid")
    docs = retriever.invoke("When did the volcano erupt?")   # LangChain Documents, best first

Each returned document is one chunk: ``page_content`` is its text (exactly ``document.text[start:end]``) and its
metadata holds the source document's metadata plus ``doc_id``, ``start``, ``end``, ``chunk_id`` and ``score``.
"""

from __future__ import annotations

from typing import Any

from ..errors import RagctxError
from . import chunk_records

try:
    from langchain_core.callbacks import CallbackManagerForRetrieverRun
    from langchain_core.documents import Document as LangChainDocument
    from langchain_core.retrievers import BaseRetriever
    from pydantic import ConfigDict
except ImportError:  # pragma: no cover - the message is the feature
    raise RagctxError("ragctx.integrations.langchain needs langchain-core: pip install langchain-core") from None

__all__ = ["RagctxRetriever"]


class RagctxRetriever(BaseRetriever):
    """Searches ``index`` (``k`` hits, ``mode`` dense / bm25 / hybrid, optional metadata ``filter``)."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    index: Any
    k: int = 5
    mode: str = "dense"
    filter: dict[str, Any] | None = None

    def _get_relevant_documents(self, query: str, *, run_manager: CallbackManagerForRetrieverRun
                                ) -> list[LangChainDocument]:
        return [LangChainDocument(page_content=text, id=chunk_id, metadata=meta)
                for chunk_id, text, meta, _ in chunk_records(self.index, query, k=self.k, mode=self.mode,
                                                             filter=self.filter)]
