"""The summary of a run's rows: one cell per (mode, attention, length, k, retrieval, chunking), with accuracy and its
confidence interval, costs, QA-file metrics and the growth of prefill time with length. Cells of ``direct`` trials
(needle prompts answered without retrieval) are also split by haystack, kind and whether the key is absent: the
table the built-in generators are measured in."""

from __future__ import annotations

import statistics
from collections import defaultdict
from typing import Any

from .metrics import bootstrap_ci, loglog_slope

__all__ = [
    "CELL",
    "EXAMPLE_CELL",
    "QA_METRICS",
    "kind_label",
    "label",
    "mean_or_nan",
    "order",
    "plain",
    "series",
    "series_name",
    "summarize",
]

CELL = ("mode", "attention", "length", "k", "retrieval", "chunk_tokens")  # what a cell of the summary is
EXAMPLE_CELL = ("haystack", "kind", "unanswerable")  # what else splits a cell of direct trials
# QA files: means with 95% CIs over answerable questions
QA_METRICS = ("exact_match", "f1", "string_match_part", "citation_precision", "passage_recall")


def _fields(r: dict[str, Any]) -> tuple[str, ...]:
    return CELL + EXAMPLE_CELL if r.get("mode") == "direct" else CELL


def _key(r: dict[str, Any]) -> tuple:
    return tuple(r.get(name) for name in _fields(r))


def series(c: dict[str, Any]) -> tuple:
    """A cell's line in a plot against length: everything that defines the cell but the length."""
    return tuple(c.get(name) for name in _fields(c) if name != "length")


def series_name(key: tuple, plain: bool) -> str:
    """"mode/attention" when nothing else varies (the names earlier reports used), else the cell's full label."""
    names = [n for n in (CELL + EXAMPLE_CELL if key[0] == "direct" else CELL) if n != "length"]
    return f"{key[0]}/{key[1]}" if plain else label(dict(zip(names, key)))


def plain(cells: list[dict[str, Any]]) -> bool:
    """Whether only mode and attention vary (one k, one retrieval, one chunking): labels stay "mode / attention"."""
    retrieving = {(c.get("k"), c.get("retrieval"), c.get("chunk_tokens")) for c in cells if c.get("k") is not None}
    return len(retrieving) <= 1 and len({c.get("chunk_tokens") for c in cells}) <= 1


def order(key: tuple) -> tuple:
    return tuple((v is not None, v if v is not None else 0) if not isinstance(v, str) else (True, v) for v in key)


