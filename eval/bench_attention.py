"""Attention benchmarks on the GPU: the op alone, and a ~100M-parameter model end to end.

    python eval/bench_attention.py --part op     # bf16, B=1, H=16, D=128, causal, N = 1K..128K: TFLOP/s
    python eval/bench_attention.py --part model  # prefill time + peak memory, decode ms/token, log-log slopes
    python eval/bench_attention.py --part all --out eval/reports/attention
    python eval/bench_attention.py --part model --variants flash linear linear:fla linear:torch
    # linear: ragctx's Triton kernels (elu map); linear:fla: fla-core's kernel; linear:torch: the pure-torch form

Every number is the median of timed runs after warm-up, between CUDA events. Prints a table per part and writes
``<out>/<part>.json`` with the card, versions and date. Compare ratios only within one run.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from eval._common import cuda_time, environment, table  # noqa: E402
from ragctx.errors import is_out_of_memory  # noqa: E402
from ragctx.generator.attention import get_attention  # noqa: E402
from ragctx.generator.attention.linear import feature_map, fla_kernel, record_routes  # noqa: E402
from ragctx.generator.attention.linear_triton import (  # noqa: E402
    SCAN_UNROLL,
    linear_prefill,
    triton_kernels,
)
from ragctx.generator.config import ModelConfig  # noqa: E402
from ragctx.generator.model import Transformer  # noqa: E402

K = 1024


def slope(ns: list[int], ts: list[float], min_n: int) -> float | None:
    pts = [(n, t) for n, t in zip(ns, ts) if n >= min_n and t]
    if len(pts) < 2:
        return None
    x, y = np.log([p[0] for p in pts]), np.log([p[1] for p in pts])
    return float(np.polyfit(x, y, 1)[0])


# -- the op ------------------------------------------------------------------------------------------------
def bench_op(args) -> list[dict]:
    from torch.nn.attention import SDPBackend, sdpa_kernel

    h, d = 16, 128
    cfg = ModelConfig(dim=h * d, n_heads=h, n_kv_heads=h, head_dim=d, window=args.window, chunk_size=64)
    rows, dead = [], set()
    # one compiled wrapper for every length (dynamic shapes): the same pure-torch function, element-wise passes fused
    compiled = torch.compile(get_attention("linear").fn, dynamic=True) if args.linear_compile else None
    for n in [x * K for x in args.op_lengths]:
        g = torch.Generator(device="cuda").manual_seed(n)
        q, k, v = (torch.randn(1, h, n, d, device="cuda", dtype=torch.bfloat16, generator=g) for _ in range(3))
        flops = 4 * n * n * d * h / 2  # causal: half the score matrix
        reps = 10 if n <= 16 * K else 4
        pos = torch.arange(n, device="cuda")[None]

        def reg(name):
            return lambda: get_attention(name).fn(q, k, v, positions=pos, valid=None, state=None, cfg=cfg)

        fq, fk = feature_map(q, "elu").to(torch.bfloat16), feature_map(k, "elu").to(torch.bfloat16)
        cases = [("flash (ragctx)", reg("flash"), True)]
        for backend in ("CUDNN_ATTENTION", "FLASH_ATTENTION", "EFFICIENT_ATTENTION"):
            def forced(backend=backend):
                with sdpa_kernel([getattr(SDPBackend, backend)]):
                    return F.scaled_dot_product_attention(q, k, v, is_causal=True)
            cases.append((f"sdpa forced {backend}", forced, True))
        cases.append(("softmax (ragctx, fp32 N x N)", reg("softmax"), True))
        cases.append(("sliding_window (ragctx, flex, W=%d)" % args.window, reg("sliding_window"), False))
        for chunk in args.linear_chunks:
            ccfg = replace(cfg, chunk_size=chunk)
            cases.append((f"linear (ragctx, pure torch, C={chunk})", lambda ccfg=ccfg: _routes(
                lambda: get_attention("linear").fn(q, k, v, positions=pos, valid=None, state=None, cfg=ccfg)), False))
        if compiled is not None:
            ccfg = replace(cfg, chunk_size=args.linear_compile)
            cases.append((f"linear (ragctx, pure torch, C={args.linear_compile}, torch.compile)", lambda ccfg=ccfg: _routes(
                lambda: compiled(q, k, v, positions=pos, valid=None, state=None, cfg=ccfg)), False))
        kernel = fla_kernel()
        if kernel is not None:
            qt, kt, vt = (x.transpose(1, 2).contiguous() for x in (fq, fk, v))
            cases.append(("linear (fla-core chunk kernel)",
                          lambda: kernel(qt, kt, vt, scale=1.0, normalize=True), False))
            cases.append(("linear (ragctx, with fla-core)", lambda: _routes(reg("linear"), fla=True), False))
        if triton_kernels() is not None:  # ragctx's own kernels: as routed (their defaults), then the knobs
            cases.append(("linear (ragctx, own Triton kernels)", lambda: _routes(reg("linear"), triton=True), False))
            for chunk, warps, *unroll in args.triton_configs:
                u = unroll[0] if unroll else SCAN_UNROLL
                cases.append((f"linear (ragctx Triton kernels, C={chunk}, {warps} warps, scan x{u})",
                              lambda c=chunk, w=warps, u=u: linear_prefill(q, k, v, None, chunk=c, num_warps=w,
                                                                           scan_unroll=u), False))
        for name, fn, quadratic in cases:
            if name in dead or (args.op_cases and not any(c in name for c in args.op_cases)):
                continue
            try:
                with torch.inference_mode():  # as in generation (and fla-core serves inference prefill only)
                    sec, mem = cuda_time(fn, reps)
            except (torch.OutOfMemoryError, RuntimeError) as e:
                if is_out_of_memory(e):
                    rows.append({"op": name, "N": n, "status": "OOM"})
                    dead.add(name)
                    torch.cuda.empty_cache()
                    continue
                rows.append({"op": name, "N": n, "status": f"error: {str(e)[:80]}"})
                dead.add(name)
                continue
            rows.append({"op": name, "N": n, "ms": sec * 1e3, "tflops": flops / sec / 1e12 if quadratic else None,
                         "tokens_per_s": n / sec, "peak_gib": mem / 2**30, "status": "ok"})
            print(f"  {name}  N={n}  {sec * 1e3:.3f} ms", flush=True)  # as measured: a run cut short keeps these
        del q, k, v, fq, fk
        torch.cuda.empty_cache()
    # ratios in this run: flash against the best forced backend, ragctx linear against fla-core
    for n in {r["N"] for r in rows}:
        at = {r["op"]: r for r in rows if r["N"] == n and r.get("status") == "ok"}
        best = max((r["tflops"] for name, r in at.items() if name.startswith("sdpa forced")), default=None)
        if best and "flash (ragctx)" in at:
            at["flash (ragctx)"]["vs_best_sdpa"] = at["flash (ragctx)"]["tflops"] / best
        if "linear (fla-core chunk kernel)" in at:
            for name in at:
                if name.startswith("linear (ragctx"):
                    at[name]["vs_fla"] = at["linear (fla-core chunk kernel)"]["ms"] / at[name]["ms"]
    rows.sort(key=lambda r: (r["op"], r["N"]))
    print(table(rows, ["op", "N", "ms", "tflops", "tokens_per_s", "peak_gib", "vs_best_sdpa", "vs_fla", "status"]))
    return rows


def _routes(fn, fla: bool = False, triton: bool = False):
    """Runs ``fn`` with only the named linear prefill routes on (neither: the pure-torch form)."""
    set_routes(fla=fla, triton=triton)
    try:
        return fn()
    finally:
        set_routes(fla=True, triton=True)


def set_routes(fla: bool, triton: bool) -> None:
    """Turns linear's GPU prefill routes on or off for what follows (the variables ragctx reads, caches cleared)."""
    os.environ["RAGCTX_FLA"], os.environ["RAGCTX_TRITON"] = ("1" if fla else "0"), ("1" if triton else "0")
    fla_kernel.cache_clear()
    triton_kernels.cache_clear()


