"""Measures the built-in generators on fresh needle examples: the grid eval/configs/builtin-needles.json, run by the
evaluation runner (mode ``direct``: each model answers the example's own prompt) and reported by its report writer.

    python eval/eval_builtin.py                                   # the committed report: eval/reports/builtin, ~1 h
    python eval/eval_builtin.py --smoke --out /tmp/builtin        # a quick look: two models, 512 bytes, a few examples
    python eval/eval_builtin.py --generator eval/runs/x/model --attentions linear --out /tmp/x   # a candidate model
    python eval/eval_builtin.py --report-only                     # summary.json, report.md again from the rows
    python eval/eval_builtin.py --migrate eval/reports/builtin    # rows of this script before 2026-12-07 -> runner rows

The same as ``ragctx eval eval/configs/builtin-needles.json``; this script adds the smoke grid, the overrides and
the migration. Reruns skip the trials already in the folder (the runner's resume key).
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ragctx.evaluation.report import write_report  # noqa: E402
from ragctx.evaluation.results import result_files, trial_id  # noqa: E402
from ragctx.evaluation.runner import load_config, run_eval  # noqa: E402

CONFIG = Path(__file__).resolve().parent / "configs" / "builtin-needles.json"
SMOKE = {"attentions": ["flash", "sliding_window"], "haystack": ["repeat"],
         "parts": [{"lengths": [512], "kinds": ["single"], "examples": 2},
                   {"lengths": [512], "kinds": ["single"], "unanswerable_seeds": [100], "examples": 1}]}


def migrate(folder: Path, generator: str = "builtin") -> int:
    """Rewrites the rows this script wrote before it ran on the evaluation runner (``model``, ``index``, ``score``,
    ``said_unanswerable``, ``target``) as the runner's rows, the trials of builtin-needles.json; a folder of runner
    rows is left as it is. Also writes ``runs.jsonl`` from the old summary's machine header. Returns the rows
    rewritten."""
    path = folder / "results.jsonl"
    old = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    if not old or "model" not in old[0]:
        return 0
    seed = json.loads(CONFIG.read_text())["seeds"][0]
    rows = []
    for r in old:
        trial = {"length": r["length"], "depth": None, "kind": r["kind"], "seed": seed,
                 "unanswerable": not r["answerable"], "chunk_tokens": None, "overlap": None,
                 "attention": "flash" if r["model"] == "softmax" else r["model"],  # softmax ran through flash
                 "mode": "direct", "k": None, "generator": generator, "haystack": r["haystack"], "index": r["index"]}
        rows.append({"id": trial_id(trial), **trial, "status": "ok", "prediction": r["prediction"],
                     "answers": r["target"].strip().split(", "), "route": "direct", "accuracy": r["score"],
                     "refused": r["said_unanswerable"], "retrieval_recall": None, "date": r["date"]})
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    summary = folder / "summary.json"
    meta = json.loads(summary.read_text()).get("meta") if summary.is_file() else None
    if meta:
        (folder / "runs.jsonl").write_text(json.dumps(
            {"date": meta["date"], "config": "eval/eval_builtin.py before the runner (rows migrated)",
             "trials": len(rows), "device": meta["device"], "torch": meta["torch"]}) + "\n")
    return len(rows)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=None, help="run folder (default: the config's, eval/reports/builtin)")
    p.add_argument("--smoke", action="store_true", help="a tiny grid: two models, 512 bytes, three examples each")
    p.add_argument("--generator", default=None, help="a model folder instead of the built-in ones")
    p.add_argument("--attentions", nargs="+", default=None, help="the attentions (built-in models) to measure")
    p.add_argument("--device", default=None)
    p.add_argument("--report-only", action="store_true", help="rewrite summary.json and the report from the rows")
    p.add_argument("--migrate", metavar="FOLDER", default=None,
                   help="rewrite a folder of this script's old rows as runner rows, then its report")
    args = p.parse_args(argv)
    if args.migrate:
        folder = Path(args.migrate)
        print(f"{folder}: {migrate(folder, args.generator or 'builtin')} rows migrated")
        write_report(folder)
        return 0
    cfg = load_config(CONFIG)
    if args.smoke:
        cfg = replace(cfg, **SMOKE)
    cfg = replace(cfg, out=args.out or cfg.out, device=args.device, generator=args.generator or cfg.generator,
                  attentions=args.attentions or cfg.attentions)
    if args.report_only:
        if not result_files(cfg.out):
            raise SystemExit(f"{cfg.out}: no results yet; run without --report-only first")
        write_report(cfg.out)
    else:
        run_eval(cfg)
    print((Path(cfg.out) / "report.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
