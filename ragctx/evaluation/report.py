"""Summaries and reports from ``results.jsonl``: summary.json, report.md, report.html and PNG plots."""

from __future__ import annotations

import base64
import html
import json
import statistics
from collections import defaultdict
from pathlib import Path
from typing import Any

from ..errors import RagctxError
from .metrics import bootstrap_ci, loglog_slope
from .results import Row, read_rows, result_files

__all__ = ["summarize", "write_report", "PLOTS", "QA_PLOTS"]

PLOTS = ("accuracy_vs_length.png", "depth_heatmaps.png", "cost_vs_length.png", "tokens_vs_accuracy.png")  # needles
QA_PLOTS = ("accuracy_by_cell.png", "tokens_vs_accuracy.png")  # QA files (no length or depth to plot against)


def _rows(folder: Path) -> list[Row]:
    if not result_files(folder):
        raise RagctxError(f"{folder}: no results.jsonl here; run `ragctx eval CONFIG` first")
    return read_rows(folder)


CELL = ("mode", "attention", "length", "k", "retrieval", "chunk_tokens")  # what a cell of the summary is
# QA files: means with 95% CIs over answerable questions
QA_METRICS = ("exact_match", "f1", "string_match_part", "citation_precision", "passage_recall")


def _key(r: dict[str, Any]) -> tuple:
    return tuple(r.get(name) for name in CELL)


def _series(c: dict[str, Any]) -> tuple:
    """A cell's line in a plot against length: everything that defines the cell but the length."""
    return tuple(c.get(name) for name in CELL if name != "length")


def _series_name(key: tuple, plain: bool) -> str:
    """"mode/attention" when nothing else varies (the names earlier reports used), else the cell's full label."""
    return f"{key[0]}/{key[1]}" if plain else _label(dict(zip([n for n in CELL if n != "length"], key)))


def _plain(cells: list[dict[str, Any]]) -> bool:
    """Whether only mode and attention vary (one k, one retrieval, one chunking): labels stay "mode / attention"."""
    retrieving = {(c.get("k"), c.get("retrieval"), c.get("chunk_tokens")) for c in cells if c.get("k") is not None}
    return len(retrieving) <= 1 and len({c.get("chunk_tokens") for c in cells}) <= 1


def _order(key: tuple) -> tuple:
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
    for key, rs in sorted(cells.items(), key=lambda kv: _order(kv[0])):
        ok = [r for r in rs if r.get("status") == "ok"]
        acc, lo, hi = bootstrap_ci([r["accuracy"] for r in ok])
        recall = [r["retrieval_recall"] for r in ok if r.get("retrieval_recall") is not None]

        def mean(key: str) -> float | None:
            vals = [r[key] for r in ok if r.get(key) is not None]
            return sum(vals) / len(vals) if vals else None

        def median(key: str) -> float | None:  # times: one trial's compile or autotune must not move the cell
            vals = [r[key] for r in ok if r.get(key) is not None]
            return statistics.median(vals) if vals else None

        cell = {**dict(zip(CELL, key)), "n": len(rs), "errors": len(rs) - len(ok),
                "out_of_memory": sum(r.get("status") == "oom" for r in rs),
                "accuracy": acc, "accuracy_ci95": [lo, hi], "f1": mean("f1"),
                "retrieval_recall": sum(recall) / len(recall) if recall else None,
                "input_tokens": mean("input_tokens"), "prefill_s": median("prefill_s"), "decode_s": median("decode_s"),
                "retrieve_s": median("retrieve_s"), "peak_memory_bytes": mean("peak_memory_bytes"),
                "seconds_per_question": mean("total_s") if any("total_s" in r for r in ok) else None,
                "routes": dict(sorted({r["route"]: sum(x.get("route") == r["route"] for x in ok) for r in ok}.items()))}
        if any("kind" in r and "qid" in r for r in ok):  # a QA file
            cell.update(_qa_cell(ok))
        out.append(cell)
    slopes, long_slopes, points = {}, {}, {}
    needle = [c for c in out if c["length"] is not None]
    for series in sorted({_series(c) for c in needle}, key=_order):
        cs = sorted((c for c in needle if _series(c) == series and c["prefill_s"]), key=lambda c: c["length"])
        name = _series_name(series, _plain(needle))
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
    return {"qa": metrics, "by_kind": {k: _mean([r["accuracy"] for r in ok if r["kind"] == k]) for k in kinds}}


