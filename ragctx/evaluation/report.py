"""The report of a run folder: summary.json, report.md and report.html (with the plots inlined), from its rows.

The cells come from :func:`~ragctx.evaluation.summary.summarize` and the plots from
:func:`~ragctx.evaluation.plots.write_plots`. One table lists the cells of trials through the QA pipeline (needle
grids and QA files); another the cells of needles answered directly (haystack, length, kind, accuracy, false
``unanswerable``). A ``conclusions.md`` written by a person opens both reports; ``runs.jsonl`` (the runner's log:
date, machine, trials) closes them.
"""

from __future__ import annotations

import base64
import html
import json
from pathlib import Path
from typing import Any

from ..errors import RagctxError
from .plots import DIRECT_PLOTS, PLOTS, QA_PLOTS, write_plots
from .results import Row, read_rows, result_files
from .summary import kind_label, label, summarize

__all__ = ["DIRECT_PLOTS", "PLOTS", "QA_PLOTS", "summarize", "write_report"]


DIRECT_NOTE = ("Direct: each model answers the example's own prompt, no retrieval. For an absent key (unanswerable), "
               "accuracy is the recall of `unanswerable`; `false unans.` is the share of answerable questions answered "
               "`unanswerable`.")


def _rows(folder: Path) -> list[Row]:
    if not result_files(folder):
        raise RagctxError(f"{folder}: no results.jsonl here; run `ragctx eval CONFIG` first")
    return read_rows(folder)


def _findings(summary: dict[str, Any]) -> list[str]:
    """Plain statements read off the summary (the conclusions a person then checks and extends)."""
    cells = summary["cells"]
    lines = []
    for mode in sorted({c["mode"] for c in cells}):
        cs = [c for c in cells if c["mode"] == mode and c["n"] > c["errors"]]
        if not cs:
            continue
        top = max(c["accuracy"] for c in cs)
        best = [c for c in cs if c["accuracy"] == top]
        where = lambda c: label(c) + (f", length {c['length']}" if c["length"] is not None else "")  # noqa: E731
        if len(best) == 1:
            said = f"best accuracy {top:.2f} ({where(best[0])})"
        else:  # a tie names no winner
            said = (f"best accuracy {top:.2f}, a tie of {len(best)} of its {len(cs)} cells ("
                    + "; ".join(where(c) for c in best[:3]) + ("; ..." if len(best) > 3 else "") + ")")
        tokens = [c["input_tokens"] for c in cs if c["input_tokens"] is not None]
        lines.append(f"`{mode}`: {said}" + (f"; mean input {sum(tokens) / len(tokens):.0f} tokens." if tokens else "."))
    points = summary.get("prefill_slope_points", {})
    two = [f"`{key}` {slope:.2f}" for key, slope in summary["prefill_slopes"].items()
           if slope is not None and points.get(key) == 2]
    if two:  # one line: the caveat once
        lines.append("prefill time grows as length^s between the two lengths run (two points each: rough slopes): "
                     + ", ".join(two) + ".")
    for key, slope in summary["prefill_slopes"].items():
        if slope is not None and points.get(key) != 2:
            long, n = summary.get("prefill_slopes_longest3", {}).get(key), points.get(key, 0)
            lines.append(f"prefill time of `{key}` grows as length^{slope:.2f} over {n or 'its'} lengths"
                         + (f" (length^{long:.2f} over its three longest)." if long is not None and n > 3 else "."))
    small = [c for c in cells if c["n"] - c["errors"] < 30]
    if small:
        n = min(c["n"] - c["errors"] for c in small)
        lines.append(f"{len(small)} of {len(cells)} cells rest on fewer than 30 trials (fewest: {n}): their 95% "
                     "intervals are rough, and an interval of 1.00-1.00 (or 0.00-0.00) only says every trial came "
                     "out the same, not that the next one will.")
    for c in cells:
        if c["out_of_memory"]:
            lines.append(f"`{label(c)}` at length {c['length']}: {c['out_of_memory']} of {c['n']} "
                         "trials ran out of memory.")
        elif c["errors"] and c["length"] is None:
            lines.append(f"`{label(c)}`: {c['errors']} of {c['n']} questions did not run (see their `error`).")
    return lines


