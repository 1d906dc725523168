"""Read each, then choose: the reader answers from each of the top-n candidate passages alone, and one answer is
picked by a score from the model itself. Measured against QA's default (the 2 best 2-sentence passages read
together in one prompt) on the essays QA set's dev split with the packaged SmolLM2.

    python eval/sweep_read_each.py collect --index INDEX --out /tmp/read-each.jsonl   # generations (slow)
    python eval/sweep_read_each.py analyze /tmp/read-each.jsonl --json eval/reports/qa-real/dev-read-each-DATE.json

The records of the 2026-12-08 sweep are committed beside its JSON (``dev-read-each-2026-12-08-*.jsonl.gz``).

``collect`` writes one line per question: the default's answer, and for each passage shape (2- and 3-sentence
passages ranked by BM25 inside the top-5 chunks, the top chunks themselves) the answer read from each of the top 4
candidates alone, with the log-probability of each generated token (and of the end of turn), the refusal word's
probability and the input tokens. ``analyze`` replays every n (2-4) and scoring rule from those records.
"""

from __future__ import annotations

import argparse
import gzip
import json
import math
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from eval._common import auc  # noqa: E402

SHAPES = {"s1": 1, "s2": 2, "s3": 3, "s4": 4, "chunk": None}  # sentences per passage (None: the retrieved chunk whole)
N_MAX = 4


def _read(qa, gen, question: str, passage_sets: list, probes) -> list[dict]:
    """The answer from each set of passages (one prompt each), decoded together in one batch (greedy: the same
    answers as one at a time, up to rounding in near ties)."""
    prompts = [qa._prompt(question, pieces) for pieces in passage_sets]
    t0 = time.perf_counter()
    done = gen.generate_batch([ids for ids, _ in prompts], max_new_tokens=qa.max_new_tokens,
                              stop=list(qa.template.stop), probes=probes, logprobs=True)
    seconds = time.perf_counter() - t0
    return [{"text": g.text.strip(), "input_tokens": len(ids), "finish": g.finish_reason,
             "refusal_p": float(sum(math.exp(x) for x in g.probe_logprobs)),
             "said": qa.template.refused(g.text), "lps": g.token_logprobs,
             "spans": [[c.doc_id, c.start, c.end] for c in cited], "batch_s": seconds}
            for (ids, cited), g in zip(prompts, done)]


def collect(args) -> None:
    from ragctx.answer import Citation
    from ragctx.evaluation.qa_tasks import load_qa_file
    from ragctx.generator import Generator
    from ragctx.index import Index
    from ragctx.qa import QA, focus_passages

    items = load_qa_file(args.qa_file, corpus=True, splits=[args.split])
    index = Index.load(args.index)
    gen = Generator.open(args.generator)
    qa = QA(index, gen, retrieval="bm25", max_new_tokens=48)
    probes = qa._refusal_probes()
    out = Path(args.out)
    done = {json.loads(x)["qid"] for x in out.read_text().splitlines()} if out.exists() else set()
    with out.open("a") as f:
        for item in items:
            if item["qid"] in done:
                continue
            t0 = time.perf_counter()
            q = item["question"]
            hits = index.search(q, k=5, mode="bm25")
            chunks = [Citation(h.doc_id, h.start, h.end, h.text, h.score, (h.ordinal, h.ordinal)) for h in hits]
            default = focus_passages(q, list(chunks), 2, 2)
            rec = {"qid": item["qid"], "kind": item["kind"], "answers": item["answers"],
                   "evidence": item["evidence"], "shapes": {}}
            sets, where = [], []  # every prompt of the question, decoded in one batch
            if args.default:
                sets.append(default)
                where.append(("default", None))
            for name in args.shapes:
                sentences = SHAPES[name]
                cands = chunks[:args.n] if sentences is None else focus_passages(q, list(chunks), args.n, sentences)
                rec["shapes"][name] = []
                for c in cands:
                    sets.append([c])
                    where.append((name, c.score))
            for (name, score), r in zip(where, _read(qa, gen, q, sets, probes)):
                if name == "default":
                    rec["default"] = r
                else:
                    rec["shapes"][name].append({**r, "bm25": score})
            f.write(json.dumps(rec) + "\n")
            f.flush()
            print(f"{item['qid']}: {time.perf_counter() - t0:.1f} s", flush=True)


# -- analysis ---------------------------------------------------------------------------------------------------
def _right(text: str, answers: list[str]) -> bool:
    from ragctx.evaluation.metrics import string_match_part

    return bool(answers) and string_match_part(text, answers) == 1.0


def _mean(xs: list[float]) -> float:
    return sum(xs) / len(xs) if xs else float("-inf")


def _norm(text: str) -> str:
    from ragctx.evaluation.metrics import _words

    return _words(text)


