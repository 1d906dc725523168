"""Measures the built-in generators on fresh needle examples: accuracy per length and kind with bootstrap 95%
confidence intervals, `unanswerable` recall and false-`unanswerable` rate, on the training haystack (essays) and
on one the models never saw (repeated filler sentences).

    python eval/eval_builtin.py --out eval/reports/builtin                      # the committed report (CPU, ~1 h)
    python eval/eval_builtin.py --models softmax --lengths 1024 -n 5 --out /tmp/x   # a quick look

Examples come from a seed no training run used (training: 0, 3, 5; its evaluations: seed + 1), so every example
is new to every model. Writes ``results.jsonl`` (one row per example; reruns skip rows already there),
``summary.json`` and ``report.md``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ragctx.evaluation.metrics import bootstrap_ci  # noqa: E402
from ragctx.generator import Generator  # noqa: E402
from ragctx.generator.attention import same_weights  # noqa: E402
from ragctx.generator.train import answer_needle  # noqa: E402
from ragctx.tasks import NeedleTask, string_match_all  # noqa: E402
from ragctx.tasks.needles import kinds_for  # noqa: E402

SEED = 100


def plan(models, lengths, n, haystacks, kinds_at, unanswerable_n, long_from):
    """(model, haystack, length, kind, unanswerable, index) for every example to run."""
    for model in models:
        for haystack in haystacks:
            for length in lengths:
                kinds = ["single"] + [k for k in kinds_for(length) if k != "single" and length in kinds_at]
                for kind in kinds:
                    count = n if length < long_from else max(1, n * 2 // 3)
                    for i in range(count):
                        yield model, haystack, length, kind, False, i
                for i in range(unanswerable_n if length < long_from else max(1, unanswerable_n // 3)):
                    yield model, haystack, length, "single", True, i


def summarize(rows: list[dict]) -> list[dict]:
    """One line per (model, haystack, length, kind): accuracy with its CI; and per (model, haystack, length):
    unanswerable recall and false-unanswerable rate."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["model"], r["haystack"], r["length"], r["kind"] if r["answerable"] else "unanswerable"),
                          []).append(r)
    out = []
    for (model, haystack, length, kind), rs in sorted(groups.items()):
        mean, lo, hi = bootstrap_ci([r["score"] for r in rs])
        line = {"model": model, "haystack": haystack, "length": length, "kind": kind, "n": len(rs),
                "accuracy": mean, "ci_low": lo, "ci_high": hi}
        if kind != "unanswerable":
            line["false_unanswerable"] = sum(r["said_unanswerable"] for r in rs) / len(rs)
        out.append(line)
    return out


