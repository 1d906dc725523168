"""Diagnostics for the questions the benchmarks left open (eval/reports/NOTES.md, third session), to run on the GPU:

    python eval/probe_gpu.py --out $OUT                 # all three probes, one JSON per probe under --out
    python eval/probe_gpu.py --probe taylor-step --smoke   # tiny sizes on a CPU, to check the script runs

- ``linear-profile``: where the ~14 ms per layer of the 100M model's linear prefill at 128K goes (the attention op
  alone is ~5 ms): torch.profiler over one prefill, top operators by device time.
- ``taylor-step``: forward + backward of Based's Taylor feature map plus chunkwise linear attention at the built-in
  models' training shape (131072 bytes per step, 8 query / 2 KV heads of 32), for four ways of building the
  second-order features: the current one (the 528 upper-triangle products picked out of the outer product, one
  index each), the gather used until 2026-12-01 (x[..., i] * x[..., j]: each index repeated 33 times, so its
  backward scatters with colliding atomic adds), the full 1024-wide outer product (twice the features), and the
  outer product times a fixed 1024 x 528 selection matrix. Training with the gather ran ~13x slower per byte than
  softmax.
- ``flash-shapes``: prefill time of builtin:softmax under ``flash`` (bf16) for lengths 1K-32K, under PyTorch's
  default SDPA dispatch and with FlashAttention forced: per length, call 1 at that length, call 2 at the same
  length again, call 3 at a length 7 tokens shorter (a new shape, but the same bucket of ``flash.bucket``). The
  GPU grid saw a flat ~60 ms from 2.4K to 32K tokens: cuDNN planning each new shape (2026-12-01: 85-95 ms on
  call 1, 5 ms on call 2); call 3 says whether the length buckets spare a new prompt length that cost.

Each probe prints a table and writes ``<out>/<probe>.json`` with the environment.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from eval._common import cuda_time, environment, table  # noqa: E402
from ragctx.generator.attention.common import group_q, ungroup  # noqa: E402
from ragctx.generator.attention.linear import feature_map, linear_chunkwise, normalize  # noqa: E402

K = 1024


def timed(fn, device: str, reps: int = 3) -> tuple[float, float | None]:
    """(median seconds, peak bytes allocated above the start) of fn() after one warm-up call: the benchmarks'
    CUDA-event timer on a GPU; wall clock and no peak (None) on a CPU."""
    if device == "cuda":
        return cuda_time(fn, reps)
    fn()
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times), None


# -- taylor-step -------------------------------------------------------------------------------------------
def _taylor_gather(x):
    d = x.shape[-1]
    x = x / d**0.25
    i, j = torch.triu_indices(d, d, device=x.device)
    w = torch.where(i == j, 1 / math.sqrt(2), 1.0).to(x.dtype)
    return torch.cat([torch.ones_like(x[..., :1]), x, x[..., i] * x[..., j] * w], -1)


def _taylor_outer(x):
    d = x.shape[-1]
    x = x / d**0.25
    outer = (x[..., :, None] * x[..., None, :]).flatten(-2) / math.sqrt(2)  # sum_ij x_i x_j y_i y_j / 2 = (x.y)^2/2
    return torch.cat([torch.ones_like(x[..., :1]), x, outer], -1)


def _taylor_selected(x, sel):
    d = x.shape[-1]
    x = x / d**0.25
    outer = (x[..., :, None] * x[..., None, :]).flatten(-2)
    return torch.cat([torch.ones_like(x[..., :1]), x, outer @ sel], -1)


def _selection(d: int, device, dtype):
    """[d*d, d(d+1)/2]: picks (and weighs) the upper-triangle products out of the flattened outer product."""
    i, j = torch.triu_indices(d, d)
    sel = torch.zeros(d * d, len(i))
    sel[i * d + j, torch.arange(len(i))] = torch.where(i == j, 1 / math.sqrt(2), 1.0)
    return sel.to(device=device, dtype=dtype)


def probe_taylor_step(args, device) -> list[dict]:
    tokens, hq, hkv, d = (4096, 4, 2, 16) if args.smoke else (131072, 8, 2, 32)
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    sel = _selection(d, device, dtype)
    ways = {"outer + index_select (current)": lambda x: feature_map(x, "taylor"), "gather (before)": _taylor_gather,
            "outer product (full d^2)": _taylor_outer, "outer @ selection matrix": lambda x: _taylor_selected(x, sel)}
    rows = []
    for length in ([512, 2048] if args.smoke else [512, 4096, 16384]):
        b = tokens // length
        g = torch.Generator(device=device).manual_seed(length)
        q, k, v = (torch.randn(b, h, length, d, device=device, dtype=dtype, generator=g) for h in (hq, hkv, hkv))
        for name, phi in ways.items():
            qq, kk, vv = (x.clone().requires_grad_() for x in (q, k, v))

            def step():
                num, den, _ = linear_chunkwise(group_q(phi(qq), hkv), phi(kk), vv, None, 64)
                out = ungroup(normalize(num, den))
                out.float().square().mean().backward()

            try:
                sec, peak = timed(step, device)
                rows.append({"length": length, "features": name, "F": phi(q[:1, :1, :1]).shape[-1],
                             "ms_fwd_bwd": sec * 1e3, "bytes_per_s": tokens / sec,
                             "peak_gib": None if peak is None else peak / 2**30})
            except torch.OutOfMemoryError:
                rows.append({"length": length, "features": name, "status": "OOM"})
            if device == "cuda":
                torch.cuda.empty_cache()
    print(table(rows, ["length", "features", "F", "ms_fwd_bwd", "bytes_per_s", "peak_gib"]))
    return rows


# -- flash-shapes ------------------------------------------------------------------------------------------
def probe_flash_shapes(args, device) -> list[dict]:
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from ragctx.generator import Generator

    gen = Generator.load("builtin:softmax", attention="flash", device=device,
                         dtype=torch.bfloat16 if device == "cuda" else None).with_context(40000)
    model = gen.model
    rows = []
    for backend in ("default", "FLASH_ATTENTION"):
        for base in ([300, 700] if args.smoke else [1000, 2000, 2400, 3000, 4000, 8000, 16000, 32000]):
            for call, n in ((1, base), (2, base), (3, base - 7)):  # call 3: a new length in the same bucket
                ids = torch.randint(0, 256, (1, n), device=device)

                def prefill():
                    states = model.new_states(1, n + 48)
                    model(ids, states=states, last_only=True)

                with torch.inference_mode():
                    if backend == "default":
                        sec = _once(prefill, device)
                    else:
                        with sdpa_kernel([getattr(SDPBackend, backend)]):
                            sec = _once(prefill, device)
                rows.append({"backend": backend, "N": n, "call": call, "ms": sec * 1e3})
    print(table(rows, ["backend", "N", "call", "ms"]))
    return rows


def _once(fn, device) -> float:
    if device == "cuda":
        torch.cuda.synchronize()
    t = time.perf_counter()
    fn()
    if device == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t


# -- linear-profile ----------------------------------------------------------------------------------------
def probe_linear_profile(args, device) -> list[dict]:
    from torch.profiler import ProfilerActivity, profile

    from ragctx.generator.config import ModelConfig
    from ragctx.generator.model import Transformer

    torch.manual_seed(0)
    cfg = ModelConfig.from_name("tiny" if args.smoke else "base100m", attention="linear")
    model = Transformer(cfg).to(device)
    if device == "cuda":
        model = model.to(torch.bfloat16)
    model.eval()
    n = 2048 if args.smoke else 128 * K
    ids = torch.randint(0, 256, (1, n), device=device)

    def prefill():
        with torch.inference_mode():
            model(ids, states=model.new_states(1, n + 1), last_only=True)

    total, _ = timed(prefill, device)  # its warm-up call also compiles what the profile should not see
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device == "cuda" else [])
    with profile(activities=acts) as prof:
        prefill()
        if device == "cuda":
            torch.cuda.synchronize()
    key = "self_device_time_total" if device == "cuda" else "self_cpu_time_total"  # self: no double counting
    events = sorted(prof.key_averages(), key=lambda e: getattr(e, key, 0.0), reverse=True)[:25]
    rows = [{"op": e.key[:60], "calls": e.count, "ms": getattr(e, key, 0.0) / 1e3} for e in events]
    print(f"prefill of {n} tokens, {cfg.n_layers} layers: {total * 1e3:.1f} ms")
    print(table(rows, ["op", "calls", "ms"]))
    return [{"prefill_ms": total * 1e3, "N": n, "layers": cfg.n_layers}] + rows


PROBES = {"linear-profile": probe_linear_profile, "taylor-step": probe_taylor_step, "flash-shapes": probe_flash_shapes}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--probe", nargs="+", choices=sorted(PROBES), default=sorted(PROBES))
    p.add_argument("--out", default="eval/runs/probes")
    p.add_argument("--smoke", action="store_true", help="tiny sizes, CPU allowed: checks that the script runs")
    args = p.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cpu" and not args.smoke:
        sys.exit("probe_gpu needs a CUDA GPU (or --smoke for a CPU check)")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    env = environment()
    print(json.dumps(env), flush=True)
    for name in args.probe:
        print(f"\n== {name} ==", flush=True)
        rows = PROBES[name](args, device)
        (out / f"{name}.json").write_text(json.dumps({"env": env, "smoke": args.smoke, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