def _pipeline_table(cells: list[dict[str, Any]]) -> tuple[list[str], list[list[Any]]]:
    """Header and rows of the table of cells through the QA pipeline (QA-file columns when there are QA cells)."""
    qa = any("qa" in c for c in cells)
    header = ["mode", "attention", "length", "k", "retrieval", "chunk", "n", "accuracy", "95% CI"]
    header += (["contains", "EM", "F1", "refusal recall", "false refusal", "citation precision", "passage recall",
                "retrieval recall"] if qa else ["retrieval recall"])
    header += ["input tokens", "prefill s (median)", "decode s (median)", "peak MiB", "routes"]

    def pct(m: dict[str, Any] | None) -> str:
        return "" if not m or m["mean"] is None else f"{m['mean']:.2f} ({m['n']})"

    table = []
    for c in cells:
        ran = c["n"] > c["errors"]
        failed = "OOM" if c["out_of_memory"] == c["n"] else "error"  # no trial of the cell ran to the end
        row = [c["mode"], c["attention"], "" if c["length"] is None else c["length"], c.get("k") or "",
               c.get("retrieval") or "", c.get("chunk_tokens") if c["mode"] in ("rag", "auto") else "", c["n"],
               f"{c['accuracy']:.2f}" if ran else failed,
               f"{c['accuracy_ci95'][0]:.2f}-{c['accuracy_ci95'][1]:.2f}" if ran else ""]
        if qa:
            m = c.get("qa", {})
            row += [pct(m.get("string_match_part")), pct(m.get("exact_match")), pct(m.get("f1")),
                    pct(m.get("refusal_recall")), pct(m.get("false_refusal")), pct(m.get("citation_precision")),
                    pct(m.get("passage_recall"))]
        row += ["" if c["retrieval_recall"] is None else f"{c['retrieval_recall']:.2f}",
                f"{c['input_tokens'] or 0:.0f}", f"{c['prefill_s'] or 0:.3f}", f"{c['decode_s'] or 0:.3f}",
                f"{(c['peak_memory_bytes'] or 0) / 2**20:.0f}", ", ".join(f"{k}: {v}" for k, v in c["routes"].items())]
        table.append(row)
    return header, table


def _direct_table(cells: list[dict[str, Any]]) -> tuple[list[str], list[list[Any]]]:
    """Header and rows of the table of needles answered directly: for an absent key, accuracy is the recall of
    ``unanswerable``; ``false unans.`` is the share of answerable questions answered ``unanswerable``."""
    header = ["attention", "haystack", "length", "kind", "n", "accuracy", "95% CI", "false unans.", "input tokens",
              "prefill s (median)", "decode s (median)"]
    table = []
    for c in sorted(cells, key=lambda c: (c["attention"], c.get("haystack") or "", c["length"],
                                          bool(c.get("unanswerable")), c.get("kind") or "")):
        ran = c["n"] > c["errors"]
        table.append([c["attention"], c.get("haystack") or "", c["length"], kind_label(c), c["n"],
                      f"{c['accuracy']:.2f}" if ran else ("OOM" if c["out_of_memory"] == c["n"] else "error"),
                      f"{c['accuracy_ci95'][0]:.2f}-{c['accuracy_ci95'][1]:.2f}" if ran else "",
                      _number(None if c.get("unanswerable") else c.get("refused"), 2),
                      _number(c["input_tokens"], 0), _number(c["prefill_s"], 3), _number(c["decode_s"], 3)])
    return header, table


def _number(value: float | None, digits: int) -> str:
    """A table entry: blank where nothing was measured (rows migrated from before the runner have no timings)."""
    return "" if value is None else f"{value:.{digits}f}"


