"""Linearized SmolLM2: train the deltas, then measure them beside the softmax model (issue 16).

    python eval/linearize_smollm2.py train --out /tmp/deltas            # hybrid, linear, mix (GPU: minutes)
    python eval/linearize_smollm2.py measure --out DIR [--variant NAME=SPEC ...] [--parts ppl,needles,speed]

``train`` writes one ``ragctx linearize`` run folder per variant (delta.safetensors, train.jsonl, summary.json)
and prints a table of tokens/s and final losses. ``measure`` evaluates every variant (default: the softmax model
as ``flash``, ``sliding_window`` with the hybrid's 64-token window, the untrained ``linear`` (elu) and ``hybrid``
(Taylor) switches, and the linearized ``smollm2-linear``, ``smollm2-hybrid``, ``smollm2-mix``) on:
- ppl: perplexity on held-out text (essays and Python help topics no training batch held), 1,024-token windows;
- needles: single, multikey and unanswerable needles in the essays at 1K/2K/4K/8K tokens, asked through the QA
  chat prompt, string match with a 95% Wilson interval (unanswerable: the answer says "unanswerable");
- speed: prefill seconds at 8K/32K/128K tokens and decode ms/token (32 new tokens) at 1K/8K/32K/128K, peak memory.
Writes ``DIR/linearized.json`` and prints one table per part. Real-question accuracy runs through ``ragctx eval``
(eval/configs/qa-essays-linearized-*.json).
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import random
import time
from pathlib import Path

import torch

from ragctx.generator import Generator
from ragctx.generator.linearize import LinearizeConfig, heldout_texts, linearize, perplexity
from ragctx.qa import CHAT_TEMPLATE
from ragctx.tasks import NeedleTask, string_match_all

VARIANTS = {  # name -> (generator spec, attention, options)
    "softmax (flash)": ("smollm2", "flash", {}),
    "sliding_window 64": ("smollm2", "sliding_window", {"window": 64}),
    "linear, untrained (elu)": ("smollm2", "linear", {}),
    "hybrid, untrained (taylor, 64)": ("smollm2", "hybrid", {"window": 64}),
    "linear (linearized)": ("smollm2-linear", None, {}),
    "hybrid (linearized)": ("smollm2-hybrid", None, {}),
    "mix (linearized)": ("smollm2-mix", None, {}),
}
RECIPES = {  # variant -> LinearizeConfig fields (the mix starts from the linear run's maps)
    "hybrid": dict(attention="hybrid", window=64),
    "linear": dict(attention="linear"),
    "mix": dict(attention="linear", layer_attention="flash,linear,linear,linear", transfer_steps=0),
}


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    if n == 0:
        return (0.0, 1.0)
    p = k / n
    den = 1 + z * z / n
    mid = (p + z * z / (2 * n)) / den
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / den
    return (max(0.0, mid - half), min(1.0, mid + half))


def cmd_train(args) -> None:
    out = Path(args.out)
    rows = []
    for name in args.variants.split(","):
        recipe = dict(RECIPES[name])
        recipe.setdefault("transfer_steps", args.transfer_steps)
        recipe["finetune_steps"] = args.finetune_steps
        recipe.update(seq_len=args.seq_len, batch=args.batch)
        if name == "mix":
            recipe["maps_from"] = str(out / "smollm2-linear")
        t0 = time.perf_counter()
        run = linearize("smollm2", LinearizeConfig(**recipe), out / f"smollm2-{name}", progress=False)
        log = [json.loads(line) for line in (out / f"smollm2-{name}" / "train.jsonl").read_text().splitlines()]
        last = {s: [r["loss"] for r in log if r["stage"] == s][-10:] for s in (1, 2)}
        rows.append({"variant": name, "seconds": time.perf_counter() - t0, **run.summary,
                     "first_loss": {s: next((r["loss"] for r in log if r["stage"] == s), None) for s in (1, 2)},
                     "last_loss": {s: (sum(v) / len(v) if v else None) for s, v in last.items()}})
        print(f"{name}: {rows[-1]['seconds']:.0f} s, stages {run.summary['stages']}", flush=True)
    (out / "train-summary.json").write_text(json.dumps(rows, indent=2, default=str))
    print(f"\n{'variant':<8} {'s':>5} {'stage1 tok/s':>12} {'stage2 tok/s':>12} {'transfer loss':>22} {'lm loss':>16}")
    for r in rows:
        st = {int(k): v for k, v in r["stages"].items()}
        print(f"{r['variant']:<8} {r['seconds']:>5.0f} {st.get(1, {}).get('tokens_per_s', 0):>12,.0f} "
              f"{st.get(2, {}).get('tokens_per_s', 0):>12,.0f} "
              f"{_fmt(r['first_loss'][1])} -> {_fmt(r['last_loss'][1]):>9} {_fmt(r['first_loss'][2])} -> "
              f"{_fmt(r['last_loss'][2])}")


def _fmt(x) -> str:
    return "-" if x is None else f"{x:.4g}"


def open_variant(spec: str, attention: str | None, options: dict, device: str) -> Generator:
    dtype = torch.bfloat16 if device == "cuda" else None
    gen = Generator.open(spec, attention=attention, device=device, dtype=dtype, **options)
    return gen


def needle_cells(gen, lengths, n, seed=0) -> list[dict]:
    task = NeedleTask("essays", seed=seed)
    per_token = 4.2  # bytes per SmolLM2 token in the essays (measured: 4.1-4.3); the prompt is then checked
    cells = []
    for length in lengths:
        for kind, unanswerable in (("single", False), ("multikey", False), ("single", True)):
            hits = 0
            tokens = []
            for i in range(n):
                budget = int(length * per_token)
                for _ in range(6):
                    ex = task.example(i, length=budget, kind=kind, unanswerable=unanswerable)
                    ids = gen.chat_prompt(CHAT_TEMPLATE.messages(ex.context, ex.question))
                    if len(ids) <= length:
                        break
                    budget = int(budget * length / len(ids) * 0.98)
                out = gen.generate(ids, max_new_tokens=40)
                if unanswerable:
                    hits += CHAT_TEMPLATE.refused(out.text)
                else:
                    hits += string_match_all(out.text, ex.answers) == 1.0
                tokens.append(len(ids))
            lo, hi = wilson(hits, n)
            cells.append({"length": length, "kind": "unanswerable" if unanswerable else kind, "n": n,
                          "accuracy": hits / n, "ci95": [lo, hi], "mean_tokens": sum(tokens) / len(tokens)})
    return cells


def speed(gen, device, prefill_lengths, decode_lengths, new=32) -> dict:
    gen.with_context(max(prefill_lengths + decode_lengths) + new + 8)
    rng = random.Random(0)
    out = {"prefill_s": {}, "decode_ms_per_token": {}, "peak_bytes": {}}
    for length in sorted(set(prefill_lengths + decode_lengths)):
        ids = [rng.randrange(100, 40000) for _ in range(length)]
        if device == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        gen.generate(ids[:256], max_new_tokens=4)  # warm-up at this shape family
        res = gen.generate(ids, max_new_tokens=new if length in decode_lengths else 1)
        if length in prefill_lengths:
            out["prefill_s"][length] = res.prefill_s
        if length in decode_lengths:
            out["decode_ms_per_token"][length] = 1e3 * res.decode_s / max(1, len(res.tokens))
        if device == "cuda":
            out["peak_bytes"][length] = torch.cuda.max_memory_allocated()
    return out


def cmd_measure(args) -> None:
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    variants = dict(VARIANTS)
    for extra in args.variant or []:
        name, spec = extra.split("=", 1)
        variants[name] = (spec, None, {})
    if args.only:
        variants = {k: v for k, v in variants.items() if any(o in k for o in args.only.split(","))}
    parts = args.parts.split(",")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "linearized.json"
    results = json.loads(path.read_text()) if path.exists() else {}
    results["meta"] = {"device": torch.cuda.get_device_name() if device == "cuda" else f"{platform.machine()} CPU",
                       "torch": torch.__version__, "date": time.strftime("%Y-%m-%d"),
                       "threads": torch.get_num_threads()}
    texts = heldout_texts()
    for name, (spec, attention, options) in variants.items():
        t0 = time.perf_counter()
        gen = open_variant(spec, attention, options, device)
        row = results.setdefault(name, {})
        row["spec"], row["attention"] = spec, gen.attention
        row["layer_attention"] = gen.model.cfg.layer_attention
        if "ppl" in parts:
            row["ppl"] = perplexity(gen, texts, seq_len=1024, max_tokens=args.ppl_tokens)
        if "needles" in parts and "untrained" not in name:
            row["needles"] = needle_cells(gen, [int(x) for x in args.needle_lengths.split(",")], args.n)
        if "speed" in parts and "untrained" not in name:
            row["speed"] = speed(gen, device, [int(x) for x in args.prefill.split(",")],
                                 [int(x) for x in args.decode.split(",")])
        row["seconds"] = time.perf_counter() - t0
        path.write_text(json.dumps(results, indent=2))
        print(f"{name}: {row['seconds']:.0f} s", flush=True)
        del gen
        if device == "cuda":
            torch.cuda.empty_cache()
    print_tables(results)


def print_tables(results: dict) -> None:
    rows = {k: v for k, v in results.items() if k != "meta"}
    print(f"\n{results['meta']}")
    print(f"\n{'variant':<32} {'perplexity':>10}")
    for k, v in rows.items():
        if "ppl" in v:
            print(f"{k:<32} {v['ppl']['perplexity']:>10.2f}")
    if any("needles" in v for v in rows.values()):
        print(f"\n{'variant':<24} {'length':>6} {'single':>16} {'multikey':>16} {'unanswerable':>16}")
        for k, v in rows.items():
            by = {}
            for c in v.get("needles", []):
                by.setdefault(c["length"], {})[c["kind"]] = c
            for length, cells in sorted(by.items()):
                fmt = [f"{c['accuracy']:.2f} [{c['ci95'][0]:.2f},{c['ci95'][1]:.2f}]" for c in
                       (cells.get("single"), cells.get("multikey"), cells.get("unanswerable")) if c]
                print(f"{k[:24]:<24} {length:>6} " + " ".join(f"{f:>16}" for f in fmt))
    if any("speed" in v for v in rows.values()):
        print(f"\n{'variant':<24} {'prefill s @ length':<40} {'decode ms/token @ length':<44} {'peak GB'}")
        for k, v in rows.items():
            s = v.get("speed")
            if s:
                pre = " ".join(f"{int(n) // 1024}K:{t:.3f}" for n, t in s["prefill_s"].items())
                dec = " ".join(f"{int(n) // 1024}K:{t:.1f}" for n, t in s["decode_ms_per_token"].items())
                peak = max(s["peak_bytes"].values(), default=0) / 1e9
                print(f"{k[:24]:<24} {pre:<40} {dec:<44} {peak:.2f}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("train")
    t.add_argument("--out", required=True)
    t.add_argument("--variants", default="hybrid,linear,mix")
    t.add_argument("--transfer-steps", type=int, default=300)
    t.add_argument("--finetune-steps", type=int, default=150)
    t.add_argument("--seq-len", type=int, default=1024)
    t.add_argument("--batch", type=int, default=8)
    m = sub.add_parser("measure")
    m.add_argument("--out", required=True)
    m.add_argument("--variant", action="append", help="NAME=SPEC: another generator (e.g. a run folder)")
    m.add_argument("--only", default=None, help="comma-separated substrings of the variant names to run")
    m.add_argument("--parts", default="ppl,needles,speed")
    m.add_argument("--device", default=None)
    m.add_argument("--n", type=int, default=12)
    m.add_argument("--needle-lengths", default="1024,2048,4096,8000")
    m.add_argument("--ppl-tokens", type=int, default=40_000)
    m.add_argument("--prefill", default="8192,32768,131072")
    m.add_argument("--decode", default="1024,8192,32768,131072")
    args = p.parse_args()
    cmd_train(args) if args.cmd == "train" else cmd_measure(args)


if __name__ == "__main__":
    main()