# -- the model ---------------------------------------------------------------------------------------------
def bench_model(args) -> list[dict]:
    torch.manual_seed(0)
    cfg = ModelConfig.from_name("base100m", n_layers=args.layers, **({"chunk_size": args.model_chunk} if args.model_chunk else {}))
    model = Transformer(cfg).cuda().to(torch.bfloat16).eval()
    print(f"model: {cfg.n_params / 1e6:.1f}M parameters, {cfg.n_layers} layers, {cfg.n_heads} heads "
          f"({cfg.n_kv_heads} KV), head dim {cfg.head_dim}", flush=True)
    rows = []
    steps = args.decode_steps
    for variant in args.variants:
        # linear: every route (ragctx's Triton kernels first); linear:fla = fla-core's kernel; linear:torch = neither
        name, _, route = variant.partition(":")
        model.set_attention(name)
        set_routes(fla=route in ("", "fla"), triton=route == "")
        for n in [x * K for x in args.model_lengths]:
            ids = torch.randint(0, 256, (1, n), device="cuda")
            holder = {}

            def prefill():
                holder["states"] = model.new_states(1, n + steps + 1)
                holder["logits"] = model(ids, states=holder["states"], last_only=True)

            row = {"variant": variant, "N": n}
            try:
                with torch.inference_mode(), record_routes() as routes:
                    sec, mem = cuda_time(prefill, reps=2 if n >= 32 * K else 3)
                    row["prefill_route"] = ",".join(sorted(set(routes))) or None  # linear's routes, as they ran
                    states, tok = holder["states"], holder["logits"][:, -1].argmax(-1, keepdim=True)

                    def decode():
                        nonlocal tok
                        for i in range(steps):
                            tok = model(tok, positions=torch.tensor([[n + i]], device="cuda"),
                                        states=states)[:, -1].argmax(-1, keepdim=True)

                    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                    start.record()
                    decode()
                    end.record()
                    torch.cuda.synchronize()
                    dec = start.elapsed_time(end) / steps
                row.update(prefill_s=sec, prefill_tok_per_s=n / sec, peak_gib=mem / 2**30, decode_ms_per_token=dec,
                           status="ok")
            except torch.OutOfMemoryError:
                row["status"] = "OOM"
            holder.clear()
            torch.cuda.empty_cache()
            rows.append(row)
            print(table([row], list(row)), flush=True)
            if row["status"] != "ok" or row.get("prefill_s", 0) > args.max_prefill_s:
                break
    for variant in args.variants:
        mine = [r for r in rows if r["variant"] == variant and r["status"] == "ok"]
        s = slope([r["N"] for r in mine], [r["prefill_s"] for r in mine], min_n=8 * K)
        for r in mine:
            r["prefill_slope"] = s
    print(table(rows, ["variant", "N", "prefill_route", "prefill_s", "prefill_tok_per_s", "peak_gib",
                       "decode_ms_per_token", "prefill_slope", "status"]))
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--part", choices=["op", "model", "all"], default="all")
    p.add_argument("--out", default="eval/reports/attention")
    p.add_argument("--op-lengths", type=int, nargs="+", default=[1, 2, 4, 8, 16, 32, 64, 128], help="in K tokens")
    p.add_argument("--model-lengths", type=int, nargs="+", default=[1, 2, 4, 8, 16, 32, 64, 128])
    p.add_argument("--variants", nargs="+", default=["softmax", "flash", "linear", "sliding_window", "hybrid"])
    p.add_argument("--layers", type=int, default=16)
    p.add_argument("--window", type=int, default=1024)
    p.add_argument("--decode-steps", type=int, default=16)
    p.add_argument("--max-prefill-s", type=float, default=20.0, help="stop lengthening a variant past this")
    p.add_argument("--op-cases", nargs="+", default=[], help="only op cases whose name contains one of these")
    p.add_argument("--linear-chunks", type=int, nargs="+", default=[64, 128, 256], help="pure-torch linear chunk sizes")
    p.add_argument("--model-chunk", type=int, default=None, help="the model's linear chunk size (default: its preset's)")
    p.add_argument("--triton-configs", type=lambda s: tuple(map(int, s.split(":"))), nargs="*", default=[],
                   metavar="C:WARPS[:U]",
                   help="also time ragctx's Triton kernels with these chunk sizes, warps and scan unrolls "
                        "(U, default the kernels' own)")
    p.add_argument("--linear-compile", type=int, default=0, metavar="C",
                   help="also time pure-torch linear under torch.compile with chunk C (0: not)")
    args = p.parse_args()
    if not torch.cuda.is_available():
        sys.exit("bench_attention needs a CUDA GPU")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    env = environment()
    env["fla_core"] = fla_kernel() is not None
    env["triton"] = getattr(sys.modules.get("triton"), "__version__", None) if triton_kernels() else None
    print(json.dumps(env), flush=True)
    for part in ["op", "model"] if args.part == "all" else [args.part]:
        print(f"\n== {part} ==", flush=True)
        t = time.perf_counter()
        rows = bench_op(args) if part == "op" else bench_model(args)
        (out / f"{part}.json").write_text(json.dumps({"env": env, "args": vars(args), "rows": rows,
                                                      "seconds": time.perf_counter() - t}, indent=2))


if __name__ == "__main__":
    main()
