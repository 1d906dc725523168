"""CPU embedding backends side by side (issue 19): throughput, cold start and retrieval recall on the essays QA set.

    OMP_NUM_THREADS=2 python eval/bench_embed_cpu.py --out eval/reports/embedding-cpu

Backends: torch = sentence-transformers fp32 (the baseline), torch-bf16 = the same in bfloat16 (a measurement, not a
backend name), onnx = ONNX Runtime fp32, onnx-int8 = dynamically quantized, openvino = OpenVINO (bf16 where the CPU
has it natively, else fp32). All are loaded first; then the essays' 200-token chunks are embedded in slices, every
backend on each slice in turn (the order rotating), so that a busy machine slows them alike: chunks/s is over all
slices, and the per-slice ratios to torch show the spread. The QA set's answerable questions (both splits) are
searched densely over each backend's vectors: recall@k is the share of evidence spans one of the top-k chunks
overlaps. Also the cold `ragctx search` time (dense) of a fresh process per backend. Writes
``<out>/<stem>-<date>.json`` and prints a table.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from eval._common import QA_FILE, environment, save_json, table  # noqa: E402
from ragctx.evaluation.metrics import doc_spans_overlap as recall  # noqa: E402

BACKENDS = ("torch", "torch-bf16", "onnx", "onnx-int8", "openvino")
PRECISION = {"torch": "fp32", "torch-bf16": "bf16", "onnx": "fp32", "onnx-int8": "int8"}  # openvino says its own


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=None)
    p.add_argument("--stem", default="embedding", help="the JSON's name before the date")
    p.add_argument("--index", default=None, help="a saved essays index (200/32) to take the chunks from and search")
    p.add_argument("--slices", type=int, default=8, help="slices of the chunks, each embedded by every backend")
    p.add_argument("--backends", nargs="+", default=list(BACKENDS), choices=BACKENDS)
    args = p.parse_args()
    from ragctx import ChunkConfig, Index, load_path
    from ragctx.data import essays_dir
    from ragctx.embeddings import Embedder, make_embedder
    from ragctx.evaluation.qa_tasks import load_qa_file

    if args.index and (Path(args.index) / "manifest.json").is_file():
        base = Index.load(args.index, device="cpu")
    else:
        base = Index.build(load_path(essays_dir()).documents, chunking=ChunkConfig(200, 32), device="cpu")
        args.index = "/tmp/bench-embed-essays"
        base.save(args.index)
    chunks = base.store.document_chunks()
    texts = [c.text for c in chunks]
    items = [i for i in load_qa_file(QA_FILE, corpus=True) if i["answers"]]
    embedders, load_s = {}, {}
    for name in args.backends:  # torch first: its thread count (OMP_NUM_THREADS) is what the others then take
        t = time.perf_counter()
        embedders[name] = (Embedder(device="cpu", dtype="bfloat16") if name == "torch-bf16"
                           else make_embedder(device="cpu", backend=name))
        load_s[name] = time.perf_counter() - t
        embedders[name].encode(texts[:32])  # warm-up
    slices = np.array_split(np.arange(len(texts)), args.slices)
    secs = {name: [] for name in embedders}
    parts = {name: [] for name in embedders}
    for s, idx in enumerate(slices):
        names = list(embedders)
        for name in names[s % len(names):] + names[: s % len(names)]:  # rotate who goes first
            t = time.perf_counter()
            parts[name].append(embedders[name].encode([texts[i] for i in idx]))
            secs[name].append(time.perf_counter() - t)
    base_name = args.backends[0]
    rows = []
    for name, emb in embedders.items():
        vecs = np.concatenate(parts[name])
        top = np.argsort(-(emb.encode([i["question"] for i in items]) @ vecs.T), axis=1)[:, :10]
        found = {f"R@{k}": [] for k in (1, 5, 10)}
        for item, row in zip(items, top):
            evidence = [(e["doc_id"], e["start"], e["end"]) for e in item["evidence"]]
            spans = [(chunks[j].doc_id, chunks[j].start, chunks[j].end) for j in row]
            for k in (1, 5, 10):
                found[f"R@{k}"].append(recall(spans[:k], evidence))
        ratios = [b / a for a, b in zip(secs[name], secs[base_name])]
        cos = (vecs * np.concatenate(parts[base_name])).sum(1)
        rows.append({"backend": name, "precision": getattr(emb, "precision", PRECISION.get(name)),
                     "chunks": len(texts), "chunks_per_s": len(texts) / sum(secs[name]),
                     "x_torch": sum(secs[base_name]) / sum(secs[name]), "x_torch_slice_min": min(ratios),
                     "x_torch_slice_max": max(ratios), "max_cos_gap_torch": float(1 - cos.min()),
                     "load_s": load_s[name],
                     **{k: sum(v) / len(v) for k, v in found.items()}, "n_questions": len(items)})
    for row in rows:  # a fresh process per backend, in turn
        if row["backend"] == "torch-bf16":
            continue
        env = {**os.environ, "RAGCTX_EMBED_BACKEND": row["backend"]}
        t = time.perf_counter()
        subprocess.run([sys.executable, "-m", "ragctx", "search", args.index, "what did the author work on", "-k",
                        "3", "--device", "cpu"], env=env, check=True, capture_output=True)
        row["cold_cli_search_s"] = time.perf_counter() - t
    print("\n" + table(rows, list(rows[0])))
    if args.out:
        env = environment()
        for pkg in ("onnxruntime", "openvino", "sentence-transformers"):
            try:
                env[pkg] = importlib.metadata.version(pkg)
            except importlib.metadata.PackageNotFoundError:
                env[pkg] = None
        env.update(omp_num_threads=os.environ.get("OMP_NUM_THREADS"), slices=args.slices,
                   cpu_flags=[f for f in ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16")
                              if f in _cpu_flags()])
        save_json(args.out, args.stem, {"env": env, "rows": rows})
    return 0


def _cpu_flags() -> set[str]:
    """The CPU's feature flags from /proc/cpuinfo (empty where there is none)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


if __name__ == "__main__":
    sys.exit(main())