def summarize(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Per cell (mode, attention, length, k, retrieval, chunking): accuracy with a bootstrap 95% CI, retrieval
    recall, tokens, time, memory, and for QA files exact match, F1, string match, citation precision, refusal
    recall and false refusals (each with its CI) and accuracy per question kind; per (mode, attention): the log-log
    slope of prefill time against length; routes taken by ``auto``."""
    cells: dict[tuple, list[dict]] = defaultdict(list)
    for r in rows:
        cells[_key(r)].append(r)
    out: list[dict[str, Any]] = []
    for key, rs in sorted(cells.items(), key=lambda kv: order(kv[0])):
        ok = [r for r in rs if r.get("status") == "ok"]
        acc, lo, hi = bootstrap_ci([r["accuracy"] for r in ok])
        recall = [r["retrieval_recall"] for r in ok if r.get("retrieval_recall") is not None]

        def mean(key: str) -> float | None:
            vals = [r[key] for r in ok if r.get(key) is not None]
            return sum(vals) / len(vals) if vals else None

        def median(key: str) -> float | None:  # times: one trial's compile or autotune must not move the cell
            vals = [r[key] for r in ok if r.get(key) is not None]
            return statistics.median(vals) if vals else None

        cell = {**dict(zip(_fields(rs[0]), key)), "n": len(rs), "errors": len(rs) - len(ok),
                "out_of_memory": sum(r.get("status") == "oom" for r in rs),
                "accuracy": acc, "accuracy_ci95": [lo, hi], "f1": mean("f1"),
                "retrieval_recall": sum(recall) / len(recall) if recall else None,
                "input_tokens": mean("input_tokens"), "prefill_s": median("prefill_s"), "decode_s": median("decode_s"),
                "retrieve_s": median("retrieve_s"), "peak_memory_bytes": mean("peak_memory_bytes"),
                "seconds_per_question": mean("total_s") if any("total_s" in r for r in ok) else None,
                "routes": dict(sorted({r["route"]: sum(x.get("route") == r["route"] for x in ok) for r in ok}.items()))}
        if any("kind" in r and "qid" in r for r in ok):  # a QA file
            cell.update(_qa_cell(ok))
        if cell["mode"] == "direct":  # answered "unanswerable": a refusal, or a false one when the key is there
            cell["refused"] = mean("refused")
        dates = sorted({r["date"] for r in rs if r.get("date")})
        if dates:
            cell["dates"] = dates
        out.append(cell)
    slopes, long_slopes, points = {}, {}, {}
    needle = [c for c in out if c["length"] is not None and c["mode"] != "direct"]  # through the QA pipeline
    for line in sorted({series(c) for c in needle}, key=order):
        cs = sorted((c for c in needle if series(c) == line and c["prefill_s"]), key=lambda c: c["length"])
        name = series_name(line, plain(needle))
        slopes[name] = loglog_slope([c["length"] for c in cs], [c["prefill_s"] for c in cs])
        points[name] = len(cs)
        # fixed per-call costs flatten the short end: the three longest lengths show the asymptotic growth
        long_slopes[name] = loglog_slope([c["length"] for c in cs[-3:]], [c["prefill_s"] for c in cs[-3:]])
    return {"cells": out, "prefill_slopes": slopes, "prefill_slopes_longest3": long_slopes,
            "prefill_slope_points": points, "trials": len(rows)}


def _qa_cell(ok: list[dict[str, Any]]) -> dict[str, Any]:
    """QA-file metrics of one cell's finished trials (answerable and unanswerable questions apart)."""
    answerable = [r for r in ok if r["answers"]]
    unanswerable = [r for r in ok if not r["answers"]]

    def ci(values: list[float]) -> dict[str, Any]:
        mean, lo, hi = bootstrap_ci(values)
        return {"mean": None if not values else mean, "ci95": [lo, hi] if values else None, "n": len(values)}

    metrics = {m: ci([r[m] for r in answerable if r.get(m) is not None]) for m in QA_METRICS}
    metrics["refusal_recall"] = ci([float(r["refused"]) for r in unanswerable])  # refused when it should
    metrics["false_refusal"] = ci([float(r["refused"]) for r in answerable])  # refused although answerable
    kinds = sorted({r["kind"] for r in ok})
    return {"qa": metrics, "by_kind": {k: mean_or_nan([r["accuracy"] for r in ok if r["kind"] == k]) for k in kinds}}


def label(c: dict[str, Any]) -> str:
    """A cell's name: mode / attention, then whatever else sets it apart (k, retrieval, chunking; for direct
    trials the haystack and the kind)."""
    extra = [f"k={c['k']}" if c.get("k") else "", c.get("retrieval") or "",
             f"{c['chunk_tokens']} tok" if c.get("chunk_tokens") and c["mode"] in ("rag", "auto") else ""]
    if c["mode"] == "direct":
        extra += [c.get("haystack") or "", kind_label(c)]
    return " / ".join([c["mode"], c["attention"], *[e for e in extra if e]])


def kind_label(c: dict[str, Any]) -> str:
    """A direct cell's kind, ``unanswerable`` for an absent key (a single-needle question, unless it says which)."""
    if not c.get("unanswerable"):
        return c.get("kind") or ""
    return "unanswerable" if c.get("kind") in (None, "single") else f"{c['kind']}, unanswerable"


def mean_or_nan(values: list[float]) -> float:
    return sum(values) / len(values) if values else float("nan")
