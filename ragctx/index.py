"""The index: chunks in SQLite, their embeddings in FAISS shards, described by a manifest.

A saved index is a folder::

    manifest.json      format version, embedder (name, dimension), FAISS factory and shards, chunking,
                       tokenizer, counts, sha256 of every file
    chunks.sqlite      documents, chunks (text, offsets, metadata, hash) and their embeddings
    shard-000.faiss    one FAISS file per shard

Saving writes a complete new folder beside the target and renames it into place, so a failed or interrupted
save leaves the previous index as it was. Loading checks the manifest (format version, embedder, dimension,
checksums) and fails with a message that says what to do.
"""

from __future__ import annotations

import datetime as _dt
import glob
import hashlib
import json
import os
import shutil
import sqlite3
import sys
import tempfile
import uuid
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .chunking import Chunk, ChunkConfig, Chunker
from .documents import Document, as_documents
from .embeddings import DEFAULT_MODEL, Embedder, default_device, model_name, shared_embedder
from .errors import IndexFormatError, RagctxError
from .locks import read_lock, swap_lock, umask, writer_lock
from .retrieval import BM25Index, Retriever, make_retriever, retriever_names
from .store import ChunkStore, StoredChunk
from .vectors import VectorConfig, VectorIndex, parse_devices

if TYPE_CHECKING:
    from .distributed import RayConfig

__all__ = ["Index", "Hit", "AddReport", "SEARCH_MODES", "FORMAT_VERSION"]

FORMAT_NAME = "ragctx-index"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
STORE_FILE = "chunks.sqlite"
SEARCH_MODES = retriever_names()  # the built-in retrievers: dense, bm25, hybrid (ragctx.retrieval's registry)
ENGINES = ("local", "ray")  # Index.build: in this process, or a Ray Data pipeline (ragctx.distributed)


@dataclass(frozen=True)
class Hit:
    """One search result: ``text == document.text[start:end]``."""

    score: float
    chunk_id: int
    doc_id: str
    ordinal: int
    start: int
    end: int
    text: str
    metadata: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class AddReport:
    """What :meth:`Index.add` did."""

    added: list[str] = field(default_factory=list)  # new document ids
    updated: list[str] = field(default_factory=list)  # changed documents, re-indexed
    unchanged: list[str] = field(default_factory=list)  # same text hash: skipped
    chunks: int = 0  # chunks embedded and stored
    deleted: list[str] = field(default_factory=list)  # sync: documents no longer in the source, removed

    def summary(self) -> str:
        return (f"{len(self.added)} added, {len(self.updated)} updated, {len(self.unchanged)} unchanged, "
                + (f"{len(self.deleted)} deleted, " if self.deleted else "") + f"{self.chunks} chunks embedded")


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _stage(message: str) -> None:
    """One line on stderr naming a stage that has no bar (printed beside any bar tqdm is drawing)."""
    from tqdm.auto import tqdm

    tqdm.write(message, file=sys.stderr)


