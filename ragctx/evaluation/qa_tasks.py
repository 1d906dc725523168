"""QA-file tasks: real questions over a corpus, scored by exact match, F1, string match (contains), refusals,
retrieval recall of the supporting span and citation precision.

A QA file is JSONL, one question per line::

    {"id": "apple-01", "question": "...?", "answers": ["..."],          # [] when the corpus does not answer it
     "kind": "single" | "multi" | "unanswerable",                       # optional (default: single / unanswerable)
     "split": "dev" | "test",                                           # optional
     "evidence": [{"doc_id": "apple.txt", "start": 120, "end": 410}],   # optional: the supporting spans
     "doc_ids": ["apple.txt"],                                          # optional: the question's documents
     "documents": [{"id", "text"}] | "index": "folder"}                 # or neither, when the config names a corpus

Modes: ``rag``, ``full`` and ``auto`` as in :class:`~ragctx.qa.QA`, and ``gold``: the same generator given only
the evidence spans (what it can do with the right passage in hand; not run for unanswerable questions). ``full``
reads the whole corpus when it fits the generator, else the question's own documents (``doc_ids``); a question
whose documents do not fit either is recorded as an error unless the config sets ``full_truncate``.

``accuracy`` is the string match (the answer holds a reference answer, case and punctuation ignored; RULER's
string_match_part: small instruct models answer in sentences) for answerable questions, and a refusal for
unanswerable ones. A refusal is :attr:`~ragctx.qa.Answer.refused`. The scores are computed where every row is
made, :func:`~ragctx.evaluation.results.make_row`.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from ..errors import RagctxError
from .results import Trial

__all__ = ["load_qa_file", "QA_KINDS", "ask_question", "QA_MODES", "span_text"]

QA_KINDS = ("single", "multi", "unanswerable")
QA_MODES = ("rag", "full", "auto", "gold")


def load_qa_file(path: str | Path, *, corpus: bool = False, splits: list[str] | None = None) -> list[dict[str, Any]]:
    """Questions from a QA file (format in the module docstring), checked line by line. ``corpus``: the config
    names a corpus, so a line may carry neither ``documents`` nor ``index``. ``splits``: keep only these."""
    path = Path(path)
    if not path.is_file():
        raise RagctxError(f"{path}: no such QA file")
    items, seen = [], set()
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        where = f"{path}:{n}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise RagctxError(f"{where}: invalid JSON ({e.msg})") from e
        if not isinstance(row, dict):
            raise RagctxError(f"{where}: each line must be a JSON object")
        if not isinstance(row.get("question"), str) or not row["question"].strip():
            raise RagctxError(f"{where}: 'question' must be a non-empty string")
        answers = row.get("answers")
        if not isinstance(answers, list) or not all(isinstance(a, str) and a.strip() for a in answers):
            raise RagctxError(f"{where}: 'answers' must be a list of non-empty strings ([] when unanswerable)")
        kind = row.get("kind", "single" if answers else "unanswerable")
        if kind not in QA_KINDS or (kind == "unanswerable") != (not answers):
            raise RagctxError(f"{where}: kind '{kind}' with {len(answers)} answers; kinds are {', '.join(QA_KINDS)} "
                              "and only 'unanswerable' has no answers")
        sources = ("documents" in row) + ("index" in row)
        if sources > 1 or (sources == 0 and not corpus):
            raise RagctxError(f"{where}: give either 'documents' (a list of {{id, text}}) or 'index' (a folder), or "
                              "name a 'corpus' in the eval config")
        for e in row.get("evidence", []):
            if not (isinstance(e, dict) and isinstance(e.get("doc_id"), str) and isinstance(e.get("start"), int)
                    and isinstance(e.get("end"), int) and 0 <= e["start"] < e["end"]):
                raise RagctxError(f"{where}: evidence {e!r} must be {{'doc_id': str, 'start': int, 'end': int}}")
        if "doc_ids" in row and (not isinstance(row["doc_ids"], list) or
                                 not all(isinstance(d, str) for d in row["doc_ids"])):
            raise RagctxError(f"{where}: 'doc_ids' must be a list of document ids (strings)")
        qid = str(row.get("id", n))
        if qid in seen:
            raise RagctxError(f"{where}: id '{qid}' appears twice")
        seen.add(qid)
        if splits and row.get("split") not in splits:
            continue
        items.append({**row, "qid": qid, "kind": kind, "evidence": row.get("evidence", []),
                      "doc_ids": row.get("doc_ids") or sorted({e["doc_id"] for e in row.get("evidence", [])})})
    if not items:
        raise RagctxError(f"{path}: no questions" + (f" in splits {splits}" if splits else ""))
    return items


def ask_question(t: Trial, item: dict[str, Any], gen, index, cfg, corpus_tokens: int) -> tuple[Any, dict[str, Any]]:
    """Asks trial ``t``'s question: its :class:`~ragctx.qa.Answer` and what was measured around it (``full_scope``,
    ``total_s``); the runner scores it with :func:`~ragctx.evaluation.results.make_row` against
    :meth:`Reference.of_question <ragctx.evaluation.results.Reference.of_question>`. ``index`` holds the question's
    corpus; ``corpus_tokens`` is its length in the generator's tokens (computed once per corpus), which decides what
    ``full`` reads. A RagctxError (e.g. the question's own document is longer than the generator's context)
    propagates."""
    from ..qa import QA, Citation

    qa = QA(index, gen, max_new_tokens=cfg.max_new_tokens, retrieval=t["retrieval"] or "bm25",
            refusal_threshold=cfg.refusal_threshold, bos=cfg.bos, focus=cfg.focus)
    qa.measure_refusal = True  # the probability is recorded for calibration whatever the threshold
    measured: dict[str, Any] = {}
    mode = t["mode"]
    started = time.perf_counter()
    if mode == "gold":
        spans = sorted((e["doc_id"], e["start"], e["end"]) for e in item["evidence"])
        answer = qa.read(item["question"], [Citation(d, s, e, span_text(index, d, s, e)) for d, s, e in spans])
    else:
        budget = gen.max_context - cfg.max_new_tokens
        documents = item["doc_ids"] if (mode == "full" and corpus_tokens > budget and item["doc_ids"]) else None
        answer = qa.ask(item["question"], mode=mode, k=t["k"] or 5, documents=documents, truncate=cfg.full_truncate)
        measured["full_scope"] = "documents" if documents else "corpus"
    measured["total_s"] = time.perf_counter() - started  # retrieval, prompt building and generation: a user's wait
    return answer, measured


def span_text(index, doc_id: str, start: int, end: int) -> str:
    """The text of a document span, rebuilt from the chunks that cover it (chunks keep exact offsets; whitespace
    between two chunks, which no chunk holds, reads as one space)."""
    chunks = index.document_chunks([doc_id])
    if not chunks:
        raise RagctxError(f"evidence names document '{doc_id}', which is not in the corpus")
    end = min(end, max(c.end for c in chunks))  # a span past the document's end stops at it
    out = [" "] * max(0, end - start)
    for c in chunks:
        lo, hi = max(start, c.start), min(end, c.end)
        if lo < hi:
            out[lo - start : hi - start] = c.text[lo - c.start : hi - c.start]
    return "".join(out)
