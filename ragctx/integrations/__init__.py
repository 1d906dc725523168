"""Adapters to other frameworks (optional: each imports its framework only when used).

- :mod:`ragctx.integrations.langchain`: ``RagctxRetriever``, a LangChain ``BaseRetriever`` over an :class:`Index`
  (``pip install langchain-core``).

LangChain and LlamaIndex documents are accepted by ``Index.build`` / ``add`` / ``sync`` directly
(:func:`ragctx.documents.as_documents`).
"""
