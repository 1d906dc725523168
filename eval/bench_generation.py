"""Generation speed of a real model: ragctx against transformers on the same weights, in one run.

    python eval/bench_generation.py --out eval/reports/generation            # the packaged SmolLM2, CPU or GPU
    python eval/bench_generation.py --model path/to/model.gguf --lengths 1024 4096 8192 --new 128

Both load the same GGUF file (transformers through ``from_pretrained(dir, gguf_file=...)``, which dequantizes to
fp32; on a GPU both run in bf16). Prompts are the packaged essays cut to each length in the model's tokens; every
run decodes ``--new`` tokens greedily with no stop (transformers: ``min_new_tokens`` = ``max_new_tokens``).
Prefill tokens/s = prompt tokens / time to the first token; decode tokens/s = (new - 1) / the rest. Each number is
the median of ``--repeat`` runs after one warm-up. Writes ``<out>/generation-<device>-<date>.json`` and prints a
table. Compare ratios within one run only.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from eval._common import (  # noqa: E402
    environment,
    essays_ids,
    save_json,
    table,
    time_ragctx,
    time_transformers,
)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="smollm2", help="a packaged model name or a .gguf file (default smollm2)")
    p.add_argument("--lengths", type=int, nargs="+", default=[512, 1024, 2048])
    p.add_argument("--new", type=int, default=64, help="tokens decoded per run")
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--device", default=None)
    p.add_argument("--attentions", nargs="+", default=["flash"], help="ragctx attentions to time")
    p.add_argument("--static", action="store_true", help="also time transformers' static (compiled) cache (GPU)")
    p.add_argument("--out", default=None, help="folder for the JSON")
    args = p.parse_args(argv)

    from transformers import AutoModelForCausalLM

    from ragctx.generator import Generator
    from ragctx.generator.checkpoints import PACKAGED, packaged_path

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
    path = packaged_path(args.model) if args.model in PACKAGED else Path(args.model)
    t = time.perf_counter()
    gen = Generator.from_pretrained(path, attention=args.attentions[0], device=device, dtype=dtype)
    load_ragctx = time.perf_counter() - t
    t = time.perf_counter()
    theirs = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name)
    theirs = theirs.to(device=device, dtype=dtype).eval()
    load_transformers = time.perf_counter() - t
    rows = []
    for n in args.lengths:
        ids = essays_ids(gen.tokenizer, n)
        engines = [(f"ragctx {a}", lambda ids, a=a: (gen.set_attention(a), time_ragctx(gen, ids, args.new, device))[1])
                   for a in args.attentions]
        engines.append(("transformers dynamic cache", lambda ids: time_transformers(theirs, ids, args.new, device)))
        if args.static:
            engines.append(("transformers static cache", lambda ids: time_transformers(
                theirs, ids, args.new, device, cache_implementation="static")))
        for name, fn in engines:
            fn(ids)  # warm-up (kernel choice, compile)
            runs = [fn(ids) for _ in range(args.repeat)]
            prefill = statistics.median(r[0] for r in runs)
            decode = statistics.median(r[1] for r in runs)
            rows.append({"engine": name, "prompt_tokens": n, "new_tokens": args.new, "prefill_s": prefill,
                         "prefill_tok_s": n / prefill, "decode_ms_per_token": 1e3 * decode / (args.new - 1),
                         "decode_tok_s": (args.new - 1) / decode})
            print(table(rows[-1:], list(rows[-1])), flush=True)
    result = {"env": {**environment(), "device": device, "dtype": str(dtype), "model": str(path),
                      "transformers": __import__("transformers").__version__,
                      "threads": torch.get_num_threads()},
              "load_s": {"ragctx": load_ragctx, "transformers": load_transformers}, "rows": rows}
    print("\n" + table(rows, ["engine", "prompt_tokens", "prefill_tok_s", "decode_tok_s", "decode_ms_per_token"]))
    print(f"load: ragctx {load_ragctx:.1f} s, transformers {load_transformers:.1f} s")
    if args.out:
        save_json(args.out, f"generation-{'gpu' if device.startswith('cuda') else 'cpu'}", result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
