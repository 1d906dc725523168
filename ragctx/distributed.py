"""Index builds on Ray: the expensive part of a build as a Ray Data pipeline, on this machine or a cluster.

``Index.build(docs, engine="ray")`` and ``ragctx index build SRC --out X --ray [ADDRESS]``::

    files (load_path's list and order)   or   documents in memory
      -> load + chunk     map_batches, CPU tasks: ragctx.documents.load_file and Chunker.split, the local build's code
      -> embed            map_batches with a callable class: each actor makes the embedder once (shared_embedder, as
                          the local build does); one GPU per actor and one actor per GPU on a GPU cluster, else
                          actors of up to 8 threads over the CPUs, each reserving a CPU less than it uses, so
                          that loading and chunking run beside the embedding
      -> this process     rows sorted back into load order, repeated ids skipped as load_path skips them, then
                          Index._insert: the same chunk store, ids and FAISS shards as a local build (several shards
                          filled by one Ray task each), saved by Index.save

So a Ray build and a local build of the same corpus hold the same chunks under the same ids, and vectors equal to
float tolerance (each is embedded in another batch: padding differs). Nothing is written before every chunk is
embedded, and the index is saved as a local build saves it (a new folder swapped into place): a build that fails
or is killed leaves the previous index as it was. A worker or actor that dies is retried by Ray (its tasks are
re-run, actors restarted); a failure that outlasts the retries raises a RagctxError saying that nothing was
written. Such a build is not resumed: run it again.

No address: a local cluster on this machine (``ray.init(address="local")``, ``RayConfig.num_cpus``). An address
("auto", "ray://head:10001"): a running cluster, whose workers need ragctx installed and, for a folder source, the
same path on a shared file system. A process already connected to Ray (``ray.init`` called before) builds on that
cluster and leaves it running. Ray's usage statistics are switched off (nothing leaves the machine).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .chunking import Chunk, ChunkConfig, Chunker
from .documents import Document, DocumentError, check_source, load_file, source_files
from .errors import RagctxError

if TYPE_CHECKING:
    from .index import Index

__all__ = ["RayConfig", "ray_build", "import_ray"]

INSTALL = 'pip install "ragctx[ray]"'
DOC, SKIP = -1, -2  # `ordinal` of a row that describes a document (its metadata) / a skipped file (its reason)
CPU_ACTOR_THREADS = 8  # threads of one CPU embedding actor by default (ONNX Runtime gains little past that)
LOAD_CPUS = 0.5  # CPUs a load + chunk task reserves: two share a core (tokenizing waits on file reads), and unlike
#                 the embedding actor's reservation, which keeps Ray Data from fusing the tasks into that actor (it
#                 would then chunk and embed one after the other instead of side by side)


@dataclass(frozen=True)
class RayConfig:
    """How a Ray build uses its cluster."""

    num_cpus: int | None = None  # local cluster only: CPUs it may use (None: every core)
    embed_actors: int | None = None  # embedding actors (None: one per GPU, else CPUs // embed_threads)
    embed_threads: int | None = None  # CPU actors: threads each (None: the cluster's CPUs, at most 8)
    batch_size: int | None = None  # chunks per embedding call (None: 8192 on GPUs, 512 on CPUs)
    load_blocks: int | None = None  # blocks the file or document list is cut into (None: 4 per CPU)
    progress: bool = True  # Ray Data's progress bars (when the caller did not ask for none)


def import_ray():
    """The ``ray`` module with Ray Data, or a RagctxError saying how to install it."""
    try:
        import ray
        import ray.data  # noqa: F401  (ray without the [data] extra lacks pyarrow and pandas)
    except ImportError as e:
        raise RagctxError(f"the Ray engine needs Ray Data ({e.name or e}): {INSTALL}") from None
    return ray


@contextmanager
def cluster(address: str | None, config: RayConfig):
    """Ray connected for the duration: this process's existing connection, else a new local cluster (no address)
    or the cluster at ``address``; what this opened it shuts down."""
    ray = import_ray()
    if ray.is_initialized():
        yield ray
        return
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    try:
        if address is None:
            ray.init(address="local", num_cpus=config.num_cpus, include_dashboard=False, logging_level=logging.WARNING)
        else:
            ray.init(address=address, logging_level=logging.WARNING)
    except (ConnectionError, RuntimeError, ValueError) as e:
        where = f"the Ray cluster at {address}" if address else "a local Ray cluster"
        raise RagctxError(f"could not start or reach {where} ({type(e).__name__}: {str(e)[:200]}); check the "
                          "address (`ray status` on the head node), or leave it out for a local cluster") from None
    try:
        yield ray
    finally:
        ray.shutdown()


def ray_build(index: Index, source: Iterable[Document] | str | os.PathLike[str], *, address: str | None = None,
              config: RayConfig | None = None, progress: bool | None = None, strict: bool = False,
              encoding: str | None = None, html: str = "text") -> list[tuple[str, str]]:
    """Fills the empty ``index`` from ``source`` (a file or folder path, read as :func:`~ragctx.documents.load_path`
    reads it, or documents) through a Ray Data pipeline (module docstring). Returns the skipped (path, reason)
    pairs of a path source. ``strict``, ``encoding``, ``html``: as for load_path."""
    config = config or RayConfig()
    if index._embedder is not None:
        raise RagctxError("engine='ray' makes the embedder in each Ray actor from its name: pass model=NAME (or a "
                          "local folder) instead of embedder=")
    if len(index):
        raise RagctxError("the Ray engine builds a new index; add to an existing one with Index.add")
    items = _source_items(source, html)
    with cluster(address, config) as ray:
        ctx = ray.data.DataContext.get_current()
        ctx.enable_progress_bars = bool(config.progress if progress is None else progress)
        logging.getLogger("ray.data").setLevel(logging.WARNING)
        resources = ray.cluster_resources()
        cpus, gpus = max(1, int(resources.get("CPU", 1))), int(resources.get("GPU", 0))
        blocks = max(1, min(len(items), config.load_blocks or 4 * cpus))
        chunked = ray.data.from_items(items, override_num_blocks=blocks).map_batches(
            load_and_chunk, fn_kwargs={"config": index.chunking, "encoding": encoding, "html": html},
            batch_size=None, batch_format="numpy", num_cpus=LOAD_CPUS)
        if not index.vector_config.exact:  # an IVF index that the chunks cannot train is refused before embedding
            try:
                chunked = chunked.materialize()
                n = sum(int((b["ordinal"] >= 0).sum()) for b in chunked.iter_batches(batch_format="numpy",
                                                                                       batch_size=None))
            except ray.exceptions.RayError as e:
                raise _failure(e, source) from None
            if n:
                index.vectors.check_trainable(n)
        threads = config.embed_threads or min(cpus, CPU_ACTOR_THREADS)
        actors = config.embed_actors or (gpus if gpus else max(1, cpus // threads))
        embedded = chunked.map_batches(
            _Embed, fn_constructor_kwargs={"model": index.model, "device": "cuda" if gpus else "cpu",
                                           "threads": threads},
            batch_size=config.batch_size or (8192 if gpus else 512), batch_format="numpy",
            compute=ray.data.ActorPoolStrategy(size=actors),
            # a CPU actor reserves one CPU less than its threads: loading and chunking tasks run beside it
            num_gpus=1 if gpus else 0, num_cpus=1 if gpus else max(1, threads - 1))
        try:
            rows = _collect(embedded)
        except ray.exceptions.RayError as e:
            raise _failure(e, source) from None
        records, vecs, skipped = _records(rows, strict)
        if not records:
            return skipped
        index.dim = index.dim or int(vecs.shape[1])
        index._insert(records, vecs, map_shards=_shard_tasks(ray) if index.vector_config.shards > 1 else None)
    return skipped


def _source_items(source, html: str) -> list[dict[str, Any]]:
    """The pipeline's input rows: one per file of a path, or one per document (ids checked unique, as add does)."""
    if isinstance(source, (str, os.PathLike)):
        root = check_source(source, html)
        return [{"pos": i, "path": str(file), "rel": rel} for i, (file, rel) in enumerate(source_files(root))]
    from .index import _as_documents

    docs = _as_documents(source)
    seen: set[str] = set()
    for doc in docs:
        if doc.id in seen:
            raise RagctxError(f"document id '{doc.id}' appears twice in one add; ids must be unique")
        seen.add(doc.id)
    return [{"pos": i, "doc_id": d.id, "text": d.text, "meta": json.dumps(d.metadata, default=str), "sha": d.sha256}
            for i, d in enumerate(docs)]