def write_report(summary: list[dict], folder: Path, meta: dict) -> None:
    lines = ["# Built-in generators on fresh needle examples", "",
             f"Measured on {meta['device']} (torch {meta['torch']}), `python eval/eval_builtin.py`, on "
             + "; ".join(f"{m} {d}" for m, d in meta["dates"].items()) + ". "
             f"Examples from seed {SEED}, new to every model. Accuracy is RULER's string-match-all, with a bootstrap "
             "95% interval; softmax models run through `flash` (the same function, tested equal) to keep 16K-byte inputs fast on a CPU; for `unanswerable` rows, accuracy is the recall of `unanswerable`; `false unans.` is the "
             "share of answerable questions answered `unanswerable`.", "",
             "| model | haystack | length (bytes) | kind | n | accuracy | 95% CI | false unans. |",
             "| --- | --- | ---: | --- | ---: | ---: | --- | ---: |"]
    for s in summary:
        fu = f"{s['false_unanswerable']:.2f}" if "false_unanswerable" in s else ""
        lines.append(f"| {s['model']} | {s['haystack']} | {s['length']} | {s['kind']} | {s['n']} | "
                     f"{s['accuracy']:.2f} | {s['ci_low']:.2f}-{s['ci_high']:.2f} | {fu} |")
    (folder / "report.md").write_text("\n".join(lines) + "\n")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True)
    p.add_argument("--models", nargs="+", default=["softmax", "sliding_window", "hybrid", "linear"],
                   help="built-in names, or NAME=FOLDER for a trained model that is not shipped yet")
    p.add_argument("--lengths", nargs="+", type=int, default=[512, 1024, 2048, 4096, 8192, 16384])
    p.add_argument("--haystacks", nargs="+", default=["essays", "repeat"])
    p.add_argument("-n", type=int, default=30, help="answerable examples per cell (2/3 of it from --long-from)")
    p.add_argument("--unanswerable", type=int, default=30, help="unanswerable examples per length (1/3 from --long-from)")
    p.add_argument("--kinds-at", nargs="*", type=int, default=[1024, 4096], help="lengths that also run every kind")
    p.add_argument("--long-from", type=int, default=8192)
    p.add_argument("--max-length", nargs="*", default=[], help="MODEL=BYTES: skip longer examples for a slow model")
    p.add_argument("--device", default=None)
    p.add_argument("--report-only", action="store_true",
                   help="rewrite summary.json and report.md from results.jsonl without running anything")
    args = p.parse_args()
    folder = Path(args.out)
    folder.mkdir(parents=True, exist_ok=True)
    results = folder / "results.jsonl"
    rows = [json.loads(line) for line in results.read_text().splitlines()] if results.exists() else []
    done = {(r["model"], r["haystack"], r["length"], r["kind"], not r["answerable"], r["index"]) for r in rows}
    caps = {m: int(b) for m, b in (x.split("=") for x in args.max_length)}
    folders = dict(m.split("=", 1) for m in args.models if "=" in m)  # NAME=FOLDER: a candidate not shipped yet
    args.models = [m.split("=", 1)[0] for m in args.models]
    todo = [] if args.report_only else [
        t for t in plan(args.models, args.lengths, args.n, args.haystacks, set(args.kinds_at), args.unanswerable,
                        args.long_from) if t not in done and t[2] <= caps.get(t[0], 1 << 30)]
    gens, tasks = {}, {}
    started = time.perf_counter()
    with open(results, "a") as log:
        for j, (model, haystack, length, kind, unans, i) in enumerate(todo):
            if model not in gens:
                gens[model] = Generator.load(folders.get(model, f"builtin:{model}"), device=args.device)
                faster = same_weights(gens[model].attention)  # softmax runs as flash: the same function, no N x N
                if faster:
                    gens[model].set_attention(faster[0])
            task = tasks.setdefault(haystack, NeedleTask(haystack, seed=SEED))
            ex = task.example(i, length=length, kind=kind, unanswerable=unans)
            pred = answer_needle(gens[model], ex)
            row = {"model": model, "haystack": haystack, "length": length, "kind": kind, "answerable": not unans,
                   "index": i, "depth": ex.depth, "prediction": pred, "target": ex.target,
                   "score": string_match_all(pred, ex.answers), "said_unanswerable": "unanswerable" in pred.lower(),
                   "date": time.strftime("%Y-%m-%d")}
            rows.append(row)
            log.write(json.dumps(row) + "\n")
            log.flush()
            if j % 20 == 0:
                print(f"{j + 1}/{len(todo)} {model} {haystack} {length} {kind} "
                      f"({time.perf_counter() - started:.0f} s)", flush=True)
    import torch

    summary = summarize(rows)
    device = torch.cuda.get_device_name() if torch.cuda.is_available() and args.device != "cpu" else "CPU"
    # rows accumulate across runs (a model's rows are redone when its weights change): each model's own dates
    dates = {m: "/".join(sorted({r.get("date", "undated") for r in rows if r["model"] == m}))
             for m in sorted({r["model"] for r in rows})}
    meta = {"date": time.strftime("%Y-%m-%d"), "dates": dates, "device": device, "torch": torch.__version__}
    (folder / "summary.json").write_text(json.dumps({"meta": meta, "rows": summary}, indent=1))
    write_report(summary, folder, meta)
    for s in summary:
        print(f"{s['model']:>14} {s['haystack']:>6} {s['length']:>6} {s['kind']:>12} n={s['n']:>3} "
              f"{s['accuracy']:.2f} [{s['ci_low']:.2f}, {s['ci_high']:.2f}]")


if __name__ == "__main__":
    main()