class Index:
    """Documents → chunks → embeddings → FAISS, with a SQLite chunk store.

    Args:
        embedder: an :class:`~ragctx.embeddings.Embedder`, or None to create the default one when first needed.
        model: embedder model name when ``embedder`` is None.
        chunking: how documents are cut (:class:`~ragctx.chunking.ChunkConfig`).
        vectors: FAISS factory, shards, search knobs (:class:`~ragctx.vectors.VectorConfig`).
        device: "cuda", "cpu" or None for the GPU when there is one (embedding and search).
        devices: where the shards are searched, shard i on ``devices[i % len(devices)]`` (["cuda:0", "cuda:1"],
            "cpu", ...; see :meth:`VectorIndex.to_devices <ragctx.vectors.VectorIndex.to_devices>`); None: ``device``.
    """

    def __init__(
        self,
        embedder: Embedder | None = None,
        *,
        model: str = DEFAULT_MODEL,
        chunking: ChunkConfig | None = None,
        vectors: VectorConfig | None = None,
        device: str | None = None,
        devices: str | list[str] | None = None,
        _store: ChunkStore | None = None,
        _vectors: VectorIndex | None = None,
        _dim: int | None = None,
    ) -> None:
        self.device = device or default_device()
        self._embedder = embedder
        self.model = embedder.name if embedder is not None else model_name(model)
        self.chunking = chunking or ChunkConfig()
        self._chunker: Chunker | None = None
        self.vector_config = vectors or VectorConfig()
        self.store = _store or ChunkStore.create()
        self.dim = _dim or (embedder.dim if embedder is not None else None)
        self.devices = parse_devices(devices) if devices is not None else None
        self._vectors = _vectors
        if self._vectors is not None:
            self._place(self._vectors)
        self._bm25: BM25Index | None = None

    # -- construction ------------------------------------------------------------------------------------
    @classmethod
    def build(cls, documents: Iterable[Document] | str | os.PathLike[str], *, progress: bool | None = None,
              engine: str = "local", ray_address: str | None = None, ray: RayConfig | None = None,
              **kwargs: Any) -> Index:
        """A new index over ``documents`` (keyword arguments as for :class:`Index`).

        ``engine``: "local" (this process) or "ray": a Ray Data pipeline loads and chunks in CPU tasks and embeds in
        actors that each load the embedder once (one GPU each on a GPU cluster), then this process writes the same
        chunk store and shards as a local build, with the same ids (:mod:`ragctx.distributed`). With "ray",
        ``documents`` may also be a file or folder path, whose files are then read by Ray tasks;
        ``ray_address``: a running cluster ("auto", "ray://host:10001"), None for a local one on this machine;
        ``ray``: its tuning (:class:`~ragctx.distributed.RayConfig`). Needs ``pip install "ragctx[ray]"``."""
        if engine not in ENGINES:
            raise RagctxError(f"engine '{engine}' is unknown; use one of {', '.join(ENGINES)}")
        index = cls(**kwargs)
        if engine == "ray":
            from .distributed import ray_build

            ray_build(index, documents, address=ray_address, config=ray, progress=progress)
        else:
            index.add(documents, progress=progress)
        return index

    @property
    def chunker(self) -> Chunker:
        """The splitter, made when documents are first added (searching a saved index needs none)."""
        if self._chunker is None:
            self._chunker = Chunker(self.chunking)
        return self._chunker

    @property
    def embedder(self) -> Embedder:
        if self._embedder is None:
            self._embedder = shared_embedder(self.model, self.device)
            if self.dim is not None and self._embedder.dim != self.dim:
                raise IndexFormatError(
                    f"embedder '{self.model}' gives dimension {self._embedder.dim}, the index holds {self.dim}"
                )
        return self._embedder

    @property
    def vectors(self) -> VectorIndex:
        if self._vectors is None:
            self.dim = self.dim or self.embedder.dim
            self._vectors = VectorIndex(self.dim, self.vector_config)
            if self.devices is not None:
                self._place(self._vectors)
        return self._vectors

    def _place(self, vectors: VectorIndex) -> None:
        if self.devices is not None:
            vectors.to_devices(self.devices)
        else:
            vectors.to_device(self.device)

    def __len__(self) -> int:
        return self.store.count_chunks()

    # -- changes -----------------------------------------------------------------------------------------
    def add(self, documents: Iterable[Document], *, progress: bool | None = None) -> AddReport:
        """Adds new documents, re-indexes changed ones (by text hash) and skips unchanged ones. ``progress``: bars
        on stderr for each stage (chunking, embedding); None shows them for large inputs only, False never."""
        report = AddReport()
        new: list[Document] = []
        replaced: list[str] = []
        seen: set[str] = set()
        documents = _as_documents(documents)
        for doc in documents:
            if doc.id in seen:
                raise RagctxError(f"document id '{doc.id}' appears twice in one add; ids must be unique")
            seen.add(doc.id)
            old = self.store.document_hash(doc.id)
            if old == doc.sha256:
                report.unchanged.append(doc.id)
                continue
            (report.updated if old is not None else report.added).append(doc.id)
            if old is not None:
                replaced.append(doc.id)
            new.append(doc)
        todo = self._chunk(new, progress)
        texts = [c.text for _, chunks in todo for c in chunks]
        show = progress if progress is not None else len(texts) >= 256
        if texts and show and self._embedder is None:
            _stage(f"loading the embedder {self.model}")
        if texts:  # an IVF index that these chunks cannot train is refused before the embedding, not after it
            self.vectors.check_trainable(len(texts))
        if replaced:
            self._remove_documents(replaced)
        if not texts:
            return report
        vecs = self.embedder.encode(texts, progress=show, desc=f"embedding {len(texts):,} chunks")
        self._insert([(doc.id, doc.sha256, doc.metadata, chunks) for doc, chunks in todo], vecs)
        report.chunks = len(texts)
        return report

    def _insert(self, records: list[tuple[str, str, dict[str, Any], list[Chunk]]], vecs: np.ndarray,
                map_shards=None) -> None:
        """Stores new documents ((id, text hash, metadata, chunks), in order: their chunks get consecutive ids) with
        their chunks' vectors (rows in the same order) and adds those to FAISS. ``map_shards``: see
        :meth:`VectorIndex.add`. The local and the Ray build both end here."""
        ids, row = [], 0
        for doc_id, sha, meta, chunks in records:
            ids.append(self.store.add_record(doc_id, sha, meta, chunks, vecs[row : row + len(chunks)]))
            row += len(chunks)
        try:
            self.vectors.add(np.concatenate(ids), vecs, map_shards=map_shards)
        except RagctxError:
            self.store.delete_documents([r[0] for r in records])  # keep store and vectors in step
            raise
        self._bm25 = None

    def _chunk(self, docs: list[Document], progress: bool | None) -> list[tuple[Document, list[Chunk]]]:
        """Each document with its chunks, under a bar in characters (shown from 1M characters when ``progress`` is
        None) that moves within a large document too."""
        from tqdm.auto import tqdm

        chars = sum(len(d.text) for d in docs)
        show = progress if progress is not None else chars >= 1_000_000
        with tqdm(total=chars, desc=f"chunking {len(docs):,} document(s)", unit="char", unit_scale=True,
                  disable=not show or not docs) as bar:
            return [(doc, self.chunker.split(doc, progress=bar.update)) for doc in docs]

    def sync(self, documents: Iterable[Document], *, progress: bool | None = None) -> AddReport:
        """Makes the index mirror ``documents``: adds new ones, re-indexes changed ones, and deletes every indexed
        document whose id is not among them (a file removed from the folder). ``AddReport.deleted`` lists those."""
        documents = _as_documents(documents)
        keep = {d.id for d in documents}
        gone = [d for d in self.store.document_ids() if d not in keep]
        report = self.add(documents, progress=progress)
        if gone:
            self._remove_documents(gone)
        report.deleted = gone
        return report

    def documents(self) -> list[dict[str, Any]]:
        """One record per indexed document, by id: ``{"id", "chunks", "sha256", "metadata"}``."""
        counts = self.store.chunk_counts()
        return [{"id": doc_id, "chunks": counts.get(doc_id, 0), "sha256": sha, "metadata": meta}
                for doc_id, sha, meta in self.store.iter_documents()]

    def document_chunks(self, doc_ids: Sequence[str] | None = None) -> list[StoredChunk]:
        """Every chunk of the named documents (all when None), ordered by document id, then position: the whole
        documents QA's ``full`` mode reads (:class:`~ragctx.protocols.Corpus`). Ids the index lacks are skipped."""
        if isinstance(doc_ids, str):  # one id, not its characters
            doc_ids = [doc_ids]
        return self.store.document_chunks(None if doc_ids is None else list(doc_ids))

    def delete(self, doc_ids: Iterable[str] | str) -> list[str]:
        """Removes documents by id (one id or several); returns the ids that were not in the index."""
        if isinstance(doc_ids, str):  # one id, not its characters
            doc_ids = [doc_ids]
        doc_ids = list(dict.fromkeys(doc_ids))
        bad = [d for d in doc_ids if not isinstance(d, str)]
        if bad:
            raise RagctxError(f"delete(): document ids are strings, got {bad[0]!r}")
        missing = [d for d in doc_ids if self.store.document_hash(d) is None]
        present = [d for d in doc_ids if d not in set(missing)]
        if present:
            self._remove_documents(present)
        return missing

    def _remove_documents(self, doc_ids: list[str]) -> None:
        removed = self.store.delete_documents(doc_ids)
        if not self.vectors.remove(removed):  # index type that cannot remove: rebuild from stored vectors
            self.vectors.rebuild(*self.store.vectors(self.vectors.dim))
        self._bm25 = None

    # -- search ------------------------------------------------------------------------------------------
    def search(
        self, query: str, k: int = 5, *, filter: dict[str, Any] | None = None, mode: str = "dense"
    ) -> list[Hit]:
        """The ``k`` chunks most relevant to ``query``, best first.

        Args:
            query: the question or keywords (non-empty).
            k: how many hits (> 0); more than the index holds returns every chunk.
            filter: ``{"doc_id": ...}`` or ``{metadata_key: value or [values]}``; applied before the
                nearest-neighbour search (see :mod:`ragctx.vectors` for the GPU case).
            mode: "dense" (embeddings), "bm25" (lexical), "hybrid" (both, reciprocal rank fusion), or the name of
                a retriever added with :func:`~ragctx.retrieval.register_retriever` (see :meth:`retriever`).
        """
        if not isinstance(query, str) or not query.strip():
            raise RagctxError("empty query: pass the text to search for")
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k <= 0:
            raise RagctxError(f"k={k!r}: pass a positive number of results")
        retriever = self.retriever(mode)
        n = len(self)
        if n == 0:
            return []
        k = min(int(k), n)
        if filter is not None and (not isinstance(filter, dict) or not all(isinstance(k, str) for k in filter)):
            raise RagctxError(f"filter={filter!r}: pass a dict such as {{'lang': 'en'}} or {{'doc_id': ['a.txt']}}")
        if filter:
            unknown = sorted(set(filter) - {"doc_id"} - self.store.metadata_keys())
            if unknown:
                raise RagctxError(f"filter key(s) {unknown}: no document has such metadata; keys here: "
                                  f"{', '.join(['doc_id', *sorted(self.store.metadata_keys())])}")
        allowed = self.store.filter_ids(filter) if filter else None
        if allowed is not None and len(allowed) == 0:
            return []
        ranked = retriever.retrieve(query, k, allowed)
        chunks = {c.id: c for c in self.store.get([i for i, _ in ranked])}
        return [
            Hit(float(score), c.id, c.doc_id, c.ordinal, c.start, c.end, c.text, c.metadata)
            for i, score in ranked
            if (c := chunks.get(i)) is not None
        ]

    def retriever(self, mode: str = "dense") -> Retriever:
        """The retriever :meth:`search` uses for ``mode``, built for this index: ``retrieve(query, k, allowed)`` gives
        ranked (chunk id, score) pairs, without the checks, filter and hits :meth:`search` adds (``allowed``: chunk
        ids a hit must be among, None for all). A RagctxError listing the names when ``mode`` is unknown; the names
        and how to add one: :mod:`ragctx.retrieval`."""
        return make_retriever(mode, self)

    @property
    def lexical(self) -> BM25Index:
        """BM25 over the chunk texts, built from the store when first needed and again after the chunks change."""
        if self._bm25 is None:
            self._bm25 = BM25Index(*self.store.texts())
        return self._bm25

    # -- persistence -------------------------------------------------------------------------------------
    def manifest(self, files: dict[str, str] | None = None) -> dict[str, Any]:
        from .version import __version__

        return {
            "format": FORMAT_NAME,
            "format_version": FORMAT_VERSION,
            "ragctx_version": __version__,
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "embedder": {"name": self.model, "dim": self.dim},
            "vectors": {**asdict(self.vector_config), "metric": "inner_product",
                        "files": VectorIndex.shard_files(self.vector_config.shards)},
            "chunking": self.chunking.to_dict(),
            "tokenizer": self.chunking.encoding,
            "counts": {"documents": self.store.count_documents(), "chunks": self.store.count_chunks(),
                       "vectors": self.vectors.ntotal if self._vectors is not None else 0},
            "checksums": files or {},
        }

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Writes the index to the folder ``path`` atomically: a new folder is written beside it, then swapped into
        place, so a failed or killed save leaves the previous index as it was, and a reader sees the old or the new
        one, never neither. Takes the writer lock (see :mod:`ragctx.locks`; re-entrant, so a caller that holds it
        for a read-modify-save, as :meth:`editing` does, is not blocked) and removes what dead writers left."""
        path = Path(path)
        check_target(path)
        make_parent(path)
        with writer_lock(path):
            _clean_leftovers(path)
            tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
            try:
                os.chmod(tmp, 0o777 & ~umask())  # mkdtemp makes 0700: follow the umask, so a shared index is readable
                if self.dim is None:
                    self.dim = self.embedder.dim
                self.store.save(tmp / STORE_FILE)
                try:
                    names = self.vectors.save(tmp)
                except RuntimeError as e:  # faiss reports a failed write as a RuntimeError
                    raise OSError(str(e)) from e
                files = {name: _sha256_file(tmp / name) for name in [STORE_FILE, *names]}
                with open(tmp / MANIFEST, "w") as f:
                    json.dump(self.manifest(files), f, indent=2)
                    f.flush()
                    os.fsync(f.fileno())
                with swap_lock(path):
                    _swap_into_place(tmp, path)
            except (OSError, sqlite3.Error) as e:
                shutil.rmtree(tmp, ignore_errors=True)
                free = shutil.disk_usage(path.parent).free
                raise RagctxError(f"could not write the index to {path} ({type(e).__name__}: {str(e)[:160]}; "
                                  f"{free / 2**20:.0f} MiB free there); the previous index, if any, is unchanged"
                                  ) from None
            except BaseException:
                shutil.rmtree(tmp, ignore_errors=True)
                raise
        return path

    @classmethod
    @contextmanager
    def editing(cls, path: str | os.PathLike[str], *, create: bool = False, wait: bool = True,
                **kwargs: Any) -> Iterator[Index]:
        """A read-modify-save under the writer lock: ``with Index.editing("indexes/docs") as index: index.add(...)``
        loads the index, yields it and saves it when the block ends without an error (a block that raises saves
        nothing). Concurrent editors of one folder run one after the other, so none loses another's documents.
        ``create``: start a new index (``kwargs`` as for :class:`Index`) when the folder does not exist yet.
        ``wait=False``: raise at once if another process is writing."""
        path = Path(path)
        check_target(path)
        make_parent(path)
        with writer_lock(path, wait=wait):
            if create and not _exists(path):
                index = cls(**kwargs)
            else:
                index = cls.load(path, **{k: v for k, v in kwargs.items() if k in ("embedder", "model", "device")})
            yield index
            index.save(path)

    @classmethod
    def load(
        cls,
        path: str | os.PathLike[str],
        *,
        embedder: Embedder | None = None,
        model: str | None = None,
        device: str | None = None,
        devices: str | list[str] | None = None,
        verify: bool = True,
    ) -> Index:
        """Opens a saved index, checking its manifest (and, with ``verify``, the files' checksums). Reads one version
        of the folder: a save running meanwhile swaps it only once this has read it (:mod:`ragctx.locks`).
        ``devices``: where its shards are searched (as for :class:`Index`)."""
        path = Path(path)
        _ensure_present(path)
        with read_lock(path):
            return cls._load(path, embedder=embedder, model=model, device=device, devices=devices, verify=verify)

    @classmethod
    def _load(cls, path: Path, *, embedder, model, device, devices=None, verify) -> Index:
        manifest = _read_manifest(path)
        built_with = manifest["embedder"]["name"]
        asked = embedder.name if embedder is not None else (model_name(model) if model else None)
        if asked is not None and asked != built_with:
            raise IndexFormatError(
                f"{path} was built with embedder '{built_with}', not '{asked}'; query it with the same model "
                "or rebuild the index with the new one"
            )
        dim = int(manifest["embedder"]["dim"])
        if embedder is not None and embedder.dim != dim:
            raise IndexFormatError(f"{path} holds {dim}-dimensional vectors; embedder '{asked}' gives {embedder.dim}")
        if verify:
            for name, digest in manifest["checksums"].items():
                if not (path / name).is_file():
                    raise IndexFormatError(f"{path / name} is missing; the index is incomplete, rebuild it")
                if _sha256_file(path / name) != digest:
                    raise IndexFormatError(f"{path / name} does not match its checksum; the index is damaged, rebuild it")
        v = manifest["vectors"]
        config = VectorConfig(factory=v["factory"], shards=int(v["shards"]), nprobe=int(v.get("nprobe", 32)),
                              ef_search=int(v.get("ef_search", 128)))
        known = {f.name for f in fields(ChunkConfig)}  # a newer ragctx's extra chunking keys are not this one's
        chunking = ChunkConfig(**{k: val for k, val in manifest["chunking"].items() if k in known})
        store = ChunkStore.open(path / STORE_FILE)
        vectors = VectorIndex.load(path, v["files"], dim, config)
        if vectors.ntotal != store.count_chunks():
            raise IndexFormatError(
                f"{path}: FAISS holds {vectors.ntotal} vectors but the store {store.count_chunks()} chunks; rebuild"
            )
        return cls(embedder, model=built_with, chunking=chunking, vectors=config,
                   device=device, devices=devices, _store=store, _vectors=vectors, _dim=dim)

    def info(self) -> dict[str, Any]:
        """Counts and configuration, as in the manifest."""
        m = self.manifest()
        return {k: m[k] for k in ("embedder", "vectors", "chunking", "tokenizer", "counts")} | {
            "device": self.device, "devices": self.vectors.devices if self._vectors is not None else self.devices}


def read_manifest(path: Path) -> dict[str, Any]:
    """The validated manifest of the index folder ``path`` (read under the swap lock, after restoring a folder a
    killed save left aside)."""
    path = Path(path)
    _ensure_present(path)
    with read_lock(path):
        return _read_manifest(path)


# what a manifest must hold, and of which type (a newer ragctx may add keys: they are ignored)
_MANIFEST_FIELDS: dict[str, dict[str, type | tuple[type, ...]]] = {
    "embedder": {"name": str, "dim": int},
    "vectors": {"factory": str, "shards": int, "files": list},
    "chunking": {"max_tokens": int, "overlap": int},
    "counts": {"documents": int, "chunks": int},
    "checksums": {},
}


def _read_manifest(path: Path) -> dict[str, Any]:
    file = path / MANIFEST
    if not path.exists():
        raise IndexFormatError(f"{path}: no such index; build one with `ragctx index build DOCS --out {path}`")
    if not file.is_file():
        raise IndexFormatError(f"{path} is not a ragctx index (no {MANIFEST}); build one with `ragctx index build`")
    try:
        manifest = json.loads(file.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise IndexFormatError(f"{file} is damaged ({e}); rebuild the index") from e
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT_NAME:
        raise IndexFormatError(f"{file} is not a ragctx index manifest; rebuild the index")
    version = manifest.get("format_version")
    if version != FORMAT_VERSION:
        hint = "upgrade ragctx" if isinstance(version, int) and version > FORMAT_VERSION else "rebuild the index"
        raise IndexFormatError(f"{path} has index format version {version}; this ragctx reads {FORMAT_VERSION}: {hint}")
    for key, need in _MANIFEST_FIELDS.items():
        section = manifest.get(key)
        if not isinstance(section, dict):
            raise IndexFormatError(f"{file} lacks '{key}'; the manifest is damaged, rebuild the index")
        for name, kind in need.items():
            value = section.get(name)
            if not isinstance(value, kind) or isinstance(value, bool):
                raise IndexFormatError(f"{file}: '{key}.{name}' is {value!r}, not a {kind.__name__}; the manifest is "
                                       "damaged, rebuild the index")
    if not all(isinstance(f, str) for f in manifest["vectors"]["files"]) or \
            not all(isinstance(d, str) for d in manifest["checksums"].values()):
        raise IndexFormatError(f"{file}: 'vectors.files' and 'checksums' must hold file names and digests; rebuild")
    return manifest


def check_space(path: Path, documents: list[Document], dim: int = 384, text_bytes: int = 0) -> None:
    """Raises, before any embedding, when the folder for ``path`` cannot hold the index these documents (or
    ``text_bytes`` of text) make: its chunk texts (~1.3x the text, with overlap), a vector per ~800 characters in the
    store and in FAISS, and the index already there (a save writes the new folder before it removes the old one)."""
    text = text_bytes + sum(len(d.text.encode("utf-8", "surrogatepass")) for d in documents)
    need = int(text * 1.3 + text / 800 * dim * 4 * 2) + (sum(f.stat().st_size for f in path.iterdir() if f.is_file())
                                                         if path.is_dir() else 0)
    free = shutil.disk_usage(path.parent if path.parent.is_dir() else Path.cwd()).free
    if need > free:
        raise RagctxError(f"{path.parent} has {free / 2**20:.0f} MiB free; an index of these documents needs about "
                          f"{need / 2**20:.0f} MiB: free some space or choose another --out")


def _as_documents(documents) -> list[Document]:
    """``documents`` as a list of :class:`Document`, or a RagctxError saying what was passed instead."""
    if isinstance(documents, (str, bytes, Document)) or not isinstance(documents, Iterable):
        raise RagctxError(f"documents must be a list of Document objects, not {type(documents).__name__}; "
                          "use load_path(folder).documents or [Document.from_text(id, text), ...]")
    return as_documents(documents)  # LangChain and LlamaIndex documents are converted


def check_target(path: Path) -> None:
    """Raises unless ``path`` can receive an index: absent, an empty folder, or an index folder. Call it before the
    expensive part (loading and embedding documents)."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise RagctxError(f"{path} is a file; pass a folder path for the index")
    if path.is_dir() and any(path.iterdir()) and not (path / MANIFEST).exists():
        raise RagctxError(f"{path} exists and is not a ragctx index; choose another --out folder")


def make_parent(path: Path) -> None:
    """Creates the folder an index folder goes into, or says why it cannot."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise RagctxError(f"cannot create {path.parent} for the index ({e.strerror or e})") from None


def _exists(path: Path) -> bool:
    _ensure_present(path)
    return (path / MANIFEST).is_file()


def _clean_leftovers(path: Path) -> None:
    """Removes the temporary and set-aside folders of saves that died (only a writer, holding the writer lock, may:
    no other save is running), after restoring the index from one if a save died between its two renames."""
    _ensure_present(path)
    name = glob.escape(path.name)
    for stale in [*path.parent.glob(f".{name}.tmp-*"), *path.parent.glob(f".{name}.old-*")]:
        shutil.rmtree(stale, ignore_errors=True)


def _ensure_present(path: Path) -> None:
    """A save killed between its two renames leaves the folder missing and the previous index in ``.NAME.old-*``:
    put it back (under the swap lock, so that no save is renaming meanwhile)."""
    if path.exists() or not path.parent.is_dir() or not any(path.parent.glob(f".{glob.escape(path.name)}.old-*")):
        return
    with swap_lock(path):
        _recover(path)


def _swap_into_place(tmp: Path, path: Path) -> None:
    """Renames ``tmp`` to ``path``; an existing index is moved aside first and removed only after the swap."""
    if not path.exists():
        os.rename(tmp, path)
        return
    old = path.parent / f".{path.name}.old-{uuid.uuid4().hex[:8]}"
    os.rename(path, old)
    try:
        os.rename(tmp, path)
    except BaseException:
        os.rename(old, path)
        raise
    shutil.rmtree(old, ignore_errors=True)


def _recover(path: Path) -> None:
    """After a crash between the two renames of a save, the previous index sits in ``.NAME.old-*``: restore it."""
    if path.exists() or not path.parent.is_dir():
        return
    olds = sorted(path.parent.glob(f".{glob.escape(path.name)}.old-*"), key=lambda p: p.stat().st_mtime)
    if olds and (olds[-1] / MANIFEST).exists():
        os.rename(olds[-1], path)