@lru_cache(maxsize=4)
def _chunker(config: ChunkConfig) -> Chunker:
    return Chunker(config)


def load_and_chunk(batch: dict[str, np.ndarray], config: ChunkConfig, encoding: str | None = None,
                   html: str = "text") -> dict[str, np.ndarray]:
    """Ray task body: input rows (files or documents) -> per document a DOC row (its text hash and metadata), then
    its chunks; a SKIP row (path, reason) per file or .jsonl line that cannot be used."""
    chunker = _chunker(config)
    keys = ("pos", "sub", "ordinal", "start", "end", "n_tokens", "text", "doc_id", "meta")
    out: dict[str, list] = {k: [] for k in keys}

    def row(pos, sub, ordinal, text, doc_id, meta="", start=0, end=0, n_tokens=0):
        for k, v in zip(keys, (pos, sub, ordinal, start, end, n_tokens, text, doc_id, meta)):
            out[k].append(v)

    for i, pos in enumerate(batch["pos"]):
        if "path" in batch:
            docs, skipped = load_file(Path(batch["path"][i]), str(batch["rel"][i]), encoding=encoding, html=html)
            for where, reason in skipped:
                row(pos, -1, SKIP, reason, where)
            found = [(d, json.dumps(d.metadata, default=str), d.sha256) for d in docs]
        else:
            doc = Document(str(batch["doc_id"][i]), str(batch["text"][i]), json.loads(batch["meta"][i]))
            found = [(doc, str(batch["meta"][i]), str(batch["sha"][i]))]
        for sub, (doc, meta, sha) in enumerate(found):
            row(pos, sub, DOC, sha, doc.id, meta)
            for c in chunker.split(doc):
                row(pos, sub, c.ordinal, c.text, doc.id, "", c.start, c.end, c.n_tokens)
    ints = {"pos", "sub", "ordinal", "start", "end", "n_tokens"}
    return {k: np.asarray(v, dtype=np.int64 if k in ints else object) for k, v in out.items()}


