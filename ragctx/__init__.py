"""ragctx: document question answering that measures when to retrieve and when to read everything."""

from __future__ import annotations

__version__ = "0.1.0"

from .chunking import Chunk, ChunkConfig, Chunker
from .documents import Document, LoadReport, load_documents, load_path
from .embeddings import DEFAULT_MODEL, Embedder
from .errors import DocumentError, IndexFormatError, RagctxError
from .index import AddReport, Hit, Index
from .vectors import VectorConfig

__all__ = [
    "__version__",
    "AddReport",
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
    "load_documents",
    "load_path",
]
