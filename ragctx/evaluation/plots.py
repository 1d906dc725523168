"""The plots of a run's report (PNG, written beside report.md): accuracy, depth heatmaps and costs against length
for needle grids, accuracy per cell for QA files, accuracy per kind for needles answered directly."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .summary import kind_label, label, mean_or_nan, order, series_name
from .summary import plain as is_plain
from .summary import series as series_of

__all__ = ["DIRECT_PLOTS", "PLOTS", "QA_PLOTS", "write_plots"]

PLOTS = ("accuracy_vs_length.png", "depth_heatmaps.png", "cost_vs_length.png", "tokens_vs_accuracy.png")  # needles
QA_PLOTS = ("accuracy_by_cell.png", "tokens_vs_accuracy.png")  # QA files (no length or depth to plot against)
DIRECT_PLOTS = ("direct_accuracy.png",)  # needles answered directly (mode direct)


def write_plots(folder: Path, rows: list[dict[str, Any]], summary: dict[str, Any]) -> list[str]:
    """Writes the plots that apply to the run's cells; returns their file names."""
    import matplotlib

    matplotlib.use("Agg")
    cells = summary["cells"]
    if all(c["length"] is None for c in cells):
        return _qa_plots(folder, cells)
    pipeline = [c for c in cells if c["mode"] != "direct"]
    direct = [c for c in cells if c["mode"] == "direct"]
    written = (_needle_plots(folder, [r for r in rows if r.get("mode") != "direct"], pipeline, summary)
               if pipeline else [])
    return written + (_direct_plots(folder, direct) if direct else [])


def _needle_plots(folder: Path, rows: list[dict[str, Any]], cells: list[dict[str, Any]],
                  summary: dict[str, Any]) -> list[str]:
    import matplotlib.pyplot as plt

    plain = is_plain(cells)
    series = sorted({series_of(c) for c in cells}, key=order)
    written = []
    attentions = sorted({s[1] for s in series})
    line = {"full": ("-", "o"), "rag": ("--", "s"), "auto": (":", "^")}

    def style(key: tuple) -> dict[str, Any]:  # colour = attention, line and marker = mode
        mode, att = key[0], key[1]
        ls, marker = line.get(mode, ("-.", "D"))
        label = f"{mode} / {att}" if plain else series_name(key, plain)
        return {"color": plt.cm.tab10(attentions.index(att) % 10), "linestyle": ls, "marker": marker, "label": label}

    # one panel per mode (colour = attention); series of a panel are dodged sideways so that equal values
    # (several attentions at 1.00) stay visible side by side instead of hiding each other
    modes = sorted({s[0] for s in series}, key=lambda m: ("rag", "full", "auto").index(m) if m in line else 9)
    fig, axes = plt.subplots(1, len(modes), figsize=(3.6 * len(modes) + 1.6, 4.2), sharey=True, squeeze=False)
    for ax, mode in zip(axes[0], modes):
        keys = [k for k in series if k[0] == mode]
        for i, key in enumerate(keys):
            cs = sorted((c for c in cells if series_of(c) == key), key=lambda c: c["length"])
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
    needle_rows = [r for r in rows if r["depth"] is not None and r["depth"] >= 0]  # QA files: -1; None: drawn
    lengths = sorted({r["length"] for r in needle_rows})
    depths = sorted({r["depth"] for r in needle_rows})
    im = None
    for ax, key in zip(axes.flat, series):
        if not lengths:
            ax.axis("off")
            continue
        grid = [[mean_or_nan([r["accuracy"] for r in needle_rows if r.get("status") == "ok" and series_of(r) == key
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
        cs = sorted((c for c in cells if series_of(c) == key and c["prefill_s"]), key=lambda c: c["length"])
        slope = summary["prefill_slopes"].get(series_name(key, plain))
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
        cs = [c for c in cells if series_of(c) == key and c["input_tokens"]]
        st = style(key)
        ax.scatter([c["input_tokens"] for c in cs], [c["accuracy"] for c in cs], color=st["color"], marker=st["marker"],
                   label=st["label"])
    ax.set(xscale="log", xlabel="input tokens per question", ylabel="accuracy", title="Tokens against accuracy")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    written.append(_save(fig, folder / PLOTS[3]))
    return written


def _qa_plots(folder: Path, cells: list[dict[str, Any]]) -> list[str]:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 0.35 * len(cells) + 1.5))
    ran = [c for c in cells if c["n"] > c["errors"]]
    ys = range(len(ran))
    ax.barh(list(ys), [c["accuracy"] for c in ran],
            xerr=[[c["accuracy"] - c["accuracy_ci95"][0] for c in ran],
                  [c["accuracy_ci95"][1] - c["accuracy"] for c in ran]],
            color=[plt.cm.tab10(("rag", "auto", "full", "gold").index(c["mode"]) % 10) for c in ran], capsize=2)
    ax.set(yticks=list(ys), yticklabels=[label(c) for c in ran], xlim=(0, 1), xlabel="accuracy (95% bootstrap CI)",
           title="Accuracy per cell (answer contains a reference; a refusal when unanswerable)")
    ax.invert_yaxis()
    written = [_save(fig, folder / QA_PLOTS[0])]
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    for c in ran:
        ax.scatter([c["input_tokens"] or 1], [c["accuracy"]], label=label(c))
    ax.set(xscale="log", xlabel="input tokens per question", ylabel="accuracy", title="Tokens against accuracy")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    written.append(_save(fig, folder / QA_PLOTS[1]))
    return written


def _direct_plots(folder: Path, cells: list[dict[str, Any]]) -> list[str]:
    """Accuracy against length, one panel per attention, a line per kind (colour) and haystack (line style)."""
    import matplotlib.pyplot as plt

    attentions = sorted({c["attention"] for c in cells})
    kinds = sorted({kind_label(c) for c in cells})
    haystacks = sorted({c.get("haystack") or "" for c in cells})
    styles = ["-", "--", ":", "-."]
    fig, axes = plt.subplots(1, len(attentions), figsize=(3.8 * len(attentions) + 1.8, 4.2), sharey=True,
                             squeeze=False)
    for ax, attention in zip(axes[0], attentions):
        for kind in kinds:
            for haystack in haystacks:
                cs = sorted((c for c in cells if c["attention"] == attention and kind_label(c) == kind
                             and (c.get("haystack") or "") == haystack and c["n"] > c["errors"]),
                            key=lambda c: c["length"])
                if cs:
                    ax.errorbar([c["length"] for c in cs], [c["accuracy"] for c in cs],
                                yerr=[[c["accuracy"] - c["accuracy_ci95"][0] for c in cs],
                                      [c["accuracy_ci95"][1] - c["accuracy"] for c in cs]], capsize=2, marker="o",
                                color=plt.cm.tab10(kinds.index(kind) % 10),
                                linestyle=styles[haystacks.index(haystack) % len(styles)],
                                label=f"{kind} / {haystack}" if len(haystacks) > 1 else kind)
        ax.set(xscale="log", xlabel="context length (tokens)", ylim=(-0.05, 1.05), title=attention)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("accuracy (95% bootstrap CI); unanswerable: its recall")
    handles, names = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, names, fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 0.9), title="kind / haystack")
    fig.suptitle("Needles answered directly (the example's own prompt, no retrieval)", fontsize=9)
    fig.tight_layout()
    return [_save(fig, folder / DIRECT_PLOTS[0])]


def _save(fig, path: Path) -> str:
    fig.savefig(path, dpi=110, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return path.name
