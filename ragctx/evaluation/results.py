"""The trial and result-row schema of an evaluation run, and its files: what the runner writes and the report reads.

A run folder holds ``results.jsonl`` (or one ``results.shard-I-of-N.jsonl`` per shard), one JSON :class:`Row` a
line. A row is its :class:`Trial` (the grid cell and example, with ``id`` = :func:`trial_id` of the other keys,
the resume key) plus what came out. Rows stay plain dicts in the files; the classes here name their keys.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, TypedDict

__all__ = ["Trial", "Row", "trial_id", "results_file", "result_files", "read_rows"]


class Trial(TypedDict, total=False):
    """One trial of the grid. Needle trials have length/depth/kind/seed/unanswerable/haystack; QA-file trials have
    qa_file/qid/retrieval (and ``length: None``, ``depth: -1.0``). ``settings`` (what else changes the result) is
    in every QA-file trial and in needle trials whose retrieval or options differ from the defaults."""

    id: str  # trial_id of the other keys: a rerun skips the ids already in the folder
    attention: str
    mode: str  # rag, full, auto (and gold for QA files)
    k: int | None  # chunks retrieved (None for full)
    chunk_tokens: int
    overlap: int
    generator: str
    length: int | None
    depth: float
    kind: str
    seed: int
    unanswerable: bool
    haystack: str
    qa_file: str
    qid: str
    retrieval: str | None
    settings: dict[str, Any]


class Row(Trial, total=False):
    """A trial and its outcome. ``status`` is ok, error (a RagctxError, e.g. a context longer than the generator's
    window) or oom; the scores are present when it is ok."""

    status: str
    error: str
    prediction: str
    answers: list[str]
    route: str  # what auto chose: rag, full, refused, ...
    accuracy: float
    retrieval_recall: float | None
    input_tokens: int
    peak_memory_bytes: int | None
    retrieve_s: float
    prefill_s: float
    decode_s: float
    # QA files only
    split: str | None
    full_scope: str  # full read the whole corpus or the question's documents
    fallback_reason: str | None
    total_s: float  # retrieval, prompt building and generation
    exact_match: float | None
    f1: float | None
    string_match_part: float | None
    refused: bool
    refusal_probability: float | None
    passage_recall: float | None
    citation_precision: float | None


def trial_id(params: dict[str, Any]) -> str:
    """A trial's stable id: a hash of its parameters (everything but ``id``)."""
    return hashlib.sha1(json.dumps(params, sort_keys=True).encode()).hexdigest()[:16]


def results_file(folder: str | Path, shard: tuple[int, int] | None = None) -> Path:
    """Where a run (or shard i of n) appends its rows."""
    return Path(folder) / ("results.jsonl" if shard is None else f"results.shard-{shard[0]}-of-{shard[1]}.jsonl")


def result_files(folder: str | Path) -> list[Path]:
    """``results.jsonl`` and every shard's ``results.shard-*.jsonl`` in ``folder``."""
    return sorted(Path(folder).glob("results*.jsonl"))


def read_rows(folder: str | Path) -> list[Row]:
    """Every row of every results file in ``folder`` (none when there is no file yet)."""
    return [json.loads(line) for f in result_files(folder) for line in f.read_text().splitlines() if line.strip()]