class _Embed:
    """Ray actor: makes the embedder once, then embeds the chunk rows of each batch (other rows get zeros)."""

    def __init__(self, model: str, device: str, threads: int) -> None:
        from .embeddings import shared_embedder

        if device == "cpu":
            os.environ["RAGCTX_THREADS"] = str(threads)  # this actor's process only (ragctx.threads)
        self.embedder = shared_embedder(model, device)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        chunk = batch["ordinal"] >= 0
        vecs = np.zeros((len(chunk), self.embedder.dim), dtype=np.float32)
        if chunk.any():
            vecs[chunk] = self.embedder.encode([str(t) for t in batch["text"][chunk]], progress=False)
        return {**batch, "vector": vecs}


def _collect(ds) -> dict[str, np.ndarray]:
    """Every row of the dataset as columns, in load order (position, document within the file, ordinal)."""
    parts: dict[str, list[np.ndarray]] = {}
    for batch in ds.iter_batches(batch_format="numpy", batch_size=None):
        for k, v in batch.items():
            parts.setdefault(k, []).append(v)
    if not parts:
        return {}
    cols = {k: np.concatenate(v) for k, v in parts.items()}
    order = np.lexsort((cols["ordinal"], cols["sub"], cols["pos"]))  # DOC (-1) before its chunks, SKIP (-2) first
    return {k: v[order] for k, v in cols.items()}


def _records(rows: dict[str, np.ndarray], strict: bool):
    """(records for Index._insert, their chunks' vectors, skipped (path, reason)) from the sorted rows; a repeated
    document id is skipped after the first, as load_path does (``strict``: the first skip raises, as there)."""
    records, keep, skipped, seen = [], [], [], set()
    current = None
    for i in range(len(rows.get("pos", []))):
        ordinal, doc_id = int(rows["ordinal"][i]), str(rows["doc_id"][i])
        if ordinal == SKIP or (ordinal == DOC and doc_id in seen):
            where = doc_id if ordinal == SKIP else json.loads(rows["meta"][i]).get("source", doc_id)
            reason = str(rows["text"][i]) if ordinal == SKIP else f"duplicate document id '{doc_id}'"
            if strict:
                raise DocumentError(f"{where}: {reason}")
            skipped.append((where, reason))
            current = None
        elif ordinal == DOC:
            seen.add(doc_id)
            current = (doc_id, str(rows["text"][i]), json.loads(rows["meta"][i]), [])
            records.append(current)
        elif current is not None:
            current[3].append(Chunk(doc_id, ordinal, int(rows["start"][i]), int(rows["end"][i]), str(rows["text"][i]),
                                    int(rows["n_tokens"][i])))
            keep.append(i)
    vecs = rows["vector"][keep] if keep else np.zeros((0, 0), np.float32)
    return records, np.ascontiguousarray(vecs, dtype=np.float32), skipped


def _fill_serialized(blob: np.ndarray, ids: np.ndarray, vectors: np.ndarray) -> np.ndarray:
    """Ray task: a serialized FAISS shard with ``vectors`` added, serialized again (FAISS's own format)."""
    import faiss

    from .vectors import fill_shard

    return faiss.serialize_index(fill_shard(faiss.deserialize_index(blob), ids, vectors))


def _shard_tasks(ray):
    """A ``map_shards`` for VectorIndex.add that fills each shard in a Ray task of its own."""
    import faiss

    task = ray.remote(_fill_serialized)

    def run(parts):
        refs = [task.remote(faiss.serialize_index(shard), ids, vecs) for shard, ids, vecs in parts]
        return [faiss.deserialize_index(blob) for blob in ray.get(refs)]

    return run


def _failure(error: Exception, source) -> Exception:
    """The RagctxError a worker raised, or one saying the Ray build failed and nothing was written."""
    cause = error
    while cause is not None:
        if isinstance(cause, RagctxError):
            return cause
        cause = getattr(cause, "cause", None) or cause.__cause__
    first = str(error).strip().splitlines()[-1] if str(error).strip() else type(error).__name__
    return RagctxError(f"the Ray build of {source if isinstance(source, (str, os.PathLike)) else 'the documents'} "
                       f"failed ({type(error).__name__}: {first[:300]}); nothing was written and the previous index, "
                       "if any, is unchanged: run the build again")
