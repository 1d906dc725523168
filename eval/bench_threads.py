"""CPU threads when embedding (ONNX Runtime) and generating (torch) in one process: which settings oversubscribe.

    python eval/bench_threads.py --out eval/reports/threads

Each setting runs in a fresh process (a thread pool's size is fixed once it starts): torch's intra-op threads,
ONNX Runtime's intra-op threads, and whether ORT's idle threads spin. It times a one-query embedding
(``encode_query``, median of 30), a decode step of the packaged SmolLM2 (flash, 256-token prompt, 32 greedy
tokens, median of 3) alone, and the QA pattern: an embedding immediately followed by the generation (ORT's threads
still spinning while torch decodes). Other processes on the machine change these numbers a lot (an OpenMP team
waits for its slowest thread): run it on a quiet machine, or read the spread. Prints a table and writes ``<out>/threads-cpu-<date>.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

SETTINGS = [  # (label, torch threads, ORT threads, ORT spinning); 0 = torch's / ORT's own default (one per core)
    ("torch 2, ort default spinning", 0, 0, True),
    ("torch 1, ort default", 1, 0, True),
    ("torch 2, ort 2 spinning", 2, 2, True),
    ("torch 2, ort 2 no spin", 2, 2, False),
    ("torch 2, ort 1 no spin", 2, 1, False),
    ("torch 1, ort 1 no spin", 1, 1, False),
]


def measure(torch_threads: int, ort_threads: int, spin: bool) -> dict:
    """One setting, in this process."""
    import onnxruntime as ort
    import torch

    from ragctx import embeddings, threads
    from ragctx.generator import Generator

    def options(_threads=None):  # replaces ragctx's session options with this setting's
        opts = ort.SessionOptions()
        if ort_threads:
            opts.intra_op_num_threads = ort_threads
        opts.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin else "0")
        return opts

    threads.onnx_session_options = options
    emb = embeddings.OnnxEmbedder()
    query = "what did the author work on before college?"
    emb.encode_query(query)
    times = []
    for _ in range(30):
        t = time.perf_counter()
        emb.encode_query(query)
        times.append(time.perf_counter() - t)
    gen = Generator.from_pretrained("smollm2", device="cpu")  # applies ragctx's default; this setting's follows
    torch.set_num_threads(torch_threads or os.cpu_count() or 1)
    gen.tokenizer.eos_ids = set()
    ids = list(range(1000, 1256))
    gen.generate(ids, max_new_tokens=4)

    def decode_ms(embed_first: bool) -> float:
        runs = []
        for _ in range(3):
            if embed_first:
                emb.encode_query(query)
            r = gen.generate(ids, max_new_tokens=32)
            runs.append(1e3 * r.decode_s / 31)
        return statistics.median(runs)

    return {"torch_threads": torch.get_num_threads(), "ort_threads": ort_threads or "default", "ort_spinning": spin,
            "embed_query_ms": 1e3 * statistics.median(times), "decode_ms_per_token": decode_ms(False),
            "decode_after_embed_ms_per_token": decode_ms(True)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=None, help="folder for the JSON")
    p.add_argument("--one", nargs=3, type=int, metavar=("TORCH", "ORT", "SPIN"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.one:  # a child process: one setting, JSON on stdout
        print(json.dumps(measure(args.one[0], args.one[1], bool(args.one[2]))))
        return 0
    from eval._common import environment, table

    rows = []
    env = {k: v for k, v in os.environ.items() if k != "RAGCTX_THREADS"}
    for label, t, o, spin in SETTINGS:
        done = subprocess.run([sys.executable, __file__, "--one", str(t), str(o), str(int(spin))], env=env,
                              capture_output=True, text=True, check=True)
        rows.append({"setting": label, **json.loads(done.stdout.strip().splitlines()[-1])})
        print(table(rows[-1:], list(rows[-1])), flush=True)
    cols = ["setting", "torch_threads", "ort_threads", "ort_spinning", "embed_query_ms", "decode_ms_per_token",
            "decode_after_embed_ms_per_token"]
    print("\n" + table(rows, cols))
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        info = environment()
        path = out / f"threads-cpu-{info['date']}.json"
        path.write_text(json.dumps({"env": {**info, "cores": os.cpu_count()}, "rows": rows}, indent=2))
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
