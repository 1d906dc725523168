"""Adapters to other frameworks (optional: each imports its framework only when used).

- :mod:`ragctx.integrations.langchain`: ``RagctxRetriever``, a LangChain ``BaseRetriever`` over an :class:`Index`
  (``pip install langchain-core``, the ``langchain`` extra).
- :mod:`ragctx.integrations.llamaindex`: ``RagctxRetriever``, a LlamaIndex ``BaseRetriever`` over an :class:`Index`
  (``pip install llama-index-core``, the ``llamaindex`` extra).

LangChain and LlamaIndex documents are accepted by ``Index.build`` / ``add`` / ``sync`` directly
(:func:`ragctx.documents.as_documents`).
"""

from __future__ import annotations

from typing import Any

__all__ = ["POSITION_KEYS", "chunk_records"]

# metadata keys an adapter adds to each chunk: where it sits in its document and how it scored
POSITION_KEYS = ("doc_id", "start", "end", "chunk_id", "score")


def chunk_records(index: Any, query: str, *, k: int, mode: str, filter: dict[str, Any] | None
                  ) -> list[tuple[str, str, dict[str, Any], float]]:
    """``index.search(query, ...)`` as ``(chunk id "DOC_ID#CHUNK_ID", text, metadata, score)`` per hit, best first:
    the document's metadata plus :data:`POSITION_KEYS` (``text == document.text[start:end]``). What every adapter
    turns into its framework's objects."""
    hits = index.search(query, k=k, filter=filter, mode=mode)
    return [(f"{h.doc_id}#{h.chunk_id}", h.text,
             {**h.metadata, "doc_id": h.doc_id, "start": h.start, "end": h.end, "chunk_id": h.chunk_id,
              "score": h.score}, h.score)
            for h in hits]
