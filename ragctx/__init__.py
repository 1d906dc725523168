"""ragctx: document question answering that measures when to retrieve and when to read everything."""

from __future__ import annotations

from .chunking import Chunk, ChunkConfig, Chunker
from .documents import Document, LoadReport, as_documents, load_documents, load_path
from .embeddings import DEFAULT_MODEL, Embedder
from .errors import DocumentError, IndexFormatError, RagctxError
from .index import AddReport, Hit, Index
from .vectors import VectorConfig
from .version import __version__

# the generator and the QA pipeline load torch-heavy modules: imported on first use (`import ragctx` stays fast)
_LAZY = {"Generator": "ragctx.generator", "QA": "ragctx.qa", "Answer": "ragctx.qa", "Citation": "ragctx.qa",
         "PromptTemplate": "ragctx.qa"}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'ragctx' has no attribute {name!r}")


__all__ = [
    "__version__",
    "AddReport",
    "Answer",
    "Citation",
    "Generator",
    "PromptTemplate",
    "QA",
    "Chunk",
    "ChunkConfig",
    "Chunker",
    "DEFAULT_MODEL",
    "Document",
    "DocumentError",
    "Embedder",
    "Hit",
    "Index",
    "IndexFormatError",
    "LoadReport",
    "RagctxError",
    "VectorConfig",
    "as_documents",
    "load_documents",
    "load_path",
]
