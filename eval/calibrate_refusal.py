"""Calibrates QA's refusal threshold on a development run: the model's probability of answering with the refusal
word (``refusal_probability``, recorded for every QA-file trial) against whether the question was answerable.

    python eval/calibrate_refusal.py eval/runs/qa-essays-dev --mode rag --max-false-refusal 0.1

Prints refusal recall and false-refusal rate at each candidate threshold (a refusal: the word was written, or the
probability reached the threshold), the ROC AUC of the probability, and the threshold chosen: the lowest whose
false-refusal rate stays at or under the target. Writes ``<run>/refusal-calibration.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from eval._common import auc, table  # noqa: E402
from ragctx.evaluation.results import read_rows  # noqa: E402
from ragctx.qa import PromptTemplate  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", help="a QA-file run folder")
    p.add_argument("--mode", default="rag")
    p.add_argument("--max-false-refusal", type=float, default=0.1)
    args = p.parse_args(argv)
    rows = read_rows(args.run)
    rows = [r for r in rows if r.get("status") == "ok" and r["mode"] == args.mode and r.get("refusal_probability")
            is not None]
    if not rows:
        raise SystemExit(f"{args.run}: no finished '{args.mode}' trials with a refusal probability")
    said = PromptTemplate().refused
    unanswerable = [r for r in rows if not r["answers"]]
    answerable = [r for r in rows if r["answers"]]
    probs = sorted({r["refusal_probability"] for r in rows})
    table_rows = []
    for t in [*probs, float("inf")]:
        def refused(r, t=t):
            return said(r["prediction"]) or r["refusal_probability"] >= t
        table_rows.append({"threshold": t,
                           "refusal_recall": sum(map(refused, unanswerable)) / max(1, len(unanswerable)),
                           "false_refusal": sum(map(refused, answerable)) / max(1, len(answerable))})
    ok = [r for r in table_rows if r["false_refusal"] <= args.max_false_refusal]
    chosen = min(ok, key=lambda r: r["threshold"]) if ok else None
    score = auc([r["refusal_probability"] for r in unanswerable], [r["refusal_probability"] for r in answerable])
    shown = table_rows if len(table_rows) <= 25 else table_rows[:: max(1, len(table_rows) // 20)] + table_rows[-1:]
    print(table(shown, ["threshold", "refusal_recall", "false_refusal"]))
    print(f"\nn = {len(answerable)} answerable, {len(unanswerable)} unanswerable; AUC of the refusal probability: "
          f"{score if score is None else round(score, 3)}")
    if chosen:
        print(f"chosen threshold {chosen['threshold']:.4g}: refusal recall {chosen['refusal_recall']:.2f}, "
              f"false refusals {chosen['false_refusal']:.2f} (target <= {args.max_false_refusal})")
    out = {"run": str(args.run), "mode": args.mode, "max_false_refusal": args.max_false_refusal, "auc": score,
           "n_answerable": len(answerable), "n_unanswerable": len(unanswerable), "chosen": chosen, "curve": table_rows}
    (Path(args.run) / "refusal-calibration.json").write_text(json.dumps(out, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
