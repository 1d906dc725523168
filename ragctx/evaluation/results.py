"""The trial and row schema of an evaluation, its resume key, the one function that makes a row, and the run's files.

A run folder holds ``results.jsonl`` (or one ``results.shard-I-of-N.jsonl`` per shard), one JSON :class:`Row` a
line. A row is its :class:`Trial` (a grid cell and example) plus what came out; rows stay plain dicts in the files,
and the classes here name their keys. Every row is made by :func:`make_row`, from the trial, an :class:`Outcome`
(what the generator said) and a :class:`Reference` (what it is scored against): needle trials and QA-file trials
alike, in the runner and in the trainer's evaluation.

**Resume key.** A trial is defined by the fields of :data:`NEEDLE_KEY` (needle trials) or :data:`QA_KEY` (QA-file
trials, the ones with a ``qid``) and by the values in its ``settings`` named in :data:`NEEDLE_SETTINGS` /
:data:`QA_SETTINGS`; nothing else in a row counts. :func:`trial_key` reads those fields from a trial or from a row
of any age, so a rerun skips what a folder already holds, and a config field that is not part of the key (a batch
size, a device) can be added or changed without running anything again. A field added to the key later is given
the value that every row written before it existed stands for (``index``: 0); a row that lacks a field with no
such value (QA-file rows written before ``settings`` were recorded) is run again. ``id`` is a short hash of the
key, the trial's name in a folder: a trial whose settings are all at their defaults keeps the id of the first
key; one with other settings may get another id than an older version wrote (the key still matches it).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypedDict

from ..errors import RagctxError
from ..tasks.needles import UNANSWERABLE, NeedleExample, string_match_all
from .metrics import doc_spans_overlap, exact_match, string_match_part, token_f1

__all__ = [
    "NEEDLE_KEY",
    "NEEDLE_SETTINGS",
    "QA_KEY",
    "QA_SETTINGS",
    "Outcome",
    "Reference",
    "Row",
    "Trial",
    "make_row",
    "pending",
    "read_rows",
    "result_files",
    "results_file",
    "trial_id",
    "trial_key",
]

Span = tuple[str, int, int]  # (document id, start, end) in characters


class _Required:
    def __repr__(self) -> str:
        return "REQUIRED"


REQUIRED: Any = _Required()  # in a key table: no value stands for a missing field (a row without it is run again)

# field -> the value a row without the field stands for (REQUIRED: every row has it)
NEEDLE_KEY: dict[str, Any] = {
    "generator": REQUIRED, "attention": REQUIRED, "mode": REQUIRED, "k": REQUIRED, "chunk_tokens": REQUIRED,
    "overlap": REQUIRED, "haystack": REQUIRED, "length": REQUIRED, "depth": REQUIRED, "kind": REQUIRED,
    "seed": REQUIRED, "unanswerable": REQUIRED,
    "index": 0,  # the example's number under its seed (EvalConfig.examples); rows before it: the first
}
QA_KEY: dict[str, Any] = {
    "generator": REQUIRED, "attention": REQUIRED, "mode": REQUIRED, "k": REQUIRED, "chunk_tokens": REQUIRED,
    "overlap": REQUIRED, "retrieval": REQUIRED, "qa_file": REQUIRED, "qid": REQUIRED,
}
# the trial's ``settings`` (config values that change every trial's result), the same way
# a needle trial's settings, each recorded only when not this value. dtype, max_new_tokens and max_seq_len are not
# among them: committed needle folders were written without them under other values than the defaults, so a key
# holding them would run those grids again; a rerun that changes one of them needs a new folder
NEEDLE_SETTINGS: dict[str, Any] = {"retrieval": "dense", "options": {}}
QA_SETTINGS: dict[str, Any] = {name: REQUIRED for name in ("corpus", "focus", "refusal_threshold", "bos",
                                                           "max_new_tokens", "full_truncate", "options", "dtype",
                                                           "max_seq_len")}


class Trial(TypedDict, total=False):
    """One trial of the grid. Needle trials have length/depth/kind/seed/unanswerable/haystack/index; QA-file trials
    have qa_file/qid/retrieval (and ``length: None``, ``depth: -1.0``). ``settings`` (what else changes the result)
    is in every QA-file trial and in needle trials whose retrieval or options differ from the defaults."""

    id: str  # trial_id: a short hash of the trial's key (see the module docstring)
    attention: str
    mode: str  # rag, full, auto (the QA pipeline); gold (QA files: the evidence alone); direct (needles: no QA)
    k: int | None  # chunks retrieved (None where nothing is retrieved)
    chunk_tokens: int | None  # chunking of the index (None for direct: no index)
    overlap: int | None
    generator: str
    length: int | None  # needles: context length in the generator's tokens
    depth: float | None  # needles: where the needles sit, 0 = start (None: drawn per example); QA files: -1.0
    kind: str  # needles: single, multikey, multivalue, multiquery
    seed: int
    unanswerable: bool  # needles: the question asks for an absent key
    index: int  # needles: the example's number under its seed (absent: 0)
    haystack: str
    qa_file: str
    qid: str
    retrieval: str | None  # QA files: dense, bm25, hybrid (None where nothing is retrieved)
    settings: dict[str, Any]


class Row(Trial, total=False):
    """A trial and its outcome. ``status`` is ok, error (a RagctxError, e.g. a context longer than the generator's
    window) or oom; the scores are present when it is ok."""

    status: str
    error: str
    date: str  # the day its run started (rows written since the runner records it)
    prediction: str
    answers: list[str]
    route: str  # rag, full, auto's route (rag->full, ...), given (gold) or direct
    accuracy: float  # needles: string_match_all; QA files: string_match_part, or a refusal when unanswerable
    refused: bool  # the answer is the refusal (QA's template, or the word unanswerable for direct answers)
    retrieval_recall: float | None  # needles: of the needles by the passages read; QA files: by the chunks retrieved
    input_tokens: int
    peak_memory_bytes: int | None
    retrieve_s: float
    prefill_s: float
    decode_s: float
    batch: int  # needle trials decoded together (EvalConfig.batch > 1): the timings and memory are the batch's
    # QA files only
    split: str | None
    full_scope: str  # full read the whole corpus or the question's documents
    fallback_reason: str | None
    total_s: float  # retrieval, prompt building and generation
    exact_match: float | None
    f1: float | None
    string_match_part: float | None
    refusal_probability: float | None
    passage_recall: float | None
    citation_precision: float | None


def _key_values(t: dict[str, Any]) -> dict[str, Any] | None:
    """The fields of ``t``'s key, those at the value their absence stands for left out; None when a field is
    missing that no value stands for."""
    fields, known = (QA_KEY, QA_SETTINGS) if "qid" in t else (NEEDLE_KEY, NEEDLE_SETTINGS)
    out, settings = _pick(t, fields), _pick(t.get("settings") or {}, known)
    if out is None or settings is None:
        return None
    return {**out, "settings": settings} if settings else out


def _pick(given: dict[str, Any], table: dict[str, Any]) -> dict[str, Any] | None:
    """``table``'s fields of ``given``, each left out at the value its absence stands for (None: one is missing
    that no value stands for)."""
    out = {}
    for name, absent in table.items():
        if name not in given and absent is REQUIRED:
            return None
        value = given.get(name, absent)
        if absent is REQUIRED or value != absent:
            out[name] = value
    return out


def trial_key(t: dict[str, Any]) -> str | None:
    """The resume key of a trial or a row: its defining fields as canonical JSON (None for an old row that lacks a
    field no value stands for: it never matches, so that trial runs again)."""
    values = _key_values(t)
    return None if values is None else json.dumps(values, sort_keys=True)


def trial_id(t: dict[str, Any]) -> str:
    """A trial's stable id: a short hash of :func:`trial_key`."""
    key = trial_key(t)
    if key is None:
        raise RagctxError(f"trial {t!r} lacks a field of its key; build it with ragctx.evaluation.runner.trials")
    return hashlib.sha1(key.encode()).hexdigest()[:16]


