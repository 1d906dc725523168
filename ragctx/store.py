"""The chunk store: SQLite, one file, no pickle.

Tables: ``documents`` (id, text hash, metadata as JSON) and ``chunks`` (id, document, ordinal, character span,
text, token count, content hash, and the chunk's embedding as a float32 blob). Chunk ids are never reused, so a
FAISS id always means one chunk. The stored embeddings are the source of truth from which any FAISS index, shard
layout or GPU copy can be rebuilt without re-embedding.

A store opened from disk is read-only; the first change works on an in-memory copy (SQLite's backup API), and
:meth:`ChunkStore.save` writes a complete new file. Nothing is written in place, which is what makes index
saves atomic.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .chunking import Chunk
from .documents import Document
from .errors import IndexFormatError, RagctxError

__all__ = ["ChunkStore", "StoredChunk"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS documents (
    doc_id   TEXT PRIMARY KEY,
    sha256   TEXT NOT NULL,
    metadata TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS chunks (
    id       INTEGER PRIMARY KEY AUTOINCREMENT,
    doc_id   TEXT NOT NULL REFERENCES documents(doc_id) ON DELETE CASCADE,
    ordinal  INTEGER NOT NULL,
    start    INTEGER NOT NULL,
    end      INTEGER NOT NULL,
    text     TEXT NOT NULL,
    n_tokens INTEGER NOT NULL,
    sha256   TEXT NOT NULL,
    vector   BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS chunks_by_doc ON chunks(doc_id, ordinal);
"""


@dataclass(frozen=True)
class StoredChunk:
    """A chunk as stored, with its document's metadata."""

    id: int
    doc_id: str
    ordinal: int
    start: int
    end: int
    text: str
    n_tokens: int
    metadata: dict[str, Any]