RULES = {  # a candidate's score: higher is chosen; refusals (the word written) are never chosen over an answer
    "rank": lambda c, i: -i,
    "mean_lp": lambda c, i: _mean(c["lps"]),
    "sum_lp": lambda c, i: sum(c["lps"]),
    "first_lp": lambda c, i: c["lps"][0] if c["lps"] else float("-inf"),
    "not_refusal": lambda c, i: -c["refusal_p"],
    "mean_lp_minus_refusal": lambda c, i: _mean(c["lps"]) + math.log(max(1e-9, 1 - c["refusal_p"])),
}


def choose(cands: list[dict], rule: str, agree: bool = False) -> tuple[int, float]:
    """Index of the chosen candidate and its score. ``agree``: two candidates with the same normalized answer win
    over a single better-scored one (the best-scored of an agreeing pair)."""
    score = RULES[rule]
    scored = [(score(c, i) - (1e6 if c["said"] else 0.0), i) for i, c in enumerate(cands)]
    if agree:
        counts: dict[str, int] = {}
        for c in cands:
            counts[_norm(c["text"])] = counts.get(_norm(c["text"]), 0) + 1
        agreed = [(s, i) for s, i in scored if counts[_norm(cands[i]["text"])] >= 2 and not cands[i]["said"]]
        if agreed:
            return max(agreed)[1], max(scored)[0]
    s, i = max(scored)
    return i, s


def _round(x: float | None, digits: int = 3) -> float | None:
    return None if x is None else round(x, digits)