def pending(trials: list[Trial], rows: list[Row]) -> list[Trial]:
    """The trials whose key no row has (rows that ended in an error count as done, as an out-of-memory does)."""
    done = {trial_key(r) for r in rows}
    return [t for t in trials if trial_key(t) not in done]


@dataclass(frozen=True)
class Outcome:
    """What the generator said, in the terms a row is scored in: from a QA :class:`~ragctx.qa.Answer`
    (:meth:`of_answer`) or from a needle prompt answered directly (:meth:`of_generation`)."""

    text: str
    route: str
    refused: bool
    input_tokens: int
    timings: dict[str, float]  # retrieve_s, prefill_s, decode_s (those measured)
    peak_memory_bytes: int | None = None
    cited: list[Span] = field(default_factory=list)  # the answer's citations
    read: list[Span] | None = None  # the passages the RAG attempt read (None: no RAG attempt)
    retrieved: list[Span] | None = None  # the chunks the RAG attempt retrieved
    refusal_probability: float | None = None  # the first attempt's, when measured
    fallback_reason: str | None = None

    @classmethod
    def of_answer(cls, answer: Any) -> Outcome:
        """From a :class:`~ragctx.qa.Answer` (its RAG attempt, if any, gives what was retrieved and read)."""
        def spans(citations) -> list[Span]:
            return [(c.doc_id, c.start, c.end) for c in citations]

        rag = next((a for a in answer.attempts if a.route == "rag"), None)
        return cls(answer.text, answer.route, answer.refused, answer.input_tokens, dict(answer.timings),
                   answer.peak_memory_bytes, spans(answer.citations), None if rag is None else spans(rag.citations),
                   None if rag is None else spans(rag.retrieved),
                   answer.attempts[0].refusal_probability if answer.attempts else None, answer.fallback_reason)

    @classmethod
    def of_generation(cls, generation: Any) -> Outcome:
        """From a :class:`~ragctx.generator.Generation` of a needle prompt answered directly (no retrieval): a
        refusal is the word ``unanswerable`` anywhere in the text, the target the models were trained on."""
        return cls(generation.text, "direct", UNANSWERABLE in generation.text.lower(), generation.prompt_tokens,
                   {"prefill_s": generation.prefill_s, "decode_s": generation.decode_s},
                   getattr(generation, "peak_memory_bytes", None))