def _plots(folder: Path, rows: list[dict[str, Any]], summary: dict[str, Any]) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cells = summary["cells"]
    if all(c["length"] is None for c in cells):
        return _qa_plots(folder, cells)
    plain = _plain(cells)
    series = sorted({_series(c) for c in cells}, key=_order)
    written = []
    attentions = sorted({s[1] for s in series})
    line = {"full": ("-", "o"), "rag": ("--", "s"), "auto": (":", "^")}

    def style(key: tuple) -> dict[str, Any]:  # colour = attention, line and marker = mode
        mode, att = key[0], key[1]
        ls, marker = line.get(mode, ("-.", "D"))
        label = f"{mode} / {att}" if plain else _series_name(key, plain)
        return {"color": plt.cm.tab10(attentions.index(att) % 10), "linestyle": ls, "marker": marker, "label": label}

    # one panel per mode (colour = attention); series of a panel are dodged sideways so that equal values
    # (several attentions at 1.00) stay visible side by side instead of hiding each other
    modes = sorted({s[0] for s in series}, key=lambda m: ("rag", "full", "auto").index(m) if m in line else 9)
    fig, axes = plt.subplots(1, len(modes), figsize=(3.6 * len(modes) + 1.6, 4.2), sharey=True, squeeze=False)
    for ax, mode in zip(axes[0], modes):
        keys = [k for k in series if k[0] == mode]
        for i, key in enumerate(keys):
            cs = sorted((c for c in cells if _series(c) == key), key=lambda c: c["length"])
            dodge = 1.06 ** (i - (len(keys) - 1) / 2)
            st = style(key)
            ax.errorbar([c["length"] * dodge for c in cs], [c["accuracy"] for c in cs],
                        yerr=[[c["accuracy"] - c["accuracy_ci95"][0] for c in cs],
                              [c["accuracy_ci95"][1] - c["accuracy"] for c in cs]], capsize=3,
                        **{**st, "linestyle": "-", "label": st["label"].split(" / ", 1)[-1]})
        ax.set(xscale="log", xlabel="context length (tokens)", ylim=(-0.05, 1.05), title=mode)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("accuracy (95% bootstrap CI)")
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 0.9), title="attention")
    n_min = min((c["n"] for c in cells), default=0)
    fig.suptitle(f"Accuracy against length (n = {n_min} per point{'; few trials: wide intervals' if n_min < 30 else ''};"
                 " points of a panel shifted sideways to stay visible)", fontsize=9)
    fig.tight_layout()
    written.append(_save(fig, folder / PLOTS[0]))

    n = len(series)
    cols = min(3, n)
    fig, axes = plt.subplots((n + cols - 1) // cols, cols, figsize=(4 * cols, 3.6 * ((n + cols - 1) // cols)), squeeze=False)
    fig.subplots_adjust(hspace=0.55, wspace=0.35)
    needle_rows = [r for r in rows if r["depth"] >= 0]  # QA-file rows have no depth
    lengths = sorted({r["length"] for r in needle_rows})
    depths = sorted({r["depth"] for r in needle_rows})
    im = None
    for ax, key in zip(axes.flat, series):
        if not lengths:
            ax.axis("off")
            continue
        grid = [[_mean([r["accuracy"] for r in needle_rows if r.get("status") == "ok" and _series(r) == key
                        and r["length"] == L and r["depth"] == d]) for L in lengths] for d in depths]
        im = ax.imshow(grid, vmin=0, vmax=1, cmap="viridis", aspect="auto", origin="lower")
        ax.set(title=style(key)["label"], xticks=range(len(lengths)), xticklabels=lengths, yticks=range(len(depths)),
               yticklabels=depths, xlabel="length", ylabel="depth")
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    if im is not None and lengths:
        fig.colorbar(im, ax=axes, shrink=0.8, label="accuracy")
    else:
        fig.text(0.5, 0.5, "no needle trials: depth heatmaps do not apply", ha="center")
    written.append(_save(fig, folder / PLOTS[1]))

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.8))
    fig.subplots_adjust(wspace=0.3)
    for key in series:
        cs = sorted((c for c in cells if _series(c) == key and c["prefill_s"]), key=lambda c: c["length"])
        slope = summary["prefill_slopes"].get(_series_name(key, plain))
        st = style(key)
        ax1.plot([c["length"] for c in cs], [c["prefill_s"] for c in cs],
                 **{**st, "label": st["label"] + (f" (slope {slope:.2f})" if slope is not None else "")})
        ax2.plot([c["length"] for c in cs], [(c["peak_memory_bytes"] or 0) / 2**20 for c in cs], **st)
    ax1.set(xscale="log", yscale="log", xlabel="context length", ylabel="prefill time (s)", title="Prefill time (log-log)")
    ax2.set(xscale="log", yscale="log", xlabel="context length", ylabel="peak memory (MiB)",
            title="Peak memory (log-log)\nGPU: max allocated; CPU: the process's peak RSS")
    ax1.legend(fontsize=7, loc="upper left", bbox_to_anchor=(0.0, -0.15), ncol=2)
    ax2.legend(fontsize=7, loc="upper left", bbox_to_anchor=(0.0, -0.15), ncol=2)
    written.append(_save(fig, folder / PLOTS[2]))

    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    for key in series:
        cs = [c for c in cells if _series(c) == key and c["input_tokens"]]
        st = style(key)
        ax.scatter([c["input_tokens"] for c in cs], [c["accuracy"] for c in cs], color=st["color"], marker=st["marker"],
                   label=st["label"])
    ax.set(xscale="log", xlabel="input tokens per question", ylabel="accuracy", title="Tokens against accuracy")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    written.append(_save(fig, folder / PLOTS[3]))
    return written