class ChunkStore:
    """SQLite store of documents, chunks and their embeddings."""

    def __init__(self, conn: sqlite3.Connection, *, writable: bool) -> None:
        self._conn = conn
        self._writable = writable
        conn.execute("PRAGMA foreign_keys = ON")

    @classmethod
    def create(cls) -> ChunkStore:
        """A new, empty store in memory (written to disk by :meth:`save`)."""
        conn = sqlite3.connect(":memory:", check_same_thread=False)
        conn.executescript(_SCHEMA)
        return cls(conn, writable=True)

    @classmethod
    def open(cls, path: str | Path) -> ChunkStore:
        """Opens a saved store read-only; it becomes an in-memory copy on the first change."""
        path = Path(path)
        if not path.is_file():
            raise IndexFormatError(f"{path}: chunk store is missing; rebuild the index with `ragctx index build`")
        try:
            conn = sqlite3.connect(f"file:{path}?mode=ro&immutable=1", uri=True, check_same_thread=False)
            tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        except sqlite3.DatabaseError as e:
            raise IndexFormatError(f"{path}: chunk store is damaged ({e}); rebuild the index") from e
        if not {"documents", "chunks"} <= tables:
            raise IndexFormatError(f"{path}: not a ragctx chunk store (tables missing); rebuild the index")
        return cls(conn, writable=False)

    def _ensure_writable(self) -> None:
        if not self._writable:
            mem = sqlite3.connect(":memory:", check_same_thread=False)
            self._conn.backup(mem)
            self._conn.close()
            self._conn = mem
            self._conn.execute("PRAGMA foreign_keys = ON")
            self._writable = True

    def save(self, path: str | Path) -> None:
        """Writes the whole store to a new file at ``path`` (which must not exist)."""
        dest = sqlite3.connect(str(path))
        try:
            self._conn.backup(dest)
        finally:
            dest.close()

    def close(self) -> None:
        self._conn.close()

    # -- reads -------------------------------------------------------------------------------------------
    def document_hash(self, doc_id: str) -> str | None:
        row = self._conn.execute("SELECT sha256 FROM documents WHERE doc_id = ?", (doc_id,)).fetchone()
        return row[0] if row else None

    def count_documents(self) -> int:
        return self._conn.execute("SELECT COUNT(*) FROM documents").fetchone()[0]

    def count_chunks(self) -> int:
        return self._conn.execute("SELECT COUNT(*) FROM chunks").fetchone()[0]

    def chunk_counts(self) -> dict[str, int]:
        """Chunks per document id."""
        return dict(self._conn.execute("SELECT doc_id, COUNT(*) FROM chunks GROUP BY doc_id"))

    def document_ids(self) -> list[str]:
        return [r[0] for r in self._conn.execute("SELECT doc_id FROM documents ORDER BY doc_id")]

    def chunk_ids(self, doc_ids: Sequence[str] | None = None) -> np.ndarray:
        if doc_ids is None:
            rows = self._conn.execute("SELECT id FROM chunks ORDER BY id")
        else:
            marks = ",".join("?" * len(doc_ids))
            rows = self._conn.execute(f"SELECT id FROM chunks WHERE doc_id IN ({marks}) ORDER BY id", list(doc_ids))
        return np.fromiter((r[0] for r in rows), dtype=np.int64)

    def get(self, ids: Sequence[int]) -> list[StoredChunk]:
        """Chunks by id, in the order of ``ids`` (unknown ids are left out)."""
        ids = [int(i) for i in ids]
        found: dict[int, StoredChunk] = {}
        for start in range(0, len(ids), 900):  # SQLite's bound-parameter limit
            part = ids[start : start + 900]
            rows = self._conn.execute(
                "SELECT c.id, c.doc_id, c.ordinal, c.start, c.end, c.text, c.n_tokens, d.metadata "
                f"FROM chunks c JOIN documents d USING (doc_id) WHERE c.id IN ({','.join('?' * len(part))})",
                part,
            )
            for r in rows:
                found[r[0]] = StoredChunk(*r[:7], metadata=json.loads(r[7]))
        return [found[i] for i in ids if i in found]

    def document_chunks(self, doc_ids: Sequence[str] | None = None) -> list[StoredChunk]:
        """Every chunk of the given documents (all when None), ordered by document id, then position."""
        sql = ("SELECT c.id, c.doc_id, c.ordinal, c.start, c.end, c.text, c.n_tokens, d.metadata "
               "FROM chunks c JOIN documents d USING (doc_id)")
        params: list[str] = []
        if doc_ids is not None:
            sql += f" WHERE c.doc_id IN ({','.join('?' * len(doc_ids))})"
            params = list(doc_ids)
        rows = self._conn.execute(sql + " ORDER BY c.doc_id, c.start", params)
        return [StoredChunk(*r[:7], metadata=json.loads(r[7])) for r in rows]

    def vectors(self, dim: int, ids: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(ids, float32 vectors [N, dim]) of all chunks, or of ``ids``, in id order."""
        if ids is None:
            rows = self._conn.execute("SELECT id, vector FROM chunks ORDER BY id").fetchall()
        else:
            rows = []
            wanted = [int(i) for i in np.sort(ids)]
            for s in range(0, len(wanted), 900):
                part = wanted[s : s + 900]
                rows += self._conn.execute(
                    f"SELECT id, vector FROM chunks WHERE id IN ({','.join('?' * len(part))}) ORDER BY id", part
                ).fetchall()
        out_ids = np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))
        vecs = np.frombuffer(b"".join(r[1] for r in rows), dtype=np.float32).reshape(len(rows), dim)
        return out_ids, vecs.copy()

    def texts(self) -> tuple[np.ndarray, list[str]]:
        """(ids, texts) of every chunk in id order (for BM25)."""
        rows = self._conn.execute("SELECT id, text FROM chunks ORDER BY id").fetchall()
        return np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows)), [r[1] for r in rows]

    def iter_documents(self) -> Iterator[tuple[str, str, dict[str, Any]]]:
        for doc_id, sha, meta in self._conn.execute("SELECT doc_id, sha256, metadata FROM documents ORDER BY doc_id"):
            yield doc_id, sha, json.loads(meta)

    def metadata_keys(self) -> set[str]:
        """Every metadata key some document has."""
        rows = self._conn.execute("SELECT DISTINCT j.key FROM documents d, json_each(d.metadata) j")
        return {r[0] for r in rows}

    def filter_ids(self, where: dict[str, Any]) -> np.ndarray:
        """Ids of chunks whose document matches every ``key: value`` of ``where``.

        ``doc_id`` matches document ids; any other key matches the document's metadata field of that name. A
        list value means "any of these".
        """
        clauses, params = [], []
        for key, value in where.items():
            values = list(value) if isinstance(value, (list, tuple, set)) else [value]
            if not values:
                return np.zeros(0, dtype=np.int64)
            for v in values:
                if not isinstance(v, (str, int, float, bool)):
                    raise RagctxError(f"filter {key!r}: values must be strings, numbers or booleans, got {v!r}")
            column = "d.doc_id" if key == "doc_id" else "json_extract(d.metadata, ?)"
            if key != "doc_id":
                params.append("$." + json.dumps(key))
            clauses.append(f"{column} IN ({','.join('?' * len(values))})")
            params += [int(v) if isinstance(v, bool) else v for v in values]
        sql = "SELECT c.id FROM chunks c JOIN documents d USING (doc_id)"
        if clauses:
            sql += " WHERE " + " AND ".join(clauses)
        return np.fromiter((r[0] for r in self._conn.execute(sql + " ORDER BY c.id", params)), dtype=np.int64)

    # -- writes ------------------------------------------------------------------------------------------
    def add_document(self, doc: Document, chunks: list[Chunk], vectors: np.ndarray) -> np.ndarray:
        """Stores a document and its chunks; returns the new chunk ids."""
        return self.add_record(doc.id, doc.sha256, doc.metadata, chunks, vectors)

    def add_record(self, doc_id: str, sha256: str, metadata: dict[str, Any], chunks: list[Chunk],
                   vectors: np.ndarray) -> np.ndarray:
        """Stores a document by its id, text hash and metadata (its text is not stored), and its chunks; returns the
        new chunk ids, consecutive in ``chunks``' order."""
        self._ensure_writable()
        if len(chunks) != len(vectors):
            raise ValueError("one vector per chunk")
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        with self._conn:
            self._conn.execute(
                "INSERT INTO documents (doc_id, sha256, metadata) VALUES (?, ?, ?)",
                (doc_id, sha256, json.dumps(metadata, default=str)),
            )
            ids = []
            for chunk, vec in zip(chunks, vectors):
                cur = self._conn.execute(
                    "INSERT INTO chunks (doc_id, ordinal, start, end, text, n_tokens, sha256, vector) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    (doc_id, chunk.ordinal, chunk.start, chunk.end, chunk.text, chunk.n_tokens,
                     hashlib.sha256(chunk.text.encode("utf-8", "surrogatepass")).hexdigest(), vec.tobytes()),
                )
                ids.append(cur.lastrowid)
        return np.asarray(ids, dtype=np.int64)

    def delete_documents(self, doc_ids: Sequence[str]) -> np.ndarray:
        """Removes documents and their chunks; returns the removed chunk ids."""
        self._ensure_writable()
        removed = self.chunk_ids(doc_ids)
        with self._conn:
            for s in range(0, len(doc_ids), 900):
                part = list(doc_ids[s : s + 900])
                self._conn.execute(f"DELETE FROM documents WHERE doc_id IN ({','.join('?' * len(part))})", part)
        return removed