@dataclass(frozen=True)
class Reference:
    """What a trial's answer is scored against. ``metric``: ``needle`` (RULER's string_match_all; an unanswerable
    example's answer is the word ``unanswerable``) or ``qa`` (string_match_part, exact match, F1, and a refusal
    for a question without answers; see :mod:`ragctx.evaluation.qa_tasks`)."""

    answers: list[str]
    evidence: list[Span]  # the spans that hold the answer (needles: every needle)
    metric: str
    about: dict[str, Any] = field(default_factory=dict)  # fields the row takes from the question (QA: kind, split)

    @classmethod
    def of_needle(cls, example: NeedleExample, doc_id: str = "context") -> Reference:
        """A needle example, its context indexed as one document named ``doc_id``."""
        return cls(list(example.answers), [(doc_id, s, e) for s, e in example.needle_spans], "needle")

    @classmethod
    def of_question(cls, item: dict[str, Any]) -> Reference:
        """A question of a QA file (as :func:`~ragctx.evaluation.qa_tasks.load_qa_file` returns it)."""
        return cls(list(item["answers"]), [(e["doc_id"], e["start"], e["end"]) for e in item["evidence"]], "qa",
                   {"kind": item["kind"], "split": item.get("split")})

    @property
    def answerable(self) -> bool:
        """Whether the example has an answer (a needle example's reference is otherwise the word itself)."""
        return self.answers != [UNANSWERABLE] if self.metric == "needle" else bool(self.answers)


def make_row(trial: dict[str, Any], outcome: Outcome | BaseException, reference: Reference,
             **extra: Any) -> Row:
    """The row of ``trial``: ``outcome`` scored against ``reference``, or the error that ended the trial (a
    RagctxError: ``status: error``; any other exception, an out-of-memory one: ``status: oom``). ``extra``: fields
    measured around the outcome (QA files: ``full_scope``, ``total_s``), placed before the timings; an error row
    has only the trial, the question's fields and the error."""
    row: Row = {**trial, **reference.about}  # type: ignore[typeddict-item]
    if isinstance(outcome, RagctxError):
        return {**row, "status": "error", "error": str(outcome)}
    if isinstance(outcome, BaseException):
        return {**row, "status": "oom", "error": (str(outcome).splitlines() or [type(outcome).__name__])[0][:200]}
    row.update(status="ok", prediction=outcome.text, answers=reference.answers, route=outcome.route)
    row.update(_scores(trial, outcome, reference))
    row.update(input_tokens=outcome.input_tokens, peak_memory_bytes=outcome.peak_memory_bytes)
    if reference.metric == "qa":
        row["fallback_reason"] = outcome.fallback_reason
    return {**row, **extra, **outcome.timings}


def _scores(trial: dict[str, Any], o: Outcome, ref: Reference) -> dict[str, Any]:
    if ref.metric == "needle":
        return {"accuracy": string_match_all(o.text, ref.answers), "refused": o.refused,
                "retrieval_recall": (doc_spans_overlap(o.read, ref.evidence)
                                     if o.read is not None and ref.answerable and ref.evidence else None)}
    if ref.metric != "qa":
        raise RagctxError(f"reference metric '{ref.metric}' is unknown; use needle or qa")
    answerable, evidence = ref.answerable, ref.evidence
    contains = string_match_part(o.text, ref.answers) if answerable else None
    return {"accuracy": contains if answerable else float(o.refused),
            "exact_match": exact_match(o.text, ref.answers) if answerable else None,
            "f1": token_f1(o.text, ref.answers) if answerable else None,
            "string_match_part": contains, "refused": o.refused, "refusal_probability": o.refusal_probability,
            # recall of the supporting spans by the k chunks retrieved, and by the passages the generator read
            "retrieval_recall": doc_spans_overlap(o.retrieved, evidence) if o.retrieved is not None and evidence
            else None,
            "passage_recall": doc_spans_overlap(o.read, evidence) if o.read is not None and evidence else None,
            "citation_precision": (sum(any(_touch(c, e) for e in evidence) for c in o.cited) / len(o.cited)
                                   if o.cited and evidence and trial.get("mode") != "full" else None)}


def _touch(a: Span, b: Span) -> bool:
    return a[0] == b[0] and a[1] < b[2] and b[1] < a[2]


def results_file(folder: str | Path, shard: tuple[int, int] | None = None) -> Path:
    """Where a run (or shard i of n) appends its rows."""
    return Path(folder) / ("results.jsonl" if shard is None else f"results.shard-{shard[0]}-of-{shard[1]}.jsonl")


def result_files(folder: str | Path) -> list[Path]:
    """``results.jsonl`` and every shard's ``results.shard-*.jsonl`` in ``folder``."""
    return sorted(Path(folder).glob("results*.jsonl"))


def read_rows(folder: str | Path) -> list[Row]:
    """Every row of every results file in ``folder`` (none when there is no file yet)."""
    return [json.loads(line) for f in result_files(folder) for line in f.read_text().splitlines() if line.strip()]