def _label(c: dict[str, Any]) -> str:
    """A cell's name: mode / attention, then whatever else sets it apart (k, retrieval, chunking)."""
    extra = [f"k={c['k']}" if c.get("k") else "", c.get("retrieval") or "",
             f"{c['chunk_tokens']} tok" if c.get("chunk_tokens") and c["mode"] in ("rag", "auto") else ""]
    return " / ".join([c["mode"], c["attention"], *[e for e in extra if e]])


def _qa_plots(folder: Path, cells: list[dict[str, Any]]) -> list[str]:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 0.35 * len(cells) + 1.5))
    ran = [c for c in cells if c["n"] > c["errors"]]
    ys = range(len(ran))
    ax.barh(list(ys), [c["accuracy"] for c in ran],
            xerr=[[c["accuracy"] - c["accuracy_ci95"][0] for c in ran],
                  [c["accuracy_ci95"][1] - c["accuracy"] for c in ran]],
            color=[plt.cm.tab10(("rag", "auto", "full", "gold").index(c["mode"]) % 10) for c in ran], capsize=2)
    ax.set(yticks=list(ys), yticklabels=[_label(c) for c in ran], xlim=(0, 1), xlabel="accuracy (95% bootstrap CI)",
           title="Accuracy per cell (answer contains a reference; a refusal when unanswerable)")
    ax.invert_yaxis()
    written = [_save(fig, folder / QA_PLOTS[0])]
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    for c in ran:
        ax.scatter([c["input_tokens"] or 1], [c["accuracy"]], label=_label(c))
    ax.set(xscale="log", xlabel="input tokens per question", ylabel="accuracy", title="Tokens against accuracy")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    written.append(_save(fig, folder / QA_PLOTS[1]))
    return written


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else float("nan")