def analyze(args) -> None:
    merged: dict[str, dict] = {}
    for path in args.records:  # several collect runs (other shapes) merge by question; .gz read as well
        text = gzip.decompress(Path(path).read_bytes()).decode() if path.endswith(".gz") else Path(path).read_text()
        for line in text.splitlines():
            if line.strip():
                r = json.loads(line)
                if r["qid"] in merged:
                    merged[r["qid"]]["shapes"].update(r["shapes"])
                    merged[r["qid"]].setdefault("default", r.get("default"))
                else:
                    merged[r["qid"]] = r
    recs = [r for r in merged.values() if r.get("default") is not None]
    answerable = [r for r in recs if r["answers"]]
    unanswerable = [r for r in recs if not r["answers"]]
    base = [_right(r["default"]["text"], r["answers"]) for r in answerable]
    rows = []
    for r in recs:  # "pair+sK": QA's default reading (both passages in one prompt) as a candidate beside each one
        for shape in list(r["shapes"]):
            if not shape.startswith("pair+"):
                r["shapes"]["pair+" + shape] = [r["default"], *r["shapes"][shape]]
    for shape in sorted({s for r in recs for s in r["shapes"]}):
        if not all(shape in r["shapes"] for r in recs):
            continue
        for n in range(1, min(len(r["shapes"][shape]) for r in recs) + 1):
            for rule in RULES:
                for agree in (False, True):
                    if (n == 1 and (rule != "rank" or agree)) or (agree and n < 3):
                        continue
                    right, tokens = [], []
                    conf = {}
                    for r in recs:
                        cands = r["shapes"][shape][:n]
                        i, _ = choose(cands, rule, agree)
                        conf[r["qid"]] = max(_mean(c["lps"]) for c in cands)
                        tokens.append(sum(c["input_tokens"] for c in cands))
                        if r["answers"]:
                            right.append(_right(cands[i]["text"], r["answers"]))
                    wins = sum(a and not b for a, b in zip(right, base))
                    losses = sum(b and not a for a, b in zip(right, base))
                    rows.append({"shape": shape, "n": n, "rule": rule, "agree": agree, "right": sum(right),
                                 "of": len(right), "vs_default": f"+{wins} -{losses}",
                                 "mean_input_tokens": round(sum(tokens) / len(tokens), 1),
                                 "refusal_auc_max_mean_lp": _round(auc([conf[r["qid"]] for r in answerable],
                                                                      [conf[r["qid"]] for r in unanswerable]), 3)})
    oracle = {shape: {n: sum(any(_right(c["text"], r["answers"]) for c in r["shapes"][shape][:n])
                             for r in answerable) for n in range(1, N_MAX + 1)} for shape in recs[0]["shapes"]
              if all(shape in r["shapes"] for r in recs)}
    shapes = [x for x in recs[0]["shapes"] if not x.startswith("pair+") and all(x in r["shapes"] for r in recs)]
    cands = {x: [(c, r) for r in answerable for c in r["shapes"][x]] for x in shapes}
    # does a score tell a right answer from a wrong one, over every candidate of the answerable questions?
    candidate_auc = {x: {rule: _round(auc([RULES[rule](c, 0) for c, r in cs if _right(c["text"], r["answers"])],
                                          [RULES[rule](c, 0) for c, r in cs if not _right(c["text"], r["answers"])]))
                         for rule in RULES if rule != "rank"} for x, cs in cands.items()}
    # how often a passage read alone is answered right (of how many), by whether it holds the whole supporting span,
    # overlaps it, or does not touch it
    def holds(c, r):
        return any(d == e["doc_id"] and a < e["end"] and e["start"] < b for d, a, b in c["spans"] for e in r["evidence"])
    def contains(c, r):
        return any(d == e["doc_id"] and a <= e["start"] and e["end"] <= b for d, a, b in c["spans"]
                   for e in r["evidence"])
    by_evidence = {x: {"containing_span": [sum(_right(c["text"], r["answers"]) for c, r in cs if contains(c, r)),
                                           sum(contains(c, r) for c, r in cs)],
                       "holding_span": [sum(_right(c["text"], r["answers"]) for c, r in cs if holds(c, r)),
                                        sum(holds(c, r) for c, r in cs)],
                       "not_holding": [sum(_right(c["text"], r["answers"]) for c, r in cs if not holds(c, r)),
                                       sum(not holds(c, r) for c, r in cs)]} for x, cs in cands.items()}
    signals = {}  # refusal: unanswerable (positive) against answerable, per question
    for x in shapes:
        for n in (1, 2, 4):
            sig = {r["qid"]: -max(_mean(c["lps"]) for c in r["shapes"][x][:n]) for r in recs}
            signals[f"{x} n={n}: -max mean_lp"] = sig
            signals[f"{x} n={n}: min refusal_p"] = {r["qid"]: min(c["refusal_p"] for c in r["shapes"][x][:n])
                                                    for r in recs}
    signals["default: refusal_p"] = {r["qid"]: r["default"]["refusal_p"] for r in recs}
    signals["default: -mean_lp"] = {r["qid"]: -_mean(r["default"]["lps"]) for r in recs}
    refusal_auc = {name: _round(auc([v[r["qid"]] for r in unanswerable], [v[r["qid"]] for r in answerable]))
                   for name, v in signals.items()}
    d_conf = [_mean(r["default"]["lps"]) for r in recs]
    summary = {"default_right": sum(base), "of": len(base),
               "default_mean_input_tokens": round(_mean([r["default"]["input_tokens"] for r in recs]), 1),
               "default_refusal_auc_mean_lp": _round(auc([c for c, r in zip(d_conf, recs) if r["answers"]],
                                                        [c for c, r in zip(d_conf, recs) if not r["answers"]]), 3),
               "default_refusal_auc_refusal_p": _round(auc(
                   [-r["default"]["refusal_p"] for r in answerable], [-r["default"]["refusal_p"] for r in unanswerable]), 3),
               "oracle_any_candidate_right": oracle, "candidate_right_vs_wrong_auc": candidate_auc,
               "right_by_evidence_overlap": by_evidence, "refusal_auc_unanswerable_vs_answerable": refusal_auc}
    rows.sort(key=lambda r: -r["right"])
    for r in rows[: args.top]:
        print(r)
    print(json.dumps(summary))
    if args.json:
        import torch

        head = {"what": "read each, then choose: SmolLM2 (packaged GGUF) answers from each of the top-n candidate passages "
                        "alone (bm25, k=5, 200-token chunks), one answer picked by a score of the model's own; paired "
                        "with QA's default (2 best 2-sentence passages in one prompt) on the essays dev split",
                "date": time.strftime("%Y-%m-%d"), "machine": f"2-core CPU (shared), torch {torch.__version__}",
                "shapes": "s1/s2/s3: 1/2/3-sentence passages ranked by BM25 inside the top-5 chunks (focus_passages); "
                          "chunk: the retrieved chunks in rank order; pair+X: the default's joint reading as candidate "
                          "0, then X's passages",
                "rules": "rank: retrieval order; mean_lp / sum_lp / first_lp: mean, sum, first of the answer's token "
                         "log-probabilities (Generation.token_logprobs, end of turn included); not_refusal: lowest "
                         "probability of the refusal word; agree: two candidates with the same answer win",
                "command": "python eval/sweep_read_each.py collect --index INDEX --out b.jsonl --shapes s2 chunk; "
                           "... --out c.jsonl --shapes s3 s1 --no-default; python eval/sweep_read_each.py analyze "
                           "b.jsonl c.jsonl --json THIS"}
        Path(args.json).write_text(json.dumps({**head, "summary": summary, "rows": rows}, indent=1) + "\n")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("collect")
    c.add_argument("--index", required=True)
    c.add_argument("--out", required=True)
    c.add_argument("--qa-file", default="eval/data/essays-qa.jsonl")
    c.add_argument("--split", default="dev")
    c.add_argument("--generator", default="smollm2")
    c.add_argument("--shapes", nargs="+", default=list(SHAPES), choices=list(SHAPES))
    c.add_argument("--n", type=int, default=N_MAX, help="candidates read per shape")
    c.add_argument("--default", action=argparse.BooleanOptionalAction, default=True,
                   help="also read QA's default (2 passages of 2 sentences in one prompt)")
    a = sub.add_parser("analyze")
    a.add_argument("records", nargs="+")
    a.add_argument("--json")
    a.add_argument("--top", type=int, default=30)
    args = p.parse_args(argv)
    collect(args) if args.cmd == "collect" else analyze(args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
