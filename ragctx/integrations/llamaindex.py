"""A LlamaIndex retriever over a ragctx :class:`~ragctx.index.Index` (needs ``llama-index-core``).

    from ragctx import Index
    from ragctx.integrations.llamaindex import RagctxRetriever

    retriever = RagctxRetriever(Index.load("indexes/docs"), k=5, mode="hybrid")
    for n in retriever.retrieve("When did the volcano erupt?"):   # NodeWithScore, best first
        print(n.score, n.node.ref_doc_id, n.node.start_char_idx, n.node.end_char_idx, n.node.text)

    from llama_index.core.query_engine import RetrieverQueryEngine
    engine = RetrieverQueryEngine.from_args(retriever, llm=my_llm)   # any LlamaIndex LLM reads the chunks

Each node is one chunk: ``text`` is exactly ``document.text[start:end]``, ``start_char_idx`` / ``end_char_idx`` are
those offsets, its SOURCE relationship (``ref_doc_id``) is the ragctx document id, and its metadata holds the
document's metadata plus ``doc_id``, ``start``, ``end``, ``chunk_id`` and ``score`` (the last four are kept out of
what an LLM or an embedder is shown).
"""

from __future__ import annotations

from typing import Any

from ..errors import RagctxError
from . import POSITION_KEYS, chunk_records

try:
    from llama_index.core.callbacks import CallbackManager
    from llama_index.core.retrievers import BaseRetriever
    from llama_index.core.schema import NodeRelationship, NodeWithScore, QueryBundle, RelatedNodeInfo, TextNode
except ImportError:  # pragma: no cover - the message is the feature
    raise RagctxError("ragctx.integrations.llamaindex needs llama-index-core: pip install llama-index-core "
                      "(or the ragctx extra: pip install -e '.[llamaindex]')") from None

__all__ = ["RagctxRetriever"]

HIDDEN = [k for k in POSITION_KEYS if k != "doc_id"] + ["sha256"]  # metadata an LLM prompt does not need


class RagctxRetriever(BaseRetriever):
    """Searches ``index`` (``k`` hits, ``mode`` dense / bm25 / hybrid, optional metadata ``filter``) and returns
    LlamaIndex ``NodeWithScore`` objects, one per chunk."""

    def __init__(self, index: Any, k: int = 5, mode: str = "dense", filter: dict[str, Any] | None = None, *,
                 callback_manager: CallbackManager | None = None, verbose: bool = False) -> None:
        super().__init__(callback_manager=callback_manager, verbose=verbose)
        self.index, self.k, self.mode, self.filter = index, k, mode, filter

    def _retrieve(self, query_bundle: QueryBundle) -> list[NodeWithScore]:
        return [NodeWithScore(node=TextNode(id_=chunk_id, text=text, metadata=meta, start_char_idx=meta["start"],
                                            end_char_idx=meta["end"], excluded_llm_metadata_keys=HIDDEN,
                                            excluded_embed_metadata_keys=HIDDEN,
                                            relationships={NodeRelationship.SOURCE:
                                                           RelatedNodeInfo(node_id=meta["doc_id"])}),
                              score=score)
                for chunk_id, text, meta, score in chunk_records(self.index, query_bundle.query_str, k=self.k,
                                                                 mode=self.mode, filter=self.filter)]
