"""CPU embedding backends side by side (issue 19): throughput, cold start and retrieval recall on the essays QA set.

    OMP_NUM_THREADS=2 python eval/bench_embed_cpu.py --out eval/reports/embedding-cpu

For each backend (torch = sentence-transformers, onnx = ONNX Runtime fp32, onnx-int8 = dynamically quantized) the
essays' 200-token chunks are embedded, and the QA set's answerable questions (both splits) are searched densely:
recall@k is the share of evidence spans one of the top-k chunks overlaps. Also the cold `ragctx search` time (dense)
of a fresh process per backend. Writes ``<out>/embedding-<date>.json`` and prints a table.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from eval.bench_qa_retrieval import QA_FILE, recall  # noqa: E402
from eval.bench_retrieval import environment, table  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=None)
    p.add_argument("--index", default=None, help="a saved essays index (200/32) to take the chunks from and search")
    args = p.parse_args()
    from ragctx import ChunkConfig, Index, load_path
    from ragctx.data import essays_dir
    from ragctx.embeddings import make_embedder
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
    rows = []
    for backend in ("torch", "onnx", "onnx-int8"):
        t = time.perf_counter()
        emb = make_embedder(device="cpu", backend=backend)
        load_s = time.perf_counter() - t
        emb.encode(texts[:32])  # warm-up
        t = time.perf_counter()
        vecs = emb.encode(texts)
        enc_s = time.perf_counter() - t
        q = emb.encode([i["question"] for i in items])
        top = np.argsort(-(q @ vecs.T), axis=1)[:, :10]
        found = {f"R@{k}": [] for k in (1, 5, 10)}
        for item, row in zip(items, top):
            evidence = [(e["doc_id"], e["start"], e["end"]) for e in item["evidence"]]
            spans = [(chunks[j].doc_id, chunks[j].start, chunks[j].end) for j in row]
            for k in (1, 5, 10):
                found[f"R@{k}"].append(recall(spans[:k], evidence))
        env = {**os.environ, "RAGCTX_EMBED_BACKEND": backend}
        t = time.perf_counter()
        subprocess.run([sys.executable, "-m", "ragctx", "search", args.index, "what did the author work on", "-k",
                        "3", "--device", "cpu"], env=env, check=True, capture_output=True)
        cold = time.perf_counter() - t
        rows.append({"backend": backend, "chunks": len(texts), "chunks_per_s": len(texts) / enc_s,
                     "load_s": load_s, **{k: sum(v) / len(v) for k, v in found.items()}, "n_questions": len(items),
                     "cold_cli_search_s": cold})
        print(table(rows[-1:], list(rows[-1])), flush=True)
    t0 = rows[0]["chunks_per_s"]
    for r in rows:
        r["speedup_vs_torch"] = r["chunks_per_s"] / t0
    print("\n" + table(rows, list(rows[0])))
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        env = environment()
        (out / f"embedding-{env['date']}.json").write_text(json.dumps({"env": env, "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