def _runs(folder: Path) -> list[dict[str, Any]]:
    """The runner's log of this folder (``runs.jsonl``), oldest first; none for a folder written before it."""
    path = folder / "runs.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []


def _run_line(run: dict[str, Any]) -> str:
    """One run of the log in words: date, config, trials, machine and versions (those recorded)."""
    shard = f", shard {run['shard']}" if run.get("shard") else ""
    versions = ", ".join(f"{name} {run[key]}" for name, key in (("torch", "torch"), ("Python", "python"))
                         if run.get(key))
    return (f"{run.get('date', 'undated')}: `{run.get('config', '?')}`, {run.get('trials', '?')} trials{shard} on "
            f"{run.get('device', '?')}" + (f" ({versions})" if versions else ""))


def write_report(folder: str | Path) -> dict[str, Any]:
    """Writes summary.json, report.md, report.html and the plots from ``folder/results.jsonl``; a
    ``folder/conclusions.md`` (plain-words conclusions, written after reading the results) opens both reports."""
    folder = Path(folder)
    rows = _rows(folder)
    summary = summarize(rows)
    runs = _runs(folder)
    if runs:
        summary["runs"] = runs
    (folder / "summary.json").write_text(json.dumps(summary, indent=2))
    plots = write_plots(folder, rows, summary)
    pipeline = [c for c in summary["cells"] if c["mode"] != "direct"]
    direct = [c for c in summary["cells"] if c["mode"] == "direct"]
    tables = ([(*_pipeline_table(pipeline), "")] if pipeline else []) + ([(*_direct_table(direct), DIRECT_NOTE)]
                                                                         if direct else [])
    findings = _findings(summary)
    # conclusions.md, written by a person who read the results, goes first (the findings are computed)
    written = (folder / "conclusions.md").read_text().strip() if (folder / "conclusions.md").is_file() else ""
    conclusions = ["## Conclusions", "", written, ""] if written else []
    md = ["# Evaluation report", "", *conclusions, "## Findings", "", *[f"- {f}" for f in findings], "",
          "## Results", ""]
    for header, table, note in tables:
        md += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header),
               *["| " + " | ".join(str(x) for x in row) + " |" for row in table], "", *([note, ""] if note else [])]
    md += ["## Plots", "", *[f"![{p}]({p})" for p in plots], ""]
    if runs:
        md += ["## Runs", "", *[f"- {_run_line(r)}" for r in runs], ""]
    (folder / "report.md").write_text("\n".join(md))
    imgs = "".join(f'<h3>{html.escape(p)}</h3><img src="data:image/png;base64,'
                   f'{base64.b64encode((folder / p).read_bytes()).decode()}" style="max-width:100%">' for p in plots)
    tables_html = "".join(
        f"<table><tr>{''.join(f'<th>{h}</th>' for h in header)}</tr>"
        + "".join("<tr>" + "".join(f"<td>{html.escape(str(x))}</td>" for x in row) + "</tr>" for row in table)
        + "</table>" + (f"<p>{html.escape(note)}</p>" if note else "") for header, table, note in tables)
    page = ("<!doctype html><meta charset='utf-8'><title>ragctx evaluation</title>"
            "<style>body{font-family:sans-serif;max-width:1100px;margin:auto}td,th{padding:2px 8px;border-bottom:1px solid #ddd}</style>"
            "<h1>Evaluation report</h1>"
            + (f"<h2>Conclusions</h2><pre style='white-space:pre-wrap;font-family:inherit'>{html.escape(written)}</pre>"
               if written else "")
            + f"<h2>Findings</h2><ul>{''.join(f'<li>{html.escape(f)}</li>' for f in findings)}</ul>"
            f"<h2>Results</h2>{tables_html}"
            f"<h2>Plots</h2>{imgs}"
            + (f"<h2>Runs</h2><ul>{''.join(f'<li>{html.escape(_run_line(r))}</li>' for r in runs)}</ul>"
               if runs else ""))
    (folder / "report.html").write_text(page)
    return summary