def _save(fig, path: Path) -> str:
    fig.savefig(path, dpi=110, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return path.name


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
        where = lambda c: _label(c) + (f", length {c['length']}" if c["length"] is not None else "")  # noqa: E731
        if len(best) == 1:
            said = f"best accuracy {top:.2f} ({where(best[0])})"
        else:  # a tie names no winner
            said = (f"best accuracy {top:.2f}, a tie of {len(best)} of its {len(cs)} cells ("
                    + "; ".join(where(c) for c in best[:3]) + ("; ..." if len(best) > 3 else "") + ")")
        lines.append(f"`{mode}`: {said}; mean input {sum(c['input_tokens'] or 0 for c in cs) / len(cs):.0f} tokens.")
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
            lines.append(f"`{_label(c)}` at length {c['length']}: {c['out_of_memory']} of {c['n']} "
                         "trials ran out of memory.")
        elif c["errors"] and c["length"] is None:
            lines.append(f"`{_label(c)}`: {c['errors']} of {c['n']} questions did not run (see their `error`).")
    return lines


def write_report(folder: str | Path) -> dict[str, Any]:
    """Writes summary.json, report.md, report.html and the plots from ``folder/results.jsonl``; a
    ``folder/conclusions.md`` (plain-words conclusions, written after reading the results) opens both reports."""
    folder = Path(folder)
    rows = _rows(folder)
    summary = summarize(rows)
    (folder / "summary.json").write_text(json.dumps(summary, indent=2))
    plots = _plots(folder, rows, summary)
    qa = any("qa" in c for c in summary["cells"])
    header = ["mode", "attention", "length", "k", "retrieval", "chunk", "n", "accuracy", "95% CI"]
    header += (["contains", "EM", "F1", "refusal recall", "false refusal", "citation precision", "passage recall",
                "retrieval recall"] if qa else ["retrieval recall"])
    header += ["input tokens", "prefill s (median)", "decode s (median)", "peak MiB", "routes"]

    def pct(m: dict[str, Any] | None) -> str:
        return "" if not m or m["mean"] is None else f"{m['mean']:.2f} ({m['n']})"

    table = []
    for c in summary["cells"]:
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
    findings = _findings(summary)
    # conclusions.md, written by a person who read the results, goes first (the findings are computed)
    written = (folder / "conclusions.md").read_text().strip() if (folder / "conclusions.md").is_file() else ""
    conclusions = ["## Conclusions", "", written, ""] if written else []
    md = ["# Evaluation report", "", *conclusions, "## Findings", "", *[f"- {f}" for f in findings], "",
          "## Results", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header),
          *["| " + " | ".join(str(x) for x in row) + " |" for row in table], "", "## Plots", "",
          *[f"![{p}]({p})" for p in plots], ""]
    (folder / "report.md").write_text("\n".join(md))
    imgs = "".join(f'<h3>{html.escape(p)}</h3><img src="data:image/png;base64,'
                   f'{base64.b64encode((folder / p).read_bytes()).decode()}" style="max-width:100%">' for p in plots)
    rows_html = "".join("<tr>" + "".join(f"<td>{html.escape(str(x))}</td>" for x in row) + "</tr>" for row in table)
    page = ("<!doctype html><meta charset='utf-8'><title>ragctx evaluation</title>"
            "<style>body{font-family:sans-serif;max-width:1100px;margin:auto}td,th{padding:2px 8px;border-bottom:1px solid #ddd}</style>"
            "<h1>Evaluation report</h1>"
            + (f"<h2>Conclusions</h2><pre style='white-space:pre-wrap;font-family:inherit'>{html.escape(written)}</pre>"
               if written else "")
            + f"<h2>Findings</h2><ul>{''.join(f'<li>{html.escape(f)}</li>' for f in findings)}</ul>"
            f"<h2>Results</h2><table><tr>{''.join(f'<th>{h}</th>' for h in header)}</tr>{rows_html}</table>"
            f"<h2>Plots</h2>{imgs}")
    (folder / "report.html").write_text(page)
    return summary
